"""How likely is this exact continuation? Chain-rule probability, token by token.

The same per-token scores give the surprise of any pasted text. The text is read
in chunks through the KV cache, so a long text never holds more than one chunk's
logits at once.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch

from modules.engine.model_cache import LoadedModel
from modules.errors import InvalidInputError
from modules.messages import message
from modules.tasks import next_token as nt


@dataclass(frozen=True)
class TokenScore:
    id: int
    token: str
    probability: float  # p(token | everything before it)
    rank: int  # 1 = what the model found most likely there
    surprise_bits: float  # -log2 p


@dataclass(frozen=True)
class ContinuationScore:
    tokens: list[TokenScore]
    log_probability: float  # natural log of the product of the tokens' probabilities
    probability: float
    surprise_bits: float  # of the whole continuation
    perplexity: float

    def as_dict(self) -> dict:
        return asdict(self)


def continuation_ids(loaded: LoadedModel, continuation: str | Sequence[str]) -> list[int]:
    """Token ids of a continuation; a list of pieces is tokenized piece by piece (' Par' + 'is')."""
    pieces = [continuation] if isinstance(continuation, str) else list(continuation)
    if not pieces or not all(isinstance(piece, str) for piece in pieces) or not "".join(pieces):
        raise InvalidInputError(message("explorer.type_a_continuation"))
    ids: list[int] = []
    for piece in pieces:
        ids += loaded.tokenizer(piece, add_special_tokens=False)["input_ids"]
    return ids


@torch.inference_mode()
def score_tokens(
    loaded: LoadedModel, ids: Sequence[int], first: int, chunk: int = nt.PREFILL_CHUNK
) -> list[TokenScore]:
    """Probability and rank of ids[first:], each given the tokens before it."""
    ids = [int(i) for i in ids]
    scores: list[TokenScore] = []
    past = None
    for start in range(0, len(ids) - 1, chunk):
        piece = ids[start : start + chunk]
        out = loaded.model(input_ids=torch.tensor([piece], device=loaded.device), past_key_values=past, use_cache=True)
        past = out.past_key_values
        for offset, row in enumerate(out.logits[0].float()):
            target_index = start + offset + 1
            if target_index < first or target_index >= len(ids):
                continue
            target = ids[target_index]
            logprob = float(row.log_softmax(-1)[target])
            scores.append(TokenScore(target, nt.token_label(loaded.tokenizer, target), math.exp(logprob),
                                     nt.token_rank(row, target), -logprob / nt.LN2))
    return scores


def _summary(tokens: list[TokenScore]) -> ContinuationScore:
    log_probability = sum(math.log(max(t.probability, 1e-300)) for t in tokens)
    return ContinuationScore(tokens, log_probability, math.exp(log_probability),
                             -log_probability / nt.LN2, math.exp(-log_probability / len(tokens)))


def score_continuation(
    loaded: LoadedModel, prompt_ids: Sequence[int], continuation: str | Sequence[str],
    max_input_tokens: int | None = None,
) -> ContinuationScore:
    """p(continuation | prompt) = the product of each token's probability given all before it."""
    added = continuation_ids(loaded, continuation)
    window = nt.context_window(loaded, max_input_tokens)
    if len(prompt_ids) + len(added) > window:
        raise InvalidInputError(message("explorer.prompt_and_continuation_too_long",
                                        count=len(prompt_ids) + len(added), model=loaded.name, window=window))
    return _summary(score_tokens(loaded, [*prompt_ids, *added], first=len(prompt_ids)))


def text_surprise(loaded: LoadedModel, text: str, max_input_tokens: int | None = None) -> ContinuationScore:
    """Per-token surprise of a pasted text: every token after the first, given those before it."""
    ids = nt.encode_prompt(loaded, text, max_input_tokens=max_input_tokens)
    if len(ids) < 2:
        raise InvalidInputError(message("explorer.paste_two_tokens"))
    return _summary(score_tokens(loaded, ids, first=1))
