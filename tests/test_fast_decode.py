"""The fast-decode hook: fused layers with int4/int8 weight-only kernels for CPU chat models.

Speed is measured in benchmarks/decode_speed.py; here we check that the hook is
applied where it should be (and only there), that the UI can tell, that the kernels
compute what their weights say, and that the model still says the same things.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from modules.config import EMBEDDED_MODEL, Settings
from modules.engine.kernels.fast_decode import (
    EXACT_TOP_COUNT,
    INT4_TAG,
    INT8_TAG,
    PREFILL_ROWS,
    Int4WeightOnlyLinear,
    Int8WeightOnlyLinear,
    exact_int4_groups,
    prepare_for_fast_decode,
)
from modules.engine.cpu_profile import SpeedPlan
from modules.engine.kernels.fused_llama import FusedLlamaLayer
from modules.engine.model_cache import ModelCache, ModelKind
from tests.conftest import make_settings


def _linears(model: nn.Module) -> tuple[int, int]:
    plain = sum(type(m) is nn.Linear for m in model.modules())
    quantized = sum(isinstance(m, (Int8WeightOnlyLinear, Int4WeightOnlyLinear))
                    for m in model.modules())
    return plain, quantized


def test_int8_linear_matches_float_linear_closely():
    torch.manual_seed(0)
    linear = nn.Linear(64, 48, bias=True).to(torch.bfloat16)
    quantized = Int8WeightOnlyLinear.from_linear(linear)
    for rows in (1, PREFILL_ROWS + 4):  # the int8 kernel, then the float prefill path
        x = torch.randn(1, rows, 64, dtype=torch.bfloat16)
        expected = linear(x).float()
        got = quantized(x).float()
        assert got.shape == expected.shape
        error = (got - expected).norm() / expected.norm()
        assert error < 0.02, (rows, float(error))


def four_bit_weight(rows: int, columns: int, group: int = 32) -> torch.Tensor:
    """Weights as a Q4_1 GGUF block stores them: d·q + m, q in 0..15 (both ends used)."""
    q = torch.randint(0, 16, (rows, columns // group, group)).float()
    q[..., 0], q[..., 1] = 0, 15
    d = torch.rand(rows, columns // group, 1) * 0.02 + 0.001
    m = -torch.rand(rows, columns // group, 1) * 0.1
    return (d * q + m).reshape(rows, columns)


def test_4bit_weights_are_recognised_and_kept_exactly():
    weight = four_bit_weight(64, 128)
    assert exact_int4_groups(weight.bfloat16()) is not None
    assert exact_int4_groups(torch.randn(64, 128)) is None  # float weights would lose precision
    assert exact_int4_groups(torch.randn(64, 100)) is None  # not whole groups of 32
    q, scale, zero = exact_int4_groups(weight)
    assert q.min() >= 0 and q.max() <= 15
    rebuilt = (q.reshape(64, 4, 32) - 8) * scale[..., None] + zero[..., None]
    assert torch.allclose(rebuilt.reshape(64, 128), weight, atol=1e-6)


def test_int4_linear_computes_with_its_exact_weights():
    weight = four_bit_weight(96, 128).bfloat16()
    quantized = Int4WeightOnlyLinear(weight, exact_int4_groups(weight))
    for rows in (1, 3, PREFILL_ROWS + 4):  # the int4 kernel, then the bf16 prefill path
        x = torch.randn(1, rows, 128, dtype=torch.bfloat16)
        expected = x.float() @ weight.float().T
        got = quantized(x).float()
        assert got.shape == expected.shape
        assert (got - expected).norm() / expected.norm() < 0.01, rows


def test_chat_model_on_cpu_gets_fused_int8_layers_and_says_so(tiny_causal_lm_dir):
    cache = ModelCache(make_settings(dtype="bfloat16", fast_decode=True))
    loaded = cache.get(str(tiny_causal_lm_dir), ModelKind.CAUSAL_LM)
    assert loaded.quantization == INT8_TAG  # random weights are not 4-bit
    assert INT8_TAG in loaded.description
    plain, quantized = _linears(loaded.model)
    assert plain == 0 and quantized > 0
    assert all(isinstance(layer, FusedLlamaLayer) for layer in loaded.model.model.layers)


def test_switch_off_and_float32_leave_the_model_alone(tiny_causal_lm_dir):
    for settings in (make_settings(dtype="bfloat16", fast_decode=False),
                     make_settings(dtype="float32", fast_decode=True)):
        loaded = ModelCache(settings).get(str(tiny_causal_lm_dir), ModelKind.CAUSAL_LM)
        assert loaded.quantization is None
        assert "int8" not in loaded.description and "int4" not in loaded.description
        assert _linears(loaded.model)[1] == 0
        assert not any(isinstance(layer, FusedLlamaLayer) for layer in loaded.model.model.layers)


def test_quantized_tiny_model_predicts_like_the_float_one(tiny_causal_lm_dir):
    """Next-token distributions of the int8 model stay close to the bf16 model's, step by step."""
    path = str(tiny_causal_lm_dir)
    plain = ModelCache(make_settings(dtype="bfloat16", fast_decode=False)).get(path, ModelKind.CAUSAL_LM)
    fast = ModelCache(make_settings(dtype="bfloat16", fast_decode=True)).get(path, ModelKind.CAUSAL_LM)
    ids = torch.tensor([[1, 5, 9, 14, 20, 3, 7]])
    with torch.inference_mode():
        for step in range(1, ids.shape[1] + 1):  # one row at a time: the int8 kernel path
            a = plain.model(input_ids=ids[:, :step]).logits[0, -1].float()
            b = fast.model(input_ids=ids[:, :step]).logits[0, -1].float()
            assert torch.nn.functional.cosine_similarity(a, b, dim=0) > 0.99
    with torch.inference_mode():
        out = fast.model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=5,
                                  do_sample=False, pad_token_id=0)
    assert out.shape[1] == ids.shape[1] + 5


