"""The fast-decode hook: int8 weight-only linears for CPU chat models.

Speed is measured in benchmarks/decode_speed.py; here we check that the hook is
applied where it should be (and only there), that the UI can tell, and that the
model still says the same things.
"""

from __future__ import annotations

import torch
from torch import nn

from modules.config import EMBEDDED_MODEL, Settings
from modules.fast_decode import (
    PREFILL_ROWS,
    QUANTIZED_TAG,
    Int8WeightOnlyLinear,
    fast_decode_enabled,
)
from modules.model_cache import ModelCache, ModelKind
from tests.conftest import make_settings


def _linears(model: nn.Module) -> tuple[int, int]:
    plain = sum(type(m) is nn.Linear for m in model.modules())
    quantized = sum(isinstance(m, Int8WeightOnlyLinear) for m in model.modules())
    return plain, quantized


def test_int8_linear_matches_float_linear_closely():
    torch.manual_seed(0)
    linear = nn.Linear(64, 48, bias=True).to(torch.bfloat16)
    quantized = Int8WeightOnlyLinear(linear)
    for rows in (1, PREFILL_ROWS + 4):  # the int8 kernel, then the float prefill path
        x = torch.randn(1, rows, 64, dtype=torch.bfloat16)
        expected = linear(x).float()
        got = quantized(x).float()
        assert got.shape == expected.shape
        error = (got - expected).norm() / expected.norm()
        assert error < 0.02, (rows, float(error))


def test_chat_model_on_cpu_gets_int8_weights_and_says_so(tiny_causal_lm_dir):
    cache = ModelCache(make_settings(dtype="bfloat16", fast_decode=True))
    loaded = cache.get(str(tiny_causal_lm_dir), ModelKind.CAUSAL_LM)
    assert loaded.quantization == QUANTIZED_TAG
    assert QUANTIZED_TAG in loaded.description
    plain, quantized = _linears(loaded.model)
    assert plain == 0 and quantized > 0


def test_switch_off_and_float32_leave_the_model_alone(tiny_causal_lm_dir):
    for settings in (make_settings(dtype="bfloat16", fast_decode=False),
                     make_settings(dtype="float32", fast_decode=True)):
        loaded = ModelCache(settings).get(str(tiny_causal_lm_dir), ModelKind.CAUSAL_LM)
        assert loaded.quantization is None
        assert QUANTIZED_TAG not in loaded.description
        assert _linears(loaded.model)[1] == 0


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


def test_embedded_model_answers_the_same_with_int8_weights(embedded_chat_model):
    """The real model, through the app's cache: the known greedy answer survives quantization."""
    loaded = embedded_chat_model
    if loaded.quantization is None:  # the session cache was built with the switch off
        loaded = ModelCache(make_settings(fast_decode=True)).get(EMBEDDED_MODEL, ModelKind.CAUSAL_LM)
    assert loaded.quantization == QUANTIZED_TAG
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    ids = loaded.tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt",
                                               return_dict=True)["input_ids"]
    with torch.inference_mode():
        out = loaded.model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=12,
                                    do_sample=False, pad_token_id=loaded.tokenizer.pad_token_id)
    reply = loaded.tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)
    assert reply.startswith("The capital of France is Paris.")


def test_switch_reads_the_environment():
    assert fast_decode_enabled({}) is True
    assert fast_decode_enabled({"PLAYGROUND_FAST_DECODE": "0"}) is False
    assert Settings.from_env({"PLAYGROUND_FAST_DECODE": "off"}).fast_decode is False
    assert Settings.from_env({}).fast_decode is True
