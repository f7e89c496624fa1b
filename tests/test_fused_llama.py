"""FusedLlamaLayer computes what transformers' decoder layers compute.

Both run in float32 on tiny random models of each fused family (the Llama test
model, Qwen2 with q/k/v biases, Qwen3 with q/k norms, a Llama with every bias), with
the same weights and plain float projections, through every path the app uses: a prompt in one pass, token-by-token
decoding with the cache, a chunk after cached tokens (the explorer's prefill), a
left-padded batch (zero-shot scoring) and `generate`.
"""

from __future__ import annotations

import copy

import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaConfig, Qwen2Config, Qwen3Config

from modules.engine.kernels.fused_llama import FusedLlamaLayer, float_linear, fuse_layers, fusable

TOLERANCE = 1e-4
SMALL = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, vocab_size=512, max_position_embeddings=256,
             tie_word_embeddings=True)
FAMILIES = {
    "qwen2": lambda: Qwen2Config(**SMALL),  # biased q/k/v
    "qwen3": lambda: Qwen3Config(**SMALL, head_dim=16),  # q/k RMSNorm per head
    "llama-biases": lambda: LlamaConfig(**SMALL, attention_bias=True, mlp_bias=True),
}


def random_model(config) -> torch.nn.Module:
    """A random model whose biases and norm weights are non-trivial (init leaves them 0 / 1)."""
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config).eval()
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.endswith("bias") or "norm" in name:
                parameter.add_(torch.randn_like(parameter) * 0.1)
    return model


@pytest.fixture(scope="module", params=["llama", *FAMILIES])
def models(request, tiny_causal_lm_dir):
    if request.param == "llama":
        original = AutoModelForCausalLM.from_pretrained(tiny_causal_lm_dir, dtype=torch.float32).eval()
    else:
        original = random_model(FAMILIES[request.param]())
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


def test_other_architectures_and_sliding_windows_keep_their_layers(models):
    original, _ = models
    assert fusable(original)
    other = copy.deepcopy(original)
    other.config.layer_types = ["sliding_attention"] * other.config.num_hidden_layers
    assert not fusable(other) and fuse_layers(other, float_linear) == 0
    other.config.model_type = "gemma"
    assert not fusable(other)
