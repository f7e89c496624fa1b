"""The native decode step (native_step.cpp) computes what the Python step computes.

Every fused family (the Llama test model, Qwen2 with q/k/v biases, Qwen3 with q/k
norms, a Llama with every bias) with each kind of projection the app makes: int4
(weights that are 4-bit, as a GGUF file's), int8 and float. The native step keeps the
residual stream in float32, so it equals the Python step up to rounding, not bit for
bit: float32 models must match to float32 precision, quantized bf16 ones must predict
the float32 model at least as well as the Python step does. A row of a left-padded
batch must give exactly what it gives alone (greedy replies do not change with the batch).
"""

from __future__ import annotations

import copy
import shutil
import threading
import time

import pytest

import torch
from torch.nn import functional as F

from modules.engine.batching import BatchScheduler, Sequence
from modules.engine.kv_cache import growing_cache
from modules.engine.prefix_cache import PrefixCache
from modules.engine.cpu_profile import SpeedPlan
from modules.engine.kernels import native_step
from modules.engine.kernels.decode_step import decode_step, supports_decode_step
from modules.engine.kernels.fast_decode import prepare_for_fast_decode
from modules.engine.kernels.fused_llama import PREFILL_ROWS, float_linear, fuse_layers, recording_attention
from tests.conftest import make_settings
from tests.test_decode_step import PROMPTS, prefilled
from tests.test_fast_decode import _four_bit_model, _picks_agree, _similarity, make_four_bit
from tests.test_fused_llama import FAMILIES, SMALL, random_model

FAMILY_NAMES = ["llama", *FAMILIES]
HEAD_SIZES = {"llama-head-24": 24,  # no whole AVX2 or AVX-512 vector: attention's plain loop
              "llama-head-128": 128}  # the most vectors a head: 8 AVX-512, 16 AVX2


@pytest.fixture(scope="module")
def extension():
    """The extension, built (or loaded from disk) for this machine; a machine with a C++
    compiler must build it."""
    module = native_step.builder.wait(make_settings().cache_dir)
    if module is None and shutil.which("c++") is None:
        pytest.skip(f"no C++ compiler here: {native_step.builder.error}")
    assert module is not None, native_step.builder.error
    return module


def _original(family: str, tiny_causal_lm_dir) -> torch.nn.Module:
    if family == "llama":
        from transformers import AutoModelForCausalLM

        return AutoModelForCausalLM.from_pretrained(tiny_causal_lm_dir, dtype=torch.float32).eval()
    if family in HEAD_SIZES:
        from transformers import LlamaConfig

        return random_model(LlamaConfig(**SMALL, head_dim=HEAD_SIZES[family]))
    return random_model(FAMILIES[family]())


def _prepared(original: torch.nn.Module, weights: str) -> torch.nn.Module:
    """`original` fused as the app prepares it: "float fp32", or bf16 with quantized layers
    ("int4 tiles" / "int4 int16": 4-bit layers also in the tile layout, which the native step
    then reads with its AMX kernel or multiplies by int16-rounded rows). Their int8 LM head
    takes int16-rounded rows where the extension has that kernel."""
    model = copy.deepcopy(original)
    if weights == "float fp32":
        fuse_layers(model, float_linear)
    else:
        plan = SpeedPlan("test", "quantized", "bf16", "bf16", "fixed")
        tiles = TILE_KERNELS.get(weights)
        assert prepare_for_fast_decode(model, torch.device("cpu"), plan, tiles=tiles,
                                       int8_int16_rows=True) is not None
        assert any(getattr(m, "tile_weight", None) is not None for m in model.modules()) == bool(tiles)
    assert supports_decode_step(model)
    native_step.attach(model)
    return model


def _teacher_forced(model, ids: torch.Tensor, prompt: int, native: bool) -> list[torch.Tensor]:
    """Logits after a prompt pass, then after each further token fed through `decode_step`."""
    cache = growing_cache(model.config, torch.float32)
    with torch.inference_mode():
        logits = [model(input_ids=ids[:, :prompt], past_key_values=cache, use_cache=True).logits[0, -1].float()]
        for position in range(prompt, ids.shape[1]):
            tokens, positions = ids[:, position:position + 1], torch.tensor([[position]])
            step = (native_step.native_decode_step(model, tokens, positions, None, cache) if native
                    else decode_step(model, tokens, positions, None, cache))
            assert step is not None  # the native step ran, not a fallback
            logits.append(step[0].float())
    return logits


IDS = torch.randint(3, 500, (1, 30), generator=torch.Generator().manual_seed(2))
PROMPT = PREFILL_ROWS + 4


@pytest.mark.parametrize("family", [*FAMILY_NAMES, *HEAD_SIZES])
def test_float32_models_step_as_the_python_step_does(extension, family, tiny_causal_lm_dir):
    model = _prepared(_original(family, tiny_causal_lm_dir), "float fp32")
    python, native = (_teacher_forced(model, IDS, PROMPT, flag) for flag in (False, True))
    for a, b in zip(python[1:], native[1:]):
        torch.testing.assert_close(b, a, atol=2e-5, rtol=1e-5)


TILE_KERNELS = {"int4 tiles": "amx", "int4 int16": "int16"}