def test_embedded_model_runs_on_its_own_4bit_weights_and_answers_the_same(embedded_chat_model):
    """The real model, through the app's cache: the known greedy answer survives quantization."""
    loaded = embedded_chat_model
    if loaded.quantization is None:  # the session cache was built with the switch off
        loaded = ModelCache(make_settings(fast_decode=True)).get(EMBEDDED_MODEL, ModelKind.CAUSAL_LM)
    assert loaded.quantization == INT4_TAG  # the GGUF file's Q4_1 layers, kept 4-bit
    assert sum(isinstance(m, Int4WeightOnlyLinear) for m in loaded.model.modules()) == 4 * 30
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    ids = loaded.tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt",
                                               return_dict=True)["input_ids"]
    with torch.inference_mode():
        out = loaded.model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=12,
                                    do_sample=False, pad_token_id=loaded.tokenizer.pad_token_id)
    reply = loaded.tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)
    assert reply.startswith("The capital of France is Paris.")


def test_the_int8_heads_top_logits_are_exact_where_bf16_would_tie():
    """Two vocabulary rows 1/64 apart at a logit of ~40: bf16 output rounds them equal, and
    the int8 kernel alone would pick the lower id; the head picks the larger, as float32 does."""
    base = torch.randint(-20, 20, (8, 64), generator=torch.Generator().manual_seed(3)).float()
    base[:, 63] = 127.0  # integer weights with a 127 each: scale 1, int8 values exact
    base[:, 0] = 100.0
    base[2, 0] = 127.0
    base[5] = base[2]
    base[5, 1] += 1.0  # row 5 = row 2 + x[1]
    rows = torch.zeros(PREFILL_ROWS + 4, 64)
    rows[:, 0] = 40.0 / 127.0
    rows[:, 1] = 1.0 / 64.0
    rows = rows.bfloat16()
    exact = rows.float() @ base.T
    assert exact[0, 5] > exact[0, 2] and exact[0].argmax() == 5
    head = Int8WeightOnlyLinear(base, compute_dtype=torch.bfloat16)
    plain = head.few_rows(rows[:1])
    assert plain.dtype == torch.bfloat16 and plain[0, 5] == plain[0, 2]  # the tie this is about
    head.exact_top = True
    for count in (1, 3, PREFILL_ROWS + 4):  # the int8 kernel, then the float prompt path
        logits = head(rows[:count])
        assert logits.dtype == torch.float32
        assert logits.argmax(dim=1).tolist() == [5] * count
        torch.testing.assert_close(logits, exact[:count])  # 8 tokens: all among the top 32


