"""Log-probabilities of generated tokens, taken from the scores that chose them.

`LogprobRecorder` is a transformers `LogitsProcessor` that runs last in a request's
chain, after temperature, top-k, top-p and the repetition penalty: it keeps the
log-softmax of the final scores (llama.cpp calls these post-sampling probabilities)
and, when told which token was picked from them, records that token's log-probability
and the `top` most likely alternatives. No second forward pass. Under greedy decoding
with no penalty the scores are the raw logits, so a token's log-probability is the one
the next-token explorer shows for that step.

Tokens a knob removed (top-k, top-p) have probability 0: their log-probability is
reported as `FLOOR_LOGPROB` (-9999.0, OpenAI's own stand-in), never -inf, which JSON
cannot carry.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import torch
from transformers import LogitsProcessor, PreTrainedTokenizerBase
from transformers.convert_slow_tokenizer import bytes_to_unicode

MAX_TOP_LOGPROBS = 20
FLOOR_LOGPROB = -9999.0
_BYTE_OF_CHAR = {char: byte for byte, char in bytes_to_unicode().items()}


@dataclass(frozen=True)
class TopLogprob:
    token_id: int
    token: str
    logprob: float
    bytes: list[int]


@dataclass(frozen=True)
class TokenLogprob:
    """One generated token: its log-probability and the `top` best alternatives."""

    token_id: int
    token: str
    logprob: float
    bytes: list[int]
    top: tuple[TopLogprob, ...]


def token_bytes(tokenizer: PreTrainedTokenizerBase, token_id: int) -> bytes:
    """The UTF-8 bytes a token stands for (a byte-level BPE piece may hold part of a character)."""
    raw = tokenizer.convert_ids_to_tokens(int(token_id)) or ""
    if raw and all(char in _BYTE_OF_CHAR for char in raw):
        return bytes(_BYTE_OF_CHAR[char] for char in raw)
    text = tokenizer.decode([int(token_id)], skip_special_tokens=False,
                            clean_up_tokenization_spaces=False)
    return text.encode("utf-8")


def _finite(value: float) -> float:
    return value if value > FLOOR_LOGPROB else FLOOR_LOGPROB


class LogprobRecorder(LogitsProcessor):
    """Records each step's final log-probabilities; `token_chosen` pairs them with the pick.

    Thread-safe: the scheduler records on its thread, the request reads with `drain`."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, top: int = 0,
                 skip_ids: frozenset[int] = frozenset()) -> None:
        """`skip_ids`: tokens left out of the record (end-of-turn tokens the reply does not show)."""
        if not 0 <= top <= MAX_TOP_LOGPROBS:
            raise ValueError(f"top must be 0 to {MAX_TOP_LOGPROBS}")
        self.tokenizer, self.top, self.skip_ids = tokenizer, top, skip_ids
        self._lock = threading.Lock()
        self._pending: torch.Tensor | None = None
        self._entries: list[TokenLogprob] = []
        self._drained = 0

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        with self._lock:
            self._pending = scores[0].detach().float().log_softmax(-1).cpu()
        return scores

    def token_chosen(self, token_id: int) -> None:
        """The token picked from the scores recorded last."""
        with self._lock:
            row, self._pending = self._pending, None
        if row is None or int(token_id) in self.skip_ids:
            return
        entry = self._entry(row, int(token_id))
        with self._lock:
            self._entries.append(entry)

    def _entry(self, row: torch.Tensor, token_id: int) -> TokenLogprob:
        top: tuple[TopLogprob, ...] = ()
        if self.top:
            values, ids = torch.topk(row, self.top)
            top = tuple(self._top(int(i), float(v)) for v, i in zip(values, ids))
        chosen = self._top(token_id, float(row[token_id]))
        return TokenLogprob(token_id, chosen.token, chosen.logprob, chosen.bytes, top)

    def _top(self, token_id: int, logprob: float) -> TopLogprob:
        raw = token_bytes(self.tokenizer, token_id)
        return TopLogprob(token_id, raw.decode("utf-8", "replace"), _finite(logprob), list(raw))

    def drain(self) -> list[TokenLogprob]:
        """Entries recorded since the last call."""
        with self._lock:
            new = self._entries[self._drained:]
            self._drained = len(self._entries)
        return new

    @property
    def entries(self) -> list[TokenLogprob]:
        with self._lock:
            return list(self._entries)
