"""Attention of the next position: how much the last token looks at each earlier one.

Transformers' layers: one extra forward pass with `output_attentions=True` under eager
attention, switched on for that pass only and back after it. Fused CPU layers: the text
but its last token is read through the cache, then the last token alone, whose one-row
attention the fused kernel computes explicitly and hands over. Either way the model's
lock keeps other requests out.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch

from modules.engine.compute import run_model_work
from modules.engine.kernels.fused_llama import fused_layers, recording_attention
from modules.engine.model_cache import LoadedModel
from modules.errors import InvalidInputError
from modules.messages import Message, message
from modules.tasks import next_token as nt
from modules.tasks.validation import is_whole


@dataclass(frozen=True)
class AttentionMap:
    tokens: list[str]  # the text's tokens, whitespace visible
    weights: list[list[float]]  # [layer][token]: attention of the last position, summing to 1
    layers: int
    heads: int
    head: int | None  # None: averaged over heads

    def as_dict(self) -> dict:
        return asdict(self)


def no_attentions_message(loaded: LoadedModel) -> Message:
    return message("explorer.no_attention_weights", model=loaded.name)


def attention_weights(loaded: LoadedModel, ids: Sequence[int]) -> torch.Tensor:
    """[layers, heads, tokens] attention of the last position."""
    if fused_layers(loaded.model):
        return run_model_work(lambda: _fused_attention_weights(loaded, list(ids)), loaded.lock)
    return run_model_work(lambda: _eager_attention_weights(loaded, ids), loaded.lock)


def _fused_attention_weights(loaded: LoadedModel, ids: list[int]) -> torch.Tensor:
    past = nt.prefill(loaded, ids[:-1]).past_key_values if len(ids) > 1 else None
    last = torch.tensor([ids[-1:]], dtype=torch.long, device=loaded.device)
    with recording_attention(loaded.model) as sink:
        loaded.model(input_ids=last, past_key_values=past, use_cache=True)
    if not sink:
        raise InvalidInputError(no_attentions_message(loaded))
    return torch.stack([weights[0].float().cpu() for weights in sink])


def _eager_attention_weights(loaded: LoadedModel, ids: Sequence[int]) -> torch.Tensor:
    model = loaded.model
    input_ids = torch.tensor([list(ids)], dtype=torch.long, device=loaded.device)
    previous = model.config._attn_implementation
    try:
        model.set_attn_implementation("eager")
    except (ValueError, ImportError) as error:
        raise InvalidInputError(message("explorer.no_eager_attention", model=loaded.name, problem=error)) from error
    try:
        out = model(input_ids=input_ids, use_cache=False, output_attentions=True)
    finally:
        model.set_attn_implementation(previous)
    attentions = [a for a in (out.attentions or ()) if a is not None]
    if not attentions:
        raise InvalidInputError(no_attentions_message(loaded))
    return torch.stack([a[0, :, -1, :].float().cpu() for a in attentions])


def attention(loaded: LoadedModel, ids: Sequence[int], head: int | None = None) -> AttentionMap:
    """Per layer, the last position's attention over the text: one head, or the heads' mean."""
    ids = nt.check_fits(loaded, list(ids))
    weights = attention_weights(loaded, ids)
    layers, heads, _ = weights.shape
    if head is not None and (not is_whole(head) or not 0 <= head < heads):
        raise InvalidInputError(message("explorer.head_range", last=heads - 1, value=head))
    picked = weights.mean(1) if head is None else weights[:, int(head)]
    return AttentionMap(
        tokens=[nt.token_label(loaded.tokenizer, i) for i in ids],
        weights=picked.tolist(),
        layers=layers,
        heads=heads,
        head=None if head is None else int(head),
    )
