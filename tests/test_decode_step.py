"""The scheduler's lean decode step gives bit-identical logits to the fused model's forward.

Each fused family (the Llama test model, Qwen2 with q/k/v biases, Qwen3 with q/k norms,
a Llama with every bias) is prepared as the app prepares it on a CPU (fused layers with
int8 weight-only projections, bf16), and as fused float32 layers. The same prompt(s) run
through `model(...)` on a cache in the model's dtype and through `decode_step` on a
float32 cache (as the scheduler holds it): one row must match exactly, and each row of a
left-padded batch must match the same row run alone exactly.
"""

from __future__ import annotations

import copy

import pytest
import torch
from transformers import AutoModelForCausalLM

from modules.engine.batching import _BatchCache
from modules.engine.kv_cache import growing_cache
from modules.engine.cpu_profile import SpeedPlan
from modules.engine.kernels.decode_step import decode_step, supports_decode_step
from modules.engine.kernels.fast_decode import prepare_for_fast_decode
from modules.engine.kernels.fused_llama import float_linear, fuse_layers
from tests.test_fused_llama import FAMILIES, random_model

STEPS = 6
# Lengths 7, 3 and 21: pads of 14, 18 and 0. At these tiny models' shapes masked attention
# happens to round as each row alone does; the real-model test at the end is the one that
# masking fails.
PROMPTS = [[5, 9, 2, 7, 11, 3, 8], [4, 6, 1], [(7 * i) % 50 + 1 for i in range(21)]]


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


@torch.inference_mode()
def test_lean_steps_equal_the_models_forward(prepared):
    through_model, lean = prefilled(prepared, [PROMPTS[1]]), prefilled(prepared, [PROMPTS[1]], torch.float32)
    tokens = torch.tensor([[3]])
    for _ in range(STEPS):
        expected = prepared(input_ids=tokens, position_ids=through_model.positions(),
                            past_key_values=through_model.cache, use_cache=True).logits[:, -1, :]
        assert lean.starts() is None
        got = decode_step(prepared, tokens, lean.positions(), None, lean.cache)
        assert torch.equal(got, expected)
        tokens = expected.argmax(-1, keepdim=True)
    assert lean.length == through_model.length
    assert {layer.keys.dtype for layer in lean.cache.layers} == {torch.float32}
    assert {layer.keys.dtype for layer in through_model.cache.layers} == {prepared.dtype}


@torch.inference_mode()
def test_each_padded_row_computes_exactly_what_it_computes_alone(prepared):
    """A batched greedy reply equals the reply alone only if every step's logits do, bit
    for bit: near-ties are common. Masked attention over the padded buffer is equal only
    up to rounding, so it stays the generic path's (checked close here)."""
    batch = prefilled(prepared, PROMPTS, torch.float32)
    alone = [prefilled(prepared, [ids]) for ids in PROMPTS]
    masked = prefilled(prepared, PROMPTS)
    assert batch.starts() == [len(PROMPTS[2]) - len(ids) for ids in PROMPTS]
    tokens = torch.tensor([[3]] * len(PROMPTS))
    for _ in range(STEPS):
        expected = torch.cat([
            prepared(input_ids=tokens[row:row + 1], position_ids=own.positions(),
                     past_key_values=own.cache, use_cache=True).logits[:, -1, :]
            for row, own in enumerate(alone)])
        got = decode_step(prepared, tokens, batch.positions(), batch.starts(), batch.cache)
        if prepared.dtype == torch.float32:  # fp32 BLAS picks its kernel by row count (gemv for one)
            torch.testing.assert_close(got, expected)
        else:  # the int8/int4 kernels and bf16 matmuls compute each row alike
            assert torch.equal(got, expected)
        generic = prepared(input_ids=tokens, attention_mask=masked.mask(prepared.config._attn_implementation),
                           position_ids=masked.positions(), past_key_values=masked.cache,
                           use_cache=True).logits[:, -1, :]
        torch.testing.assert_close(generic.float(), expected.float(), atol=0.1, rtol=0.05)
        tokens = expected.argmax(-1, keepdim=True)


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


@torch.inference_mode()
def test_real_model_rows_in_a_padded_batch_equal_the_same_rows_alone(embedded_chat_model):
    """The embedded SmolLM2 as the app prepares it (int4, real attention shapes, where
    masked attention drifts by rounding): eight prompts of different lengths joined in
    one batch give, step after step, the logits each gives alone."""
    model, tokenizer = embedded_chat_model.model, embedded_chat_model.tokenizer
    assert supports_decode_step(model)
    texts = ["Say hello in Spanish.", "Give me a word that rhymes with cat. Please answer briefly and clearly.",
             "What is the opposite of hot?", "Name a fruit.", "Hi", "Why is the sky blue?",
             "Write one sentence about the sea, the wind and the long grey sky over the harbour at dawn.",
             "List three colours."]  # masked attention drifts on some rows here, AVX-512 and AVX2
    prompts = [tokenizer(text)["input_ids"] for text in texts]
    batch = prefilled(model, prompts, torch.float32)
    alone = [prefilled(model, [ids], torch.float32) for ids in prompts]
    assert len(set(batch.starts())) == len(prompts) - 1  # two prompts of 4 tokens
    tokens = torch.tensor([[ids[-1]] for ids in prompts])
    for _ in range(24):
        got = decode_step(model, tokens, batch.positions(), batch.starts(), batch.cache)
        for row, own in enumerate(alone):
            assert torch.equal(got[row], decode_step(model, tokens[row:row + 1], own.positions(), None, own.cache)[0])
        tokens = got.argmax(-1, keepdim=True)