def _amx(extension) -> None:
    if not extension.amx_ready():
        pytest.skip("this CPU (or build) has no AMX-BF16: the int4 tiles kernel does not run here")


def _int16_rows(extension) -> None:
    if not extension.int16_rows_ready():
        pytest.skip("this build has no AVX2: the int4 x int16 rows kernel does not run here")


def _needs(extension, weights: str) -> None:
    """Skip where the native step's own int4 kernel for `weights` cannot run."""
    if weights == "int4 tiles":
        _amx(extension)
    if weights == "int4 int16":
        _int16_rows(extension)


@pytest.mark.parametrize("family", ["qwen2", "qwen3", "llama-biases"])
@pytest.mark.parametrize("weights", ["int4", "int8", "int4 tiles", "int4 int16"])
def test_quantized_bf16_models_predict_float32_as_well_as_the_python_step(extension, family, weights):
    """Against the float32 model with the same (4-bit) weights: the native step's logits
    are at least as close as the Python step's (it rounds less), and pick its tokens."""
    _needs(extension, weights)
    reference = _four_bit_model(family) if weights.startswith("int4") else random_model(FAMILIES[family]())
    model = _prepared(reference, weights)
    assert any(hasattr(m, "packed" if weights == "int4" else "weight_int8") for m in model.modules())
    expected = [logits for logits in _teacher_forced_reference(reference)]
    python, native = (_teacher_forced(model, IDS, PROMPT, flag) for flag in (False, True))
    for e, p, n in zip(expected[1:], python[1:], native[1:]):
        assert _similarity(e, n) >= min(_similarity(e, p), 0.999) - 0.002
    assert sum(_picks_agree(e, n) for e, n in zip(expected, native)) >= \
        sum(_picks_agree(e, p) for e, p in zip(expected, python)) - 1


def _teacher_forced_reference(model) -> list[torch.Tensor]:
    with torch.inference_mode():
        out = model(input_ids=IDS[:, :PROMPT], use_cache=True)
        logits = [out.logits[0, -1].float()]
        for position in range(PROMPT, IDS.shape[1]):
            out = model(input_ids=IDS[:, position:position + 1], past_key_values=out.past_key_values,
                        use_cache=True)
            logits.append(out.logits[0, -1].float())
    return logits


@pytest.mark.parametrize("family", FAMILY_NAMES)
@pytest.mark.parametrize("weights, cache", [("int8", torch.float32), ("int8", torch.bfloat16),
                                            ("int4 tiles", torch.bfloat16), ("int4 int16", torch.bfloat16)])
@torch.inference_mode()
def test_each_padded_row_computes_exactly_what_it_computes_alone(extension, family, weights, cache,
                                                                tiny_causal_lm_dir):
    original = _original(family, tiny_causal_lm_dir)
    if weights in TILE_KERNELS:
        _needs(extension, weights)
        make_four_bit(original)
    model = _prepared(original, weights)
    batch = prefilled(model, PROMPTS, cache)
    alone = [prefilled(model, [ids], cache) for ids in PROMPTS]
    assert batch.starts() and len(set(batch.starts())) == len(PROMPTS)
    tokens = torch.tensor([[3]] * len(PROMPTS))
    for _ in range(6):
        got = native_step.native_decode_step(model, tokens, batch.positions(), batch.starts(), batch.cache)
        for row, own in enumerate(alone):
            expected = native_step.native_decode_step(model, tokens[row:row + 1], own.positions(), None, own.cache)
            assert torch.equal(got[row], expected[0])
        tokens = got.argmax(-1, keepdim=True)
    assert batch.length == len(PROMPTS[2]) + 6


@torch.inference_mode()
def test_a_bf16_cache_steps_as_a_float32_one_and_the_scheduler_uses_it(extension, tiny_causal_lm_dir):
    """A bf16 model's batches keep keys and values in bf16 (half the bytes each step reads):
    the native step reads and writes them, with the logits of a float32 cache up to the
    rounding of the new columns; the scheduler's native batches take that cache."""
    model = _prepared(_original("llama", tiny_causal_lm_dir), "int8 bf16")
    assert native_step.cache_dtype(model) == torch.bfloat16
    caches = {dtype: prefilled(model, [PROMPTS[0]], dtype) for dtype in (torch.float32, torch.bfloat16)}
    tokens = torch.tensor([[3]])
    for _ in range(8):
        logits = {dtype: native_step.native_decode_step(model, tokens, batch.positions(), None, batch.cache)
                  for dtype, batch in caches.items()}
        assert caches[torch.bfloat16].cache.layers[0].keys.dtype == torch.bfloat16
        torch.testing.assert_close(logits[torch.bfloat16], logits[torch.float32], rtol=0.02, atol=0.02)
        tokens = logits[torch.float32].argmax(-1, keepdim=True)
    scheduler = BatchScheduler(model, threading.Lock())
    done = scheduler.submit(Sequence(prompt_ids=PROMPTS[0], max_new_tokens=3))
    assert done.wait(30) and done.error is None and len(done.tokens) == 3
    assert scheduler._native_steps and scheduler._cache_dtype() == torch.bfloat16


