"""Beam search as transformers runs it, drawn as a tree, beside greedy and sampled text.

`generate(num_beams=..., output_scores=True, return_dict_in_generate=True)` does the
search; this module only reads its returned hypotheses, their scores and
`beam_indices`: the kept paths are the returned hypotheses, and at each kept node
the best tokens that no hypothesis continued with are shown as dropped.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch

from modules.engine.compute import run_model_work
from modules.engine.model_cache import LoadedModel
from modules.errors import InvalidInputError
from modules.messages import message
from modules.tasks import next_token as nt
from modules.tasks.validation import is_number, is_whole

MAX_BEAMS = 8
MAX_BEAM_TOKENS = 32
DROPPED_PER_NODE = 2


@dataclass(frozen=True)
class BeamNode:
    index: int
    parent: int | None  # None: attached to the prompt
    step: int  # 0 = first new token
    token_id: int
    token: str
    logprob: float  # of this token given its path
    path_logprob: float  # sum along the path
    kept: bool  # on a returned hypothesis; False = a best alternative the search dropped


@dataclass(frozen=True)
class Continuation:
    text: str
    token_ids: list[int]
    score: float | None  # beam: generate's sequences_scores (length-penalised); else None


@dataclass(frozen=True)
class BeamSearch:
    beams: list[Continuation]
    nodes: list[BeamNode]
    greedy: Continuation
    sampled: Continuation
    settings: dict

    def as_dict(self) -> dict:
        return asdict(self)


def validate_beam_request(num_beams: object, length: object, length_penalty: object) -> tuple[int, int, float]:
    if not is_whole(num_beams) or not 1 <= num_beams <= MAX_BEAMS:
        raise InvalidInputError(message("explorer.beams_range", limit=MAX_BEAMS, value=num_beams))
    if not is_whole(length) or not 1 <= length <= MAX_BEAM_TOKENS:
        raise InvalidInputError(message("explorer.beam_length_range", limit=MAX_BEAM_TOKENS, value=length))
    if not is_number(length_penalty) or not -5 <= length_penalty <= 5:
        raise InvalidInputError(message("explorer.length_penalty_range", value=length_penalty))
    return int(num_beams), int(length), float(length_penalty)


def _generate(loaded: LoadedModel, input_ids: torch.Tensor, **kwargs):
    tokenizer = loaded.tokenizer
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    return loaded.model.generate(
        input_ids=input_ids, attention_mask=torch.ones_like(input_ids), pad_token_id=pad, **kwargs
    )


def _continuation(loaded: LoadedModel, ids: Sequence[int], score: float | None = None) -> Continuation:
    ids = [int(i) for i in ids]
    pad = loaded.tokenizer.pad_token_id
    if pad is not None and pad != loaded.tokenizer.eos_token_id:
        ids = [i for i in ids if i != pad]
    return Continuation(loaded.tokenizer.decode(ids, skip_special_tokens=False), ids, score)


def _tree(loaded: LoadedModel, out, prompt_length: int) -> list[BeamNode]:
    """Kept nodes from the hypotheses' paths; dropped ones from the best unused tokens."""
    label = lambda token_id: nt.token_label(loaded.tokenizer, token_id)  # noqa: E731
    nodes: list[BeamNode] = []
    by_path: dict[tuple[int, ...], int] = {}
    expanded: dict[int | None, tuple[int, int, float]] = {}  # parent -> (step, beam row, its path score)
    for sequence, rows in zip(out.sequences.tolist(), out.beam_indices.tolist(), strict=True):
        parent, path, total = None, (), 0.0
        for step, row in enumerate(rows[: len(out.scores)]):
            if row < 0 or prompt_length + step >= len(sequence):
                break
            token_id = sequence[prompt_length + step]
            path += (token_id,)
            logprob = float(out.scores[step][row, token_id])
            expanded.setdefault(parent, (step, row, total))
            total += logprob
            if path not in by_path:
                by_path[path] = len(nodes)
                nodes.append(BeamNode(len(nodes), parent, step, token_id, label(token_id), logprob, total, True))
            parent = by_path[path]
    for parent, (step, row, base) in expanded.items():
        kept = {node.token_id for node in nodes if node.parent == parent and node.kept}
        ranked = torch.argsort(out.scores[step][row], descending=True).tolist()
        for token_id in [t for t in ranked[: len(kept) + DROPPED_PER_NODE] if t not in kept][:DROPPED_PER_NODE]:
            logprob = float(out.scores[step][row, token_id])
            nodes.append(BeamNode(len(nodes), parent, step, token_id, label(token_id), logprob, base + logprob, False))
    return nodes


@torch.inference_mode()
def beam_search(
    loaded: LoadedModel,
    ids: Sequence[int],
    num_beams: int = 4,
    length: int = 8,
    length_penalty: float = 1.0,
    settings: nt.SamplingSettings = nt.SamplingSettings(),
    seed: int = 0,
) -> BeamSearch:
    """transformers' beam search over `ids`, with greedy and one seeded sample of the same length."""
    num_beams, length, length_penalty = validate_beam_request(num_beams, length, length_penalty)
    settings = settings.validated()
    if not is_whole(seed):
        raise InvalidInputError(message("explorer.seed_whole", value=seed))
    ids = nt.check_fits(loaded, list(ids))
    room = nt.context_window(loaded) - len(ids)
    if room < length:
        raise InvalidInputError(message("explorer.only_room_for", room=max(room, 0)))
    input_ids = torch.tensor([ids], dtype=torch.long, device=loaded.device)
    common = {"max_new_tokens": length, "min_new_tokens": 0}

    def search():
        beams = _generate(
            loaded, input_ids, num_beams=num_beams, num_return_sequences=num_beams, do_sample=False,
            length_penalty=length_penalty, early_stopping=True, output_scores=True,
            return_dict_in_generate=True, **common,
        )
        greedy = _generate(loaded, input_ids, do_sample=False, num_beams=1, **common)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(seed))
            sampled = _generate(
                loaded, input_ids, do_sample=True, num_beams=1, temperature=settings.temperature,
                top_k=settings.top_k or None, top_p=settings.top_p, min_p=settings.min_p or None, **common,
            )
        return beams, greedy, sampled

    beams, greedy, sampled = run_model_work(search, loaded.lock)
    prompt_length = len(ids)
    scores = beams.sequences_scores.tolist() if beams.sequences_scores is not None else [None] * num_beams
    return BeamSearch(
        beams=[_continuation(loaded, seq[prompt_length:], score)
               for seq, score in zip(beams.sequences.tolist(), scores, strict=True)],
        nodes=_tree(loaded, beams, prompt_length),
        greedy=_continuation(loaded, greedy[0, prompt_length:].tolist()),
        sampled=_continuation(loaded, sampled[0, prompt_length:].tolist()),
        settings={"num_beams": num_beams, "length": length, "length_penalty": length_penalty, "seed": int(seed)},
    )