def test_only_the_top_logits_are_recomputed():
    """Past the top EXACT_TOP_COUNT and the band near the top, the kernel's values stay."""
    vocabulary = EXACT_TOP_COUNT * 4
    weight = torch.randint(-127, 128, (vocabulary, 64), generator=torch.Generator().manual_seed(5)).float()
    weight[:, 0] = 127.0
    rows = torch.randn(2, 64, generator=torch.Generator().manual_seed(6)).bfloat16()
    head = Int8WeightOnlyLinear(weight, compute_dtype=torch.bfloat16)
    plain = head.few_rows(rows).float()
    head.exact_top = True
    logits = head(rows)
    exact = rows.float() @ weight.T
    for row in range(2):
        top = exact[row].topk(EXACT_TOP_COUNT).indices
        torch.testing.assert_close(logits[row, top], exact[row, top])
        changed = (logits[row] != plain[row]).sum().item()
        assert EXACT_TOP_COUNT // 2 <= changed <= EXACT_TOP_COUNT + 8  # the rest: the kernel's values


def test_the_embedded_models_head_gives_exact_top_logits(embedded_chat_model):
    head = embedded_chat_model.model.get_output_embeddings()
    assert isinstance(head, Int8WeightOnlyLinear) and head.exact_top
    assert sum(getattr(m, "exact_top", False) for m in embedded_chat_model.model.modules()) == 1


def test_switch_reads_the_environment():
    assert Settings.from_env({"PLAYGROUND_FAST_DECODE": "off"}).fast_decode is False
    assert Settings.from_env({}).fast_decode is True


def _four_bit_model(family: str) -> nn.Module:
    """A tiny random model of `family` whose projections hold exact 4-bit groups (as from GGUF)."""
    from tests.test_fused_llama import FAMILIES, random_model

    model = random_model(FAMILIES[family]())
    make_four_bit(model)
    return model


def make_four_bit(model: nn.Module) -> None:
    """Give every projection 4-bit weights, as a GGUF file's (the LM head stays float)."""
    torch.manual_seed(1)
    with torch.no_grad():
        for name, module in model.named_modules():
            if type(module) is nn.Linear and "lm_head" not in name:
                module.weight.copy_(four_bit_weight(*module.weight.shape))


def _picks_agree(reference: torch.Tensor, candidate: torch.Tensor) -> bool:
    """The candidate's top token is the reference's, or within 2 % of the logit range of it
    (a near-tie that rounding may flip on either CPU class)."""
    picked = reference[candidate.argmax()]
    return bool(picked >= reference.max() - 0.02 * (reference.max() - reference.min()))


def _teacher_forced_logits(model: nn.Module, ids: torch.Tensor, prompt: int) -> list[torch.Tensor]:
    """Last-position logits after a prompt read in one pass (the float prefill path), then
    after each further token fed one at a time with the cache (the decode kernels)."""
    with torch.inference_mode():
        out = model(input_ids=ids[:, :prompt], use_cache=True)
        logits = [out.logits[0, -1].float()]
        for position in range(prompt, ids.shape[1]):
            out = model(input_ids=ids[:, position:position + 1],
                        past_key_values=out.past_key_values, use_cache=True)
            logits.append(out.logits[0, -1].float())
    return logits


