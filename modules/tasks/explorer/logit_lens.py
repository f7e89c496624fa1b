"""The logit lens: what each layer would predict if the model stopped there.

Every layer's hidden state at the last position goes through the model's own final
norm and LM head. One extra forward pass, made only when the view is open. The
hidden states come from transformers' `output_hidden_states`; models whose decoder
layers were swapped for fused CPU kernels (modules/engine/kernels) are not known to
transformers' output recorder, so for them the same states are read with forward
hooks on the decoder layers, while the model's lock keeps other requests out.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch
from torch import nn

from modules.engine.compute import run_model_work
from modules.engine.model_cache import LoadedModel
from modules.errors import InvalidInputError
from modules.messages import message
from modules.tasks import next_token as nt
from modules.tasks.validation import is_whole

MAX_LENS_CANDIDATES = 20


@dataclass(frozen=True)
class LensLayer:
    layer: int  # 0 = the token embeddings, then one per decoder layer
    top_ids: list[int]
    top_tokens: list[str]
    top_probabilities: list[float]
    chosen_rank: int  # of the finally chosen token at this layer (1 = top)
    chosen_probability: float


@dataclass(frozen=True)
class LogitLens:
    chosen_id: int
    chosen_token: str
    candidate_ids: list[int]  # the final layer's top tokens: the heatmap's columns
    candidate_tokens: list[str]
    probabilities: list[list[float]]  # [layer][candidate]
    layers: list[LensLayer]

    def as_dict(self) -> dict:
        return asdict(self)


def decoder_parts(model: nn.Module) -> tuple[Sequence[nn.Module], nn.Module, nn.Module]:
    """(decoder layers, final norm, LM head) of a causal LM, or a clear error."""
    base = model.base_model
    layers = next((getattr(base, name) for name in ("layers", "h", "blocks") if hasattr(base, name)), None)
    norm = next((getattr(base, name) for name in ("norm", "final_layernorm", "ln_f") if hasattr(base, name)), None)
    head = model.get_output_embeddings()
    if layers is None or norm is None or head is None:
        raise InvalidInputError(message("explorer.lens_no_layers", model=type(model).__name__))
    return layers, norm, head


def _hooked_hidden_states(model: nn.Module, layers: Sequence[nn.Module], input_ids: torch.Tensor) -> list:
    """The input of the first layer and every layer's output, read by forward hooks."""
    states: list[torch.Tensor] = []

    def keep_input(_module, args, kwargs):
        states.append(args[0] if args else kwargs["hidden_states"])

    def keep_output(_module, _args, output):
        states.append(output[0] if isinstance(output, tuple) else output)

    handles = [layers[0].register_forward_pre_hook(keep_input, with_kwargs=True)]
    handles += [layer.register_forward_hook(keep_output) for layer in layers]
    try:
        model(input_ids=input_ids, use_cache=False)
    finally:
        for handle in handles:
            handle.remove()
    return states


def layer_logits(loaded: LoadedModel, ids: Sequence[int]) -> torch.Tensor:
    """[layers + 1, vocab] float32 logits at the last position, decoded from each layer."""
    input_ids = torch.tensor([list(ids)], dtype=torch.long, device=loaded.device)
    return run_model_work(lambda: _layer_logits(loaded.model, input_ids), loaded.lock)


def _layer_logits(model: nn.Module, input_ids: torch.Tensor) -> torch.Tensor:
    layers, norm, head = decoder_parts(model)
    out = model(input_ids=input_ids, use_cache=False, output_hidden_states=True)
    states = list(out.hidden_states or ())
    last_is_normed = bool(states)  # transformers ties the last entry to the normed output
    if len(states) != len(layers) + 1:
        states, last_is_normed = _hooked_hidden_states(model, layers, input_ids), False
    last = torch.stack([state[0, -1] for state in states])
    normed = norm(last)
    if last_is_normed:
        normed[-1] = last[-1]
    return head(normed).float().cpu()


def logit_lens(
    loaded: LoadedModel, ids: Sequence[int], chosen_id: int | None = None, top: int = 8
) -> LogitLens:
    """Per layer: the top tokens, and the rank and probability of the chosen token.

    `chosen_id` defaults to the final layer's top token (what greedy would pick).
    """
    if not is_whole(top) or not 1 <= top <= MAX_LENS_CANDIDATES:
        raise InvalidInputError(message("explorer.lens_candidates_range", limit=MAX_LENS_CANDIDATES, value=top))
    ids = nt.check_fits(loaded, list(ids))
    logits = layer_logits(loaded, ids)
    vocab = logits.shape[-1]
    columns = torch.topk(logits[-1], int(top)).indices.tolist()
    if chosen_id is None:
        chosen_id = columns[0]
    if not is_whole(chosen_id) or not 0 <= chosen_id < vocab:
        raise InvalidInputError(message("explorer.no_such_token_id", id=chosen_id))
    chosen_id, tokenizer = int(chosen_id), loaded.tokenizer
    probabilities = logits.softmax(-1)
    layers = []
    for index, (row, probs) in enumerate(zip(logits, probabilities, strict=True)):
        best = torch.topk(row, int(top)).indices.tolist()
        layers.append(LensLayer(
            layer=index,
            top_ids=best,
            top_tokens=[nt.token_label(tokenizer, i) for i in best],
            top_probabilities=[float(probs[i]) for i in best],
            chosen_rank=nt.token_rank(row, chosen_id),
            chosen_probability=float(probs[chosen_id]),
        ))
    return LogitLens(
        chosen_id=chosen_id,
        chosen_token=nt.token_label(tokenizer, chosen_id),
        candidate_ids=columns,
        candidate_tokens=[nt.token_label(tokenizer, i) for i in columns],
        probabilities=[[float(probs[i]) for i in columns] for probs in probabilities],
        layers=layers,
    )
