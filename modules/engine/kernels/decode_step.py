"""One decode step of a fused model, without transformers' model-level machinery.

A step of the batch scheduler feeds one token per row. Through `model(...)` that step
also builds a causal mask, output dataclasses and per-layer keyword plumbing (about
1.5 ms of a ~22 ms SmolLM2-135M step on a 2-core CPU, for nothing a one-token step
needs). `decode_step` runs the same modules in the same order (embedding, rotary, each
`FusedLlamaLayer.decode_one`, final norm, LM head), so its logits are bit-identical to
`model(input_ids=tokens, position_ids=..., past_key_values=cache)`.

In a left-padded batch each row attends over its own cache columns, apart from the
others, so each row's logits are bit-identical to that row's step alone (a masked
attention over the padded buffer is equal only up to rounding). tests/test_decode_step.py
checks both. `one_token_step` serves a single sequence's step with any cache (the
explorer's stepping).

Where the native step (modules/engine/kernels/native_step.py) is built, `decode_step(...,
native=True)` runs all layers in one C++ call instead: the same model up to float
rounding, not bit for bit, and still each row exactly as alone.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import DynamicCache

from modules.engine.kernels import native_step
from modules.engine.kernels.fused_llama import FusedLlamaLayer, project, signed_sin
from modules.engine.kernels.native_step import native_decode_step
from modules.engine.kv_cache import growing_cache


def supports_decode_step(model: nn.Module) -> bool:
    """Is every decoder layer fused (and so `decode_step` computes what `model` does)?"""
    inner = getattr(model, "model", None)
    layers = getattr(inner, "layers", None)
    return (bool(layers) and all(isinstance(layer, FusedLlamaLayer) for layer in layers)
            and all(hasattr(inner, name) for name in ("embed_tokens", "rotary_emb", "norm"))
            and hasattr(model, "lm_head"))


def decode_step(model: nn.Module, tokens: torch.Tensor, positions: torch.Tensor,
                starts: list[int] | None, cache, native: bool = False) -> torch.Tensor:
    """Logits [rows, vocab] for `tokens` [rows, 1] at `positions` [rows, 1]; `cache` grows by
    one. `starts`: each row's first real cache column in a left-padded batch (None: no padding).
    `native`: through native_step.cpp where it applies (equal up to rounding, not bit for bit)."""
    if native:
        logits = native_decode_step(model, tokens, positions, starts, cache)
        if logits is not None:
            return logits
    inner = model.model
    hidden = inner.embed_tokens(tokens)
    cos, sin = inner.rotary_emb(hidden, position_ids=positions)
    sin = signed_sin(sin, sin.shape[-1] // 2).unsqueeze(2)
    cos = cos.unsqueeze(2)
    for layer in inner.layers:
        hidden = layer.decode_one(hidden, cos, sin, cache, starts=starts)
    hidden = inner.norm(hidden)
    return project(model.lm_head, hidden.view(hidden.shape[0], -1))


def step_cache(model: nn.Module) -> DynamicCache | None:
    """A new cache for one sequence that `one_token_step` will step (the explorer's): float32
    growing buffers where the native step runs (it reads them as they are; twice the
    memory of the model's dtype), else None (the model makes its own)."""
    return growing_cache(model.config, torch.float32) if native_step.ready(model) else None


def one_token_step(model: nn.Module, token: int, cache) -> tuple[torch.Tensor, object]:
    """(logits [1, vocab], the cache) after feeding `token` to a model holding `cache`: the
    native step where it applies (a `step_cache`), else the lean step where the model is
    fused and the cache holds tokens, else `model(...)`."""
    tokens = torch.tensor([[token]], dtype=torch.long, device=model.device)
    if cache is None or not supports_decode_step(model):
        out = model(input_ids=tokens, past_key_values=cache, use_cache=True)
        return out.logits[:, -1, :], out.past_key_values
    positions = torch.tensor([[cache.get_seq_length()]], device=model.device)
    return decode_step(model, tokens, positions, None, cache, native=True), cache