def _similarity(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(F.cosine_similarity(a - a.mean(), b - b.mean(), dim=0))


@pytest.mark.parametrize("family", ["qwen2", "qwen3", "llama-biases"])
@pytest.mark.parametrize("decode_dtype, prefill_dtype", [("fp32", "fp32"), ("bf16", "fp32"),
                                                         ("bf16", "bf16")])
def test_fused_int4_families_predict_like_float32(family, decode_dtype, prefill_dtype):
    """Teacher-forced top-1 and logits against the float32 model. With bf16 activations the
    bar is transformers' own bf16 model on the same weights: a random tiny model has steps
    where any bf16 rounding moves the logits, and the fast path may not do worse there."""
    reference = _four_bit_model(family)
    fast = copy.deepcopy(reference)
    plan = SpeedPlan("test", "quantized", decode_dtype, prefill_dtype)
    assert prepare_for_fast_decode(fast, torch.device("cpu"), plan) == INT4_TAG
    assert sum(isinstance(m, Int4WeightOnlyLinear) for m in fast.modules()) == 4 * 2
    ids = torch.randint(3, 500, (1, 40), generator=torch.Generator().manual_seed(2))
    prompt = PREFILL_ROWS + 4
    expected = _teacher_forced_logits(reference, ids, prompt)
    got = _teacher_forced_logits(fast, ids, prompt)
    if decode_dtype == "fp32":
        bar_similarity, bar_agreement = [0.999] * len(expected), len(expected)
    else:
        plain_bf16 = _teacher_forced_logits(copy.deepcopy(reference).bfloat16(), ids, prompt)
        bar_similarity = [min(0.99, _similarity(e, b)) - 0.05 for e, b in zip(expected, plain_bf16)]
        bar_agreement = sum(_picks_agree(e, b) for e, b in zip(expected, plain_bf16)) - 1
    assert sum(_picks_agree(e, g) for e, g in zip(expected, got)) >= bar_agreement
    for e, g, bar in zip(expected, got, bar_similarity):
        assert _similarity(e, g) > bar


def _final_norm_output(model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    """The last hidden states (after the final norm) of one pass over `ids`."""
    seen = []
    hook = model.model.norm.register_forward_hook(lambda module, args, out: seen.append(out))
    with torch.inference_mode():
        model(input_ids=ids)
    hook.remove()
    return seen[0]


def test_float32_prompt_pass_feeds_a_bf16_cache():
    """Where bf16 is emulated the plan reads prompts in float32 and decodes in bf16: the whole
    prompt pass (norms, rotary, attention, residual stream; not only its matmuls) is float32,
    so it matches a float32 model holding the same (bf16-rounded) parameters to float32
    rounding, and k/v still enter the cache as bf16 for decode."""
    model = _four_bit_model("llama-biases")
    fast = copy.deepcopy(model)
    plan = SpeedPlan("test", "quantized", "bf16", "fp32")
    assert prepare_for_fast_decode(fast, torch.device("cpu"), plan) == INT4_TAG
    same_parameters_in_float32 = copy.deepcopy(model).bfloat16().float()
    ids = torch.randint(3, 500, (1, PREFILL_ROWS + 8), generator=torch.Generator().manual_seed(4))
    expected = _final_norm_output(same_parameters_in_float32, ids)
    got = _final_norm_output(fast, ids)
    with torch.inference_mode():
        out = fast(input_ids=ids, use_cache=True)
    assert got.dtype == torch.float32
    # bf16 anywhere in the pass would be off by ~1e-2 of the scale; float32 by ~1e-6.
    assert (got - expected).abs().max() < 1e-4 * expected.abs().max()
    assert out.past_key_values.layers[0].keys.dtype == torch.bfloat16


@pytest.mark.parametrize("family", ["qwen2", "llama-biases"])
def test_float32_prompts_then_bf16_decode_pick_float32s_tokens(family):
    """Greedy continuations of a few prompts agree with the float32 model's, except where the
    float32 model itself nearly tied (then the rest may differ and is not compared)."""
    reference = _four_bit_model(family)
    fast = copy.deepcopy(reference)
    prepare_for_fast_decode(fast, torch.device("cpu"), SpeedPlan("test", "quantized", "bf16", "fp32"))
    generator = torch.Generator().manual_seed(5)
    for _ in range(3):
        ids = torch.randint(3, 500, (1, PREFILL_ROWS + 6), generator=generator)
        with torch.inference_mode():
            out = reference.generate(ids, max_new_tokens=8, do_sample=False, output_logits=True,
                                     return_dict_in_generate=True, pad_token_id=0)
            candidate = fast.generate(ids, max_new_tokens=8, do_sample=False, pad_token_id=0)
        for step, logits in enumerate(out.logits):
            expected = int(out.sequences[0, ids.shape[1] + step])
            picked = int(candidate[0, ids.shape[1] + step])
            if picked != expected:
                assert _picks_agree(logits[0].float(), torch.nn.functional.one_hot(
                    torch.tensor(picked), logits.shape[-1]).float())
                break


def test_float_decode_plan_with_float32_prompts_still_reads_prompts():
    """A probe may pick plain float layers for decode; they hold only the model's dtype, so
    the prompt pass stays in it (a float32 pass into bf16 layers would fail)."""
    model = _four_bit_model("qwen2")
    plan = SpeedPlan("test", "float", "bf16", "fp32")
    prepare_for_fast_decode(model, torch.device("cpu"), plan)
    ids = torch.randint(3, 500, (1, PREFILL_ROWS + 4), generator=torch.Generator().manual_seed(6))
    with torch.inference_mode():
        logits = model(input_ids=ids).logits
    assert logits.shape[1] == ids.shape[1] and torch.isfinite(logits).all()