@torch.inference_mode()
def test_the_cache_gets_what_the_python_step_writes(extension, tiny_causal_lm_dir):
    """Keys and values land in the float32 cache column by column, as the Python step's
    (the buffers grow on the way: prompt of 3, then 70 steps)."""
    model = _prepared(_original("llama", tiny_causal_lm_dir), "float fp32")
    python, native = prefilled(model, [PROMPTS[1]], torch.float32), prefilled(model, [PROMPTS[1]], torch.float32)
    tokens = torch.tensor([[3]])
    for _ in range(70):
        expected = decode_step(model, tokens, python.positions(), None, python.cache)
        got = native_step.native_decode_step(model, tokens, native.positions(), None, native.cache)
        torch.testing.assert_close(got, expected, atol=2e-5, rtol=1e-5)
        tokens = expected.argmax(-1, keepdim=True)
    for mine, theirs in zip(native.cache.layers, python.cache.layers):
        assert mine.keys.shape == theirs.keys.shape == (1, mine.keys.shape[1], 73, mine.keys.shape[3])
        torch.testing.assert_close(mine.keys, theirs.keys, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(mine.values, theirs.values, atol=1e-5, rtol=1e-5)


@torch.inference_mode()
def test_the_python_step_runs_where_the_native_one_does_not_apply(extension, tiny_causal_lm_dir):
    model = _prepared(_original("llama", tiny_causal_lm_dir), "int8 bf16")
    bf16_cache = prefilled(model, [PROMPTS[0]])  # keys held in the model's dtype
    tokens = torch.tensor([[3]])
    assert native_step.native_decode_step(model, tokens, bf16_cache.positions(), None, bf16_cache.cache) is None
    cache = prefilled(model, [PROMPTS[0]], torch.float32)
    with recording_attention(model) as sink:  # the explorer's attention view reads the Python step
        assert native_step.native_decode_step(model, tokens, cache.positions(), None, cache.cache) is None
        decode_step(model, tokens, cache.positions(), None, cache.cache, native=True)
    assert len(sink) == model.config.num_hidden_layers
    unattached = copy.deepcopy(model)
    del unattached._playground_native_step
    assert not native_step.ready(unattached) and native_step.ready(model)


@pytest.mark.parametrize("outputs, inputs", [(64, 64), (37, 45)])  # 37 x 45: the vector loops' tails
def test_the_int8_kernel_computes_the_int8_product_row_by_row(extension, outputs, inputs):
    """float32 rows times int8 weights with a scale per output, against float64; six rows
    (a block of four, then two) compute each row exactly what it computes alone."""
    generator = torch.Generator().manual_seed(outputs)
    weight = torch.randint(-127, 128, (outputs, inputs), dtype=torch.int8, generator=generator)
    scale = (torch.rand(outputs, generator=generator) * 0.01 + 1e-3).bfloat16()
    rows = torch.randn(6, inputs, generator=generator)
    got = extension.int8_matmul(rows, weight, scale)
    expected = rows.double() @ (weight.double() * scale.double()[:, None]).T
    assert got.dtype == torch.float32 and got.shape == (6, outputs)
    torch.testing.assert_close(got.double(), expected, rtol=1e-5, atol=1e-5 * expected.abs().max().item())
    assert_each_row_as_alone(extension.int8_matmul, rows, got, weight, scale)
    with pytest.raises(RuntimeError, match="float32"):
        extension.int8_matmul(rows.bfloat16(), weight, scale)
    with pytest.raises(RuntimeError, match="int8"):
        extension.int8_matmul(rows, weight.float(), scale)


def assert_each_row_as_alone(matmul, rows: torch.Tensor, got: torch.Tensor, *weights) -> None:
    """Each row through the kernel alone gives exactly its row of the batch's result."""
    for row in range(rows.shape[0]):
        assert torch.equal(matmul(rows[row:row + 1].clone(), *weights)[0], got[row])


def _int4_weights(outputs: int, inputs: int, seed: int):
    """A 4-bit weight matrix (a Q4_1 block's float16 scale and low per group of 32) and
    its tile layout."""
    generator = torch.Generator().manual_seed(seed)
    groups = inputs // 32
    q = torch.randint(0, 16, (outputs, inputs), generator=generator).float()
    scale = (torch.rand(outputs, groups, generator=generator) * 0.02 + 1e-3).half().float()
    low = (-torch.rand(outputs, groups, generator=generator) * 0.1).half().float()
    weight = q * scale.repeat_interleave(32, 1) + low.repeat_interleave(32, 1)
    return weight, native_step.tile_layout(q, scale, low + 8 * scale)


@pytest.mark.parametrize("env", [{}, {"PLAYGROUND_AMX": "0"}, {"PLAYGROUND_INT16_ROWS": "0"},
                                 {"PLAYGROUND_AMX": "0", "PLAYGROUND_INT16_ROWS": "0"}])
def test_playground_amx_and_int16_rows_decide_which_int4_kernel_the_layers_keep_a_layout_for(
        extension, tmp_path, env):
    from modules.config import Settings
    from modules.engine.kernels.fast_decode import Int4WeightOnlyLinear, prepare_chat_model

    settings = Settings.from_env(env)
    expected = native_step.tile_kernel(settings.amx, settings.int16_rows)
    if len(env) == 2:
        assert expected is None
    model = _four_bit_model("qwen2")
    prepare_chat_model(model, torch.device("cpu"), torch.bfloat16, "test", str(tmp_path), probe=False,
                       native=True, amx=settings.amx, int16_rows=settings.int16_rows)
    layers = [m for m in model.modules() if isinstance(m, Int4WeightOnlyLinear)]
    assert layers and {m.tile_kernel for m in layers} == {expected}
    assert all((m.tile_weight is not None) == (expected is not None) for m in layers)
    assert model.lm_head.int16_rows == (settings.int16_rows and native_step.int16_rows_wanted())


@pytest.mark.parametrize("weights", ["int4", "int4 int16", "int4 tiles"])
def test_the_step_line_names_the_kernel_that_runs(extension, weights):
    _needs(extension, weights)
    model = _prepared(_four_bit_model("qwen2"), weights)
    expected = {"int4": "native step, torch int4 kernel",
                "int4 int16": f"native step, int4 x int16 rows ({extension.int16_rows_isa()})",
                "int4 tiles": "native step, int4 on AMX tiles"}[weights]
    assert native_step.step_line(model) == expected
    delattr(model, "_playground_native_step")
    assert native_step.step_line(model) is None


def test_the_step_line_says_when_int8_layers_take_int16_rows(extension):
    model = _prepared(_original("qwen2", None), "int8")
    int16 = f"native step, int8 x int16 rows ({extension.int16_rows_isa()})"
    assert native_step.step_line(model) == (int16 if extension.int16_rows_ready() else "native step")
    for linear in model.model.layers.modules():
        if hasattr(linear, "weight_int8"):
            linear.int16_rows = False
    assert native_step.step_line(model) == "native step"


def test_the_native_int4_kernel_follows_the_cpu_flags(monkeypatch):
    monkeypatch.setattr(native_step, "isa_flags", lambda: ["-march=native"])
    for flags, expected in [({"amx_tile", "amx_bf16", "avx512_bf16", "avx512_vnni", "avx512bw"}, "amx"),
                            ({"avx512_vnni", "avx512bw", "avx512_bf16"}, "int16"), ({"avx512f", "avx2"}, "int16")]:
        monkeypatch.setattr(native_step, "cpu_flags", lambda flags=flags: flags)
        assert native_step.tile_kernel() == expected
    monkeypatch.setattr(native_step, "cpu_flags", lambda: {"amx_tile", "amx_bf16", "avx512_bf16",
                                                           "avx512_vnni", "avx512bw"})
    assert native_step.tile_kernel(amx=False) == "int16"
    assert native_step.tile_kernel(amx=False, int16_rows=False) is None
    monkeypatch.setattr(native_step, "isa_flags", lambda: ["-mavx2", "-mfma", "-mf16c"])  # AVX2 builds
    assert native_step.tile_kernel() == "int16"
    monkeypatch.setattr(native_step, "isa_flags", lambda: [])  # no x86 vector ISA (ARM): torch's kernel
    assert native_step.tile_kernel() is None


def test_avx2_builds_take_avx_vnni_where_a_cpu_without_avx512_has_it(monkeypatch):
    """AVX-VNNI fuses the AVX2 kernel's multiply and add; an AVX-512 CPU running as AVX2
    (ATEN_CPU_CAPABILITY=avx2) builds as a plain AVX2 one."""
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX2")
    for flags, expected in [({"avx2", "avx_vnni"}, True), ({"avx2"}, False),
                            ({"avx2", "avx_vnni", "avx512f"}, False)]:
        monkeypatch.setattr(native_step, "cpu_flags", lambda flags=flags: flags)
        assert ("-mavxvnni" in native_step.isa_flags()) == expected


@pytest.mark.parametrize("outputs, inputs", [(64, 64), (48, 96)])  # 48: an odd number of tiles
def test_the_amx_int4_kernel_computes_the_int4_product_row_by_row(extension, outputs, inputs):
    """float32 rows (rounded to bf16, as torch's int4 kernel rounds them) times 4-bit weights,
    against float64; six rows (a block of four, then two): each row exactly what it gives alone."""
    _amx(extension)
    weight, (packed, scale_low) = _int4_weights(outputs, inputs, seed=outputs)
    rows = torch.randn(6, inputs, generator=torch.Generator().manual_seed(3))
    got = extension.int4_tiles_matmul(rows, packed, scale_low)
    expected = rows.bfloat16().double() @ weight.double().T
    assert got.dtype == torch.float32 and got.shape == (6, outputs)
    torch.testing.assert_close(got.double(), expected, rtol=1e-5, atol=1e-5 * expected.abs().max().item())
    assert_each_row_as_alone(extension.int4_tiles_matmul, rows, got, packed, scale_low)
    with pytest.raises(RuntimeError, match="float32"):
        extension.int4_tiles_matmul(rows.bfloat16(), packed, scale_low)
    with pytest.raises(RuntimeError, match="float16"):
        extension.int4_tiles_matmul(rows, packed, scale_low.float())


@pytest.mark.parametrize("outputs, inputs", [(64, 64), (48, 96)])
def test_the_int16_rows_int4_kernel_computes_the_int4_product_row_by_row(extension, outputs, inputs):
    """float32 rows (rounded to int16 per group of 32: 2^-16 of its largest value) times
    4-bit weights, against float64, closer than bf16 rows get; thirteen rows (a prompt's
    wide block of eight where the build has one, then blocks of four and one): each row
    exactly what it gives alone."""
    _int16_rows(extension)
    weight, (packed, scale_low) = _int4_weights(outputs, inputs, seed=outputs)
    rows = torch.randn(13, inputs, generator=torch.Generator().manual_seed(3))
    rows[1, :32] *= 1000.0  # one group's values far apart: each group has its own step
    got = extension.int4_int16_matmul(rows, packed, scale_low)
    expected = rows.double() @ weight.double().T
    assert got.dtype == torch.float32 and got.shape == (13, outputs)
    error = (got.double() - expected).abs().max() / expected.abs().max()
    bf16_error = (rows.bfloat16().double() @ weight.double().T - expected).abs().max() / expected.abs().max()
    assert error < 1e-4 and error < bf16_error / 10
    assert_each_row_as_alone(extension.int4_int16_matmul, rows, got, packed, scale_low)
    zeros = extension.int4_int16_matmul(torch.zeros(1, inputs), packed, scale_low)
    assert torch.equal(zeros, torch.zeros(1, outputs))  # an all-zero group: no division by zero
    with pytest.raises(RuntimeError, match="float32"):
        extension.int4_int16_matmul(rows.bfloat16(), packed, scale_low)


@pytest.mark.parametrize("outputs, inputs", [(64, 64), (48, 96)])  # 48: an odd number of tiles
def test_the_int16_rows_int8_kernel_computes_the_int8_product_row_by_row(extension, outputs, inputs):
    """float32 rows (rounded to int16 per group of 32) times int8 weights with a scale per
    output, against float64, closer than bf16 rows get; each row exactly what it gives alone."""
    _int16_rows(extension)
    generator = torch.Generator().manual_seed(outputs)
    weight = torch.randint(-127, 128, (outputs, inputs), dtype=torch.int8, generator=generator)
    scale = (torch.rand(outputs, generator=generator) * 0.01 + 1e-3).bfloat16()
    rows = torch.randn(6, inputs, generator=generator)
    rows[1, :32] *= 1000.0  # one group's values far apart: each group has its own step
    got = extension.int8_int16_matmul(rows, weight, scale)
    full = weight.double() * scale.double()[:, None]
    expected = rows.double() @ full.T
    assert got.dtype == torch.float32 and got.shape == (6, outputs)
    error = (got.double() - expected).abs().max() / expected.abs().max()
    bf16_error = (rows.bfloat16().double() @ full.T - expected).abs().max() / expected.abs().max()
    assert error < 1e-4 and error < bf16_error / 10
    assert_each_row_as_alone(extension.int8_int16_matmul, rows, got, weight, scale)
    assert torch.equal(extension.int8_int16_matmul(torch.zeros(1, inputs), weight, scale), torch.zeros(1, outputs))
    with pytest.raises(RuntimeError, match="multiple of 16"):
        extension.int8_int16_matmul(rows[:, :48], weight[:40, :48].contiguous(), scale[:40])


def test_prompt_rows_go_to_the_kernel_up_to_the_largest_count_it_won():
    assert native_step.pick_prompt_rows({16: (1.0, 2.0), 64: (3.0, 4.0), 256: (14.0, 10.0)}) == 64
    # a loss below a count it won is noise (a busy machine): the kernel keeps those rows too
    assert native_step.pick_prompt_rows({16: (0.2, 0.3), 64: (7.6, 0.7), 256: (2.3, 2.1)}) == native_step.ANY_ROWS
    assert native_step.pick_prompt_rows({16: (4.0, 1.0), 64: (3.0, 4.0), 256: (14.0, 10.0)}) == 64
    assert native_step.pick_prompt_rows({16: (1.0, 2.0), 64: (3.0, 4.0), 256: (8.0, 10.0)}) == native_step.ANY_ROWS
    assert native_step.pick_prompt_rows({16: (1.0, 2.0), 64: (1.0, 0.95)}) == native_step.ANY_ROWS  # a tie: the kernel
    assert native_step.pick_prompt_rows({16: (1.0, 2.0), 64: (1.2, 1.0)}) == native_step.ANY_ROWS  # near: the kernel
    assert native_step.pick_prompt_rows({16: (1.0, 2.0), 64: (1.4, 1.0)}) == 16  # past the margin: dense
    assert native_step.pick_prompt_rows({16: (1.4, 1.0), 64: (6.0, 4.0)}) == 0
    assert native_step.pick_prompt_rows({}) == 0


@pytest.mark.parametrize("family", ["qwen2", "qwen3", "llama-biases"])
@torch.inference_mode()
def test_a_native_prompt_pass_fills_the_cache_as_transformers_pass_does(extension, family):
    """`native_prompt` (the scheduler's prompt pass when native steps run): against the
    float32 model with the same 4-bit weights, its last logits are at least as close as the
    fused layers' bf16 pass gives, it leaves the same keys and values (up to bf16), and the
    native steps after it predict as after that pass. Where a layer's kernel lost to the
    dense matmul at this many rows, it does not run."""
    _int16_rows(extension)
    reference = _four_bit_model(family)
    model = _prepared(reference, "int4 int16")
    assert native_step.ready(model)
    projections = [m for m in model.modules() if getattr(m, "tile_kernel", None)]
    for m in projections:
        m.native_prompt_rows = PROMPT
    prompt = IDS[0, :PROMPT].tolist()
    native_cache = growing_cache(model.config, native_step.cache_dtype(model))
    native = native_step.native_prompt(model, prompt, native_cache)
    assert native is not None and native.shape == (1, model.config.vocab_size) and native.dtype == torch.float32
    dense_cache = growing_cache(model.config, native_step.cache_dtype(model))
    dense = model(input_ids=IDS[:, :PROMPT], past_key_values=dense_cache, use_cache=True).logits[0, -1].float()
    exact = reference(input_ids=IDS[:, :PROMPT]).logits[0, -1].float()
    assert _similarity(exact, native[0]) >= min(_similarity(exact, dense), 0.999) - 0.002
    for mine, theirs in zip(native_cache.layers, dense_cache.layers):
        assert mine.keys.shape == theirs.keys.shape == (1, model.config.num_key_value_heads, PROMPT, mine.keys.shape[-1])
        for a, b in ((mine.keys, theirs.keys), (mine.values, theirs.values)):
            assert (a.float() - b.float()).abs().max() <= 0.05 * b.float().abs().max()
    for position in range(PROMPT, PROMPT + 3):  # the steps go on from either cache alike
        tokens, positions = IDS[:, position:position + 1], torch.tensor([[position]])
        after_native = native_step.native_decode_step(model, tokens, positions, None, native_cache)[0]
        after_dense = native_step.native_decode_step(model, tokens, positions, None, dense_cache)[0]
        assert _similarity(after_native, after_dense) > 0.999
    for m in projections[:1]:
        m.native_prompt_rows = PROMPT - 1  # one layer's kernel lost at this many rows
    assert native_step.native_prompt(model, prompt, growing_cache(model.config, native_step.cache_dtype(model))) is None


@pytest.mark.parametrize("family", ["qwen2", "llama-biases"])
@pytest.mark.parametrize("weights", ["int4 int16", "int4 tiles"])
@torch.inference_mode()
def test_a_prompt_read_after_a_cached_prefix_is_the_whole_prompt_read_bit_for_bit(extension, family, weights):
    """What the prefix cache relies on: the prompt's tokens after a stored prefix, read on
    their own, give the full pass's logits and keys and values exactly, wherever the prefix
    ends (one token, a kernel's row block, all but the last), and so do the steps after.
    The steps write the keys and values a prompt pass over those tokens writes, so a
    finished reply's may be reused too."""
    _needs(extension, weights)
    model = _prepared(_four_bit_model(family), weights)
    assert native_step.ready(model)
    for m in model.modules():
        if getattr(m, "tile_kernel", None):
            m.native_prompt_rows = native_step.ANY_ROWS
    prompt = IDS[0].tolist()
    whole = growing_cache(model.config, native_step.cache_dtype(model))
    expected = native_step.native_prompt(model, prompt, whole)
    store = PrefixCache(1 << 30)
    store.store(prompt[:-1], [layer.keys[0] for layer in whole.layers], [layer.values[0] for layer in whole.layers])
    for reused in (1, 8, 17, len(prompt) - 1):
        entry, length = store.longest(prompt[:reused] + [prompt[-1] + 1])  # differs after `reused`
        assert length == reused
        cache = growing_cache(model.config, native_step.cache_dtype(model))
        logits = native_step.native_prompt(model, prompt, cache, entry, reused)
        assert torch.equal(logits, expected), reused
        for mine, theirs in zip(cache.layers, whole.layers):
            assert torch.equal(mine.keys, theirs.keys) and torch.equal(mine.values, theirs.values)
    steps = [growing_cache(model.config, native_step.cache_dtype(model)) for _ in range(2)]
    native_step.native_prompt(model, prompt[:20], steps[0])
    native_step.native_prompt(model, prompt[:20], steps[1], *store.longest(prompt[:20]))
    for position in range(20, 23):
        tokens, positions = IDS[:, position:position + 1], torch.tensor([[position]])
        after = [native_step.native_decode_step(model, tokens, positions, None, cache) for cache in steps]
        assert torch.equal(after[0], after[1])
    read = growing_cache(model.config, native_step.cache_dtype(model))
    native_step.native_prompt(model, prompt[:23], read)
    for stepped, theirs in zip(steps[0].layers, read.layers):
        assert torch.equal(stepped.keys, theirs.keys) and torch.equal(stepped.values, theirs.values)


def test_prompt_row_timings_outlast_a_burst_of_other_work():
    """Runs slowed by other work (here: the warm-up and the first three timed runs sleep
    10 ms) do not decide a timing: it goes on until the runs add up to five times the
    fastest."""
    calls = []

    def run():
        calls.append(None)
        if len(calls) <= 4:
            time.sleep(0.01)

    assert native_step._fastest(run) < 0.005
    assert len(calls) <= 21  # a warm-up run and at most 20 timed


@pytest.mark.parametrize("family", ["qwen2", "llama-biases"])
@torch.inference_mode()
def test_prompt_passes_take_the_native_int4_kernel_up_to_the_measured_rows(extension, family, monkeypatch):
    """A prompt pass's int4 projections: the kernel where measured faster (each projection's
    result is the kernel's own), and logits as close to the float32 model as the bf16 dense
    copy's; beyond the rows measured, the dense copy as before. The rows are measured when
    the scheduler first asks whether native steps run (`ready`), before that batch's prompts."""
    _int16_rows(extension)
    reference = _four_bit_model(family)
    model = _prepared(reference, "int4 int16")
    layers = [m for m in model.modules() if getattr(m, "tile_kernel", None)]
    assert {m.native_prompt_rows for m in layers} == {0}
    timed = []
    monkeypatch.setattr(native_step, "pick_prompt_rows", lambda timings: timed.append(timings) or 64)
    assert native_step.step_line(model) and not timed  # the status line measures nothing
    assert native_step.ready(model) and native_step.ready(model)
    assert len(timed) == 1 and set(timed[0]) == set(native_step.PROMPT_ROWS)  # once per model
    assert {m.native_prompt_rows for m in layers} == {64}
    rows = torch.randn(PROMPT, layers[0].in_features).bfloat16()
    expected = {0: layers[0].many_rows(rows, native=False)}
    for m in layers:
        m.native_prompt_rows = PROMPT
    assert torch.equal(layers[0].many_rows(rows), native_step.tile_matmul(layers[0], rows).bfloat16())
    assert not torch.equal(layers[0].many_rows(rows), expected[0])
    ids = IDS[:, :PROMPT]
    native = model(input_ids=ids).logits[0].float()
    for m in layers:
        m.native_prompt_rows = PROMPT - 1  # one row too many: dense
    dense = model(input_ids=ids).logits[0].float()
    exact = reference(input_ids=ids).logits[0].float()
    assert not torch.equal(native, dense)
    for e, n, d in zip(exact, native, dense):
        assert _similarity(e, n) >= min(_similarity(e, d), 0.999) - 0.002


def test_the_tile_layout_holds_every_weight_and_refuses_what_float16_cannot_hold():
    """Unpacked as native_step.cpp reads it, the layout gives back each weight; scales too
    small for float16 (held less exactly than torch's bf16 would) get no layout."""
    weight, (packed, scale_low) = _int4_weights(32, 64, seed=5)
    outputs, inputs = weight.shape
    nibbles = torch.stack([packed & 15, packed >> 4], dim=3).float()  # tile, group, j, low/high, 32 bytes
    nibbles = nibbles.reshape(2, 2, 8, 2, 16, 2)  # ..., output, input within the pair
    q = nibbles.permute(0, 4, 1, 2, 3, 5).reshape(outputs, inputs)  # inputs 4j + 2·high + pair
    scale, low = (scale_low[:, :, i].permute(0, 2, 1).reshape(outputs, -1).float() for i in (0, 1))
    assert torch.equal(q * scale.repeat_interleave(32, 1) + low.repeat_interleave(32, 1), weight)
    tiny = torch.full((32, 2), 1e-9)
    assert native_step.tile_layout(q, tiny, tiny) is None
    assert native_step.tile_layout(q[:24], scale[:24], low[:24] + 8 * scale[:24]) is None  # not 16 outputs a tile


def test_int8_layers_take_int16_rows_where_the_build_has_them(extension):
    """Every fused int8 projection of whole tiles goes to the int16-rows kernel (the tiny
    families' shapes all are); where the build has none, to the float32-rows one."""
    model = _prepared(_original("qwen2", None), "int8")
    int8 = [m for m in model.model.layers.modules() if hasattr(m, "weight_int8")]
    expected = native_step.KIND_INT8_INT16 if extension.int16_rows_ready() else native_step.KIND_INT8
    assert int8 and {native_step._projection(extension, m)[0] for m in int8} == {expected}


@pytest.mark.parametrize("family", ["llama", "qwen2"])
@torch.inference_mode()
def test_an_int8_head_gives_float32_logits_of_its_int8_weights(extension, family, tiny_causal_lm_dir):
    """The final norm and the int8 LM head run in the native call: float32 logits of the
    head's int8 values (the Python head rounds its input and its logits to bf16), by
    int16-rounded rows where the vocabulary is whole tiles of 16 (qwen2's 512), else by
    float32 rows (the tiny llama's)."""
    model = _prepared(_original(family, tiny_causal_lm_dir), "int8 bf16")
    decoder = model._playground_native_step.get(model)
    assert decoder.has_head()
    whole_tiles = model.config.vocab_size % 16 == 0
    assert decoder.head_int16_rows() == (extension.int16_rows_ready() and whole_tiles)
    assert whole_tiles == (family == "qwen2")
    cache = prefilled(model, [PROMPTS[0]], torch.float32)
    hidden = torch.randn(2, model.config.hidden_size)
    logits = decoder.logits(hidden)
    norm, head = model.model.norm, model.lm_head
    normed = hidden.double() * torch.rsqrt(hidden.double().pow(2).mean(-1, keepdim=True)
                                           + norm.variance_epsilon) * norm.weight.double()
    expected = normed @ (head.weight_int8.double() * head.scale.double()[:, None]).T
    assert logits.dtype == torch.float32
    torch.testing.assert_close(logits.double(), expected, rtol=1e-4, atol=1e-4 * expected.abs().max().item())
    step = native_step.native_decode_step(model, torch.tensor([[3]]), cache.positions(), None, cache.cache)
    assert step.dtype == torch.float32
    with pytest.raises(RuntimeError, match="float32"):
        decoder.logits(hidden.bfloat16())


@torch.inference_mode()
def test_bad_arguments_raise_errors_not_crashes(extension, tiny_causal_lm_dir):
    model = _prepared(_original("llama", tiny_causal_lm_dir), "int8 bf16")
    decoder = model._playground_native_step.get(model)
    cache = prefilled(model, [PROMPTS[0]], torch.float32)
    layers = cache.cache.layers
    length = layers[0].keys.shape[-2]
    buffers = [layer.room_for(length) for layer in layers]
    keys, values = [k for k, _ in buffers], [v for _, v in buffers]
    hidden = torch.zeros(1, model.config.hidden_size)
    rotary = torch.zeros(1, model.model.layers[0].head_dim)
    with pytest.raises(RuntimeError, match="float32"):
        decoder.step(hidden.bfloat16(), rotary, rotary, keys, values, length, [])
    with pytest.raises(RuntimeError, match="one cache per layer"):
        decoder.step(hidden, rotary, rotary, keys[:1], values[:1], length, [])
    with pytest.raises(RuntimeError, match="cache buffers"):
        decoder.step(hidden, rotary, rotary, keys, values, keys[0].shape[2], [])  # no free column
    with pytest.raises(RuntimeError, match="start"):
        decoder.step(hidden, rotary, rotary, keys, values, length, [length + 1])
    assert decoder.step(hidden, rotary, rotary, keys, values, length, []).shape == hidden.shape


def test_a_build_for_another_cpu_is_not_loaded(tmp_path, monkeypatch):
    """Two CPUs of one marketing name with different flags (AVX-512 FP16, AMX) get different
    files: a cache directory moved between them never loads code that would stop with SIGILL."""
    from modules.engine import cpu_profile

    here = native_step.library_path(tmp_path)
    assert native_step.library_path(tmp_path) == here  # stable on one machine
    flags = cpu_profile.cpu_flags()
    monkeypatch.setattr(cpu_profile, "cpu_flags", lambda: flags - {"amx_tile", "avx512fp16"} | {"other"})
    assert native_step.library_path(tmp_path) != here


def test_without_a_compiler_the_build_fails_with_a_reason(tmp_path, monkeypatch):
    monkeypatch.setenv("CXX", str(tmp_path / "no-such-compiler"))
    builder = native_step._Builder()
    assert builder.build(tmp_path) is None
    assert "no C++ compiler" in builder.error
    assert builder.build(tmp_path) is None  # decided once per process, no retry per step


def test_a_failing_compile_reports_the_compilers_message(tmp_path, monkeypatch):
    broken = tmp_path / "broken-cxx"
    broken.write_text("#!/bin/sh\necho 'fatal error: Python.h: No such file' >&2\nexit 1\n")
    broken.chmod(0o755)
    monkeypatch.setenv("CXX", str(broken))
    builder = native_step._Builder()
    assert builder.build(tmp_path) is None
    assert "Python.h" in builder.error
    assert not list((tmp_path / "kernels").glob("*.tmp"))  # no half-built file left behind


def test_the_scheduler_keeps_one_kind_of_step_per_batch(extension, embedded_chat_model):
    """A batch that started on the Python step (extension not yet built) finishes on it."""
    scheduler = embedded_chat_model.scheduler
    assert isinstance(scheduler, BatchScheduler) and native_step.ready(embedded_chat_model.model)
    from modules.tasks.chat import GenerationParams, stream_chat

    params = GenerationParams(do_sample=False, max_new_tokens=12)
    messages = [{"role": "user", "content": "Name a fruit."}]
    reply = "".join(chunk.delta for chunk in stream_chat(embedded_chat_model, messages, params) if chunk.delta)
    assert scheduler._native_steps is True and reply.strip()


@torch.inference_mode()
def test_embedded_model_native_steps_pick_the_python_steps_tokens(extension, embedded_chat_model):
    """The real SmolLM2 (int4 layers, int8 head) as the app prepares it: fed the Python
    step's greedy tokens, the native step picks the same top token almost everywhere
    (a near-tie may flip either way by rounding)."""
    model, tokenizer = embedded_chat_model.model, embedded_chat_model.tokenizer
    assert native_step.ready(model)
    ids = tokenizer.apply_chat_template([{"role": "user", "content": "Tell me about Paris."}],
                                        add_generation_prompt=True, return_tensors="pt", return_dict=True)["input_ids"]
    python, native = prefilled(model, [ids[0].tolist()], torch.float32), prefilled(model, [ids[0].tolist()], torch.float32)
    token, same, steps = ids[:, -1:], 0, 40
    first = None
    for _ in range(steps):
        expected = decode_step(model, token, python.positions(), None, python.cache)
        got = native_step.native_decode_step(model, token, native.positions(), None, native.cache)
        first = first if first is not None else (expected.float(), got.float())
        same += int(got.argmax()) == int(expected.argmax())
        token = expected.argmax(-1, keepdim=True)
    assert same >= steps - 2
    assert float(F.cosine_similarity(*first)) > 0.999
