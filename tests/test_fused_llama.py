"""FusedLlamaLayer computes what transformers' LlamaDecoderLayer computes.

Both run in float32 on the tiny Llama test model (same weights, plain float
projections), through every path the app uses: a prompt in one pass, token-by-token
decoding with the cache, a chunk after cached tokens (the explorer's prefill), a
left-padded batch (zero-shot scoring) and `generate`.
"""

from __future__ import annotations

import copy

import pytest
import torch
from transformers import AutoModelForCausalLM

from modules.engine.kernels.fused_llama import FusedLlamaLayer, float_linear, fuse_layers, fusable

TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def models(tiny_causal_lm_dir):
    original = AutoModelForCausalLM.from_pretrained(tiny_causal_lm_dir, dtype=torch.float32).eval()
    fused = copy.deepcopy(original)
    assert fuse_layers(fused, float_linear) == original.config.num_hidden_layers
    assert all(isinstance(layer, FusedLlamaLayer) for layer in fused.model.layers)
    return original, fused


def close(a: torch.Tensor, b: torch.Tensor) -> bool:
    return torch.allclose(a, b, atol=TOLERANCE, rtol=0)


@torch.inference_mode()
def test_prompt_then_cached_steps_then_a_cached_chunk(models):
    original, fused = models
    ids = torch.randint(3, 400, (1, 20), generator=torch.Generator().manual_seed(0))
    a, b = original(input_ids=ids, use_cache=True), fused(input_ids=ids, use_cache=True)
    assert close(a.logits, b.logits)
    for token in (5, 17, 99):
        step = torch.tensor([[token]])
        a = original(input_ids=step, past_key_values=a.past_key_values, use_cache=True)
        b = fused(input_ids=step, past_key_values=b.past_key_values, use_cache=True)
        assert close(a.logits, b.logits)
    chunk = torch.tensor([[7, 8, 9, 10, 11]])
    a = original(input_ids=chunk, past_key_values=a.past_key_values, use_cache=True)
    b = fused(input_ids=chunk, past_key_values=b.past_key_values, use_cache=True)
    assert close(a.logits, b.logits)
    assert b.past_key_values.get_seq_length() == 20 + 3 + 5


@torch.inference_mode()
def test_left_padded_batch(models):
    original, fused = models
    ids = torch.randint(3, 400, (3, 12), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    mask[0, :5] = 0
    mask[2, :2] = 0
    a = original(input_ids=ids, attention_mask=mask).logits
    b = fused(input_ids=ids, attention_mask=mask).logits
    assert close(a[mask.bool()], b[mask.bool()])


@torch.inference_mode()
def test_generate_gives_the_same_tokens(models):
    original, fused = models
    ids = torch.tensor([[1, 5, 9, 14, 20, 3, 7]])
    kwargs = {"max_new_tokens": 12, "do_sample": False, "pad_token_id": 0,
              "attention_mask": torch.ones_like(ids)}
    assert torch.equal(original.generate(ids, **kwargs), fused.generate(ids, **kwargs))


def test_only_plain_llama_models_are_fused(models):
    original, _ = models
    assert fusable(original)
    other = copy.deepcopy(original)
    other.config.attention_bias = True  # e.g. Qwen2: biased q/k/v, left to transformers
    assert not fusable(other) and fuse_layers(other, float_linear) == 0
