"""The scheduler's lean decode step gives bit-identical logits to the fused model's forward.

Each fused family (the Llama test model, Qwen2 with q/k/v biases, Qwen3 with q/k norms,
a Llama with every bias) is prepared as the app prepares it on a CPU (fused layers with
int8 weight-only projections, bf16), and as fused float32 layers. The same prompt(s) run
through `model(...)` on a cache in the model's dtype and through `decode_step` on a
float32 cache (as the scheduler holds it), one row alone and two left-padded rows with
the scheduler's mask; every step must match exactly.
"""

from __future__ import annotations

import copy

import pytest
import torch
from transformers import AutoModelForCausalLM

from modules.engine.batching import _BatchCache, growing_cache
from modules.engine.cpu_profile import SpeedPlan
from modules.engine.kernels.decode_step import decode_step, supports_decode_step
from modules.engine.kernels.fast_decode import prepare_for_fast_decode
from modules.engine.kernels.fused_llama import float_linear, fuse_layers
from tests.test_fused_llama import FAMILIES, random_model

STEPS = 6


@pytest.fixture(scope="module", params=["llama", *FAMILIES])
def original(request, tiny_causal_lm_dir):
    if request.param == "llama":
        return AutoModelForCausalLM.from_pretrained(tiny_causal_lm_dir, dtype=torch.float32).eval()
    return random_model(FAMILIES[request.param]())


@pytest.fixture(scope="module", params=["int8 bf16", "float fp32"])
def prepared(request, original):
    model = copy.deepcopy(original)
    if request.param == "int8 bf16":
        plan = SpeedPlan("test", "quantized", "bf16", "bf16", "fixed")
        assert prepare_for_fast_decode(model, torch.device("cpu"), plan) is not None
    else:
        fuse_layers(model, float_linear)
    assert supports_decode_step(model)
    return model


def prefilled(model, prompts: list[list[int]], dtype: torch.dtype | None = None) -> _BatchCache:
    """The scheduler's batch: each prompt prefilled alone, then joined with left padding."""
    batch = _BatchCache()
    for ids in prompts:
        cache = growing_cache(model.config, dtype)
        model(input_ids=torch.tensor([ids]), past_key_values=cache, use_cache=True)
        batch.add(cache)
    return batch


@pytest.mark.parametrize("prompts", [[[5, 9, 2, 7]], [[5, 9, 2, 7, 11, 3, 8], [4, 6, 1]]],
                         ids=["one row", "two padded rows"])
@torch.inference_mode()
def test_lean_steps_equal_the_models_forward(prepared, prompts):
    through_model, lean = prefilled(prepared, prompts), prefilled(prepared, prompts, torch.float32)
    attention = prepared.config._attn_implementation
    tokens = torch.tensor([[3]] * len(prompts))
    for _ in range(STEPS):
        positions, mask = through_model.step_inputs(attention)
        expected = prepared(input_ids=tokens, attention_mask=mask, position_ids=positions,
                            past_key_values=through_model.cache, use_cache=True).logits[:, -1, :]
        got = decode_step(prepared, tokens, *lean.step_inputs(attention), lean.cache)
        assert torch.equal(got, expected)
        tokens = expected.argmax(-1, keepdim=True)
    assert lean.length == through_model.length
    assert {layer.keys.dtype for layer in lean.cache.layers} == {torch.float32}
    assert {layer.keys.dtype for layer in through_model.cache.layers} == {prepared.dtype}


def test_unfused_models_keep_the_generic_path(original):
    assert not supports_decode_step(original)


@torch.inference_mode()
def test_one_token_steps_on_a_plain_cache_equal_the_models_forward(prepared):
    """The explorer's stepping: transformers' own DynamicCache, one sequence."""
    from transformers import DynamicCache

    from modules.engine.kernels.decode_step import one_token_step

    prompt = torch.tensor([[5, 9, 2, 7, 11]])
    through_model, lean = DynamicCache(config=prepared.config), DynamicCache(config=prepared.config)
    prepared(input_ids=prompt, past_key_values=through_model, use_cache=True)
    prepared(input_ids=prompt, past_key_values=lean, use_cache=True)
    token = 3
    for _ in range(STEPS):
        expected = prepared(input_ids=torch.tensor([[token]]), past_key_values=through_model,
                            use_cache=True).logits[:, -1, :]
        got, cache = one_token_step(prepared, token, lean)
        assert cache is lean and torch.equal(got, expected)
        token = int(expected.argmax())
    fresh_logits, fresh_cache = one_token_step(prepared, token, None)  # no cache yet: the model's path
    assert fresh_cache.get_seq_length() == 1 and fresh_logits.shape == expected.shape
