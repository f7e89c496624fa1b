"""The fast-decode hook: fused layers with int4/int8 weight-only kernels for CPU chat models.

Speed is measured in benchmarks/decode_speed.py; here we check that the hook is
applied where it should be (and only there), that the UI can tell, that the kernels
compute what their weights say, and that the model still says the same things.
"""

from __future__ import annotations

import torch
from torch import nn

from modules.config import EMBEDDED_MODEL, Settings
from modules.engine.kernels.fast_decode import (
    INT4_TAG,
    INT8_TAG,
    PREFILL_ROWS,
    Int4WeightOnlyLinear,
    Int8WeightOnlyLinear,
    exact_int4_groups,
)
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


def test_switch_reads_the_environment():
    assert Settings.from_env({"PLAYGROUND_FAST_DECODE": "off"}).fast_decode is False
    assert Settings.from_env({}).fast_decode is True
