"""What a chat request asks for, and what a reply reports: plain values, checked once.

`GenerationParams()` holds the one set of defaults. /v1 uses them as they are
(repetition penalty 1.0, i.e. off, as in OpenAI's API); the chat tab starts from
the same values except for the repetition penalty, whose preset is
`CHAT_TAB_REPETITION_PENALTY` (small models loop without it).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from modules.errors import InvalidParameterError
from modules.tasks.validation import number_in_range, whole_number

FINISH_STOP, FINISH_LENGTH, FINISH_CANCELLED = "stop", "length", "cancelled"
MAX_STOP_STRINGS = 4
MAX_SEED = 2**32 - 1
# The chat tab's preset: a mild penalty that keeps small models from repeating a line.
CHAT_TAB_REPETITION_PENALTY = 1.1
# The chat tab's seed box cannot be blank (Gradio makes it 0), so this means "random".
RANDOM_SEED = -1


@dataclass(frozen=True)
class GenerationParams:
    """How to sample a reply. `validated` checks ranges before any model work."""

    max_new_tokens: int = 256
    temperature: float = 0.7
    top_p: float = 0.9
    top_k: int = 50
    repetition_penalty: float = 1.0
    do_sample: bool = True
    seed: int | None = None
    stop: tuple[str, ...] = ()
    # Chat-template switches: None leaves the template's default (Qwen3, SmolLM3 read it).
    enable_thinking: bool | None = None
    # Extend the last (assistant) message instead of starting a new reply.
    continue_final_message: bool = False
    # Record this many top alternatives per reply token (0: none), for branching.
    alternatives: int = 0
    # Yield a text-less ChatChunk with `ahead` set while the request waits for a place in
    # the model's batch (the page shows "N ahead of you"; /v1 streams leave it off).
    report_waiting: bool = False
    # Request-scoped transformers LogitsProcessors (constraints, logprob recorders): see
    # processors.py. Local backend only; a remote server ignores them.
    logits_processors: tuple[Any, ...] = field(default=(), compare=False, repr=False)

    def validated(self, max_new_tokens_limit: int) -> GenerationParams:
        """A clean copy (ints as ints, stop as a tuple), or InvalidParameterError naming the field."""
        stop = (self.stop,) if isinstance(self.stop, str) else tuple(self.stop or ())
        if len(stop) > MAX_STOP_STRINGS or not all(isinstance(s, str) and s for s in stop):
            raise InvalidParameterError(
                "stop", f"stop must be at most {MAX_STOP_STRINGS} non-empty strings."
            )
        return replace(
            self,
            max_new_tokens=whole_number("max_new_tokens", self.max_new_tokens, 1, max_new_tokens_limit),
            temperature=number_in_range("temperature", self.temperature, 0.0, 2.0),
            top_p=number_in_range("top_p", self.top_p, 0.0, 1.0, low_open=True),
            top_k=whole_number("top_k", self.top_k, 0, 1000),
            repetition_penalty=number_in_range("repetition_penalty", self.repetition_penalty, 0.5, 2.0),
            do_sample=bool(self.do_sample),
            seed=None if self.seed is None else whole_number("seed", self.seed, 0, MAX_SEED),
            stop=stop,
            alternatives=whole_number("alternatives", self.alternatives, 0, 20),
        )

    @property
    def template_options(self) -> dict:
        """Keyword arguments for apply_chat_template beyond the messages."""
        options = {"continue_final_message": self.continue_final_message}
        if self.enable_thinking is not None:
            options["enable_thinking"] = self.enable_thinking
        return options

    @property
    def samples(self) -> bool:
        """Temperature 0 means greedy, as in the OpenAI API."""
        return self.do_sample and self.temperature > 0


def params_from_settings(
    max_new_tokens: float, temperature: float, top_p: float, top_k: float,
    repetition_penalty: float, do_sample: bool, seed: float | str | None,
    max_new_tokens_limit: int,
) -> GenerationParams:
    """Checked parameters from the chat tab's controls (a blank or -1 seed means random)."""
    random = seed is None or seed == "" or seed == RANDOM_SEED
    return GenerationParams(
        max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, top_k=top_k,
        repetition_penalty=repetition_penalty, do_sample=bool(do_sample),
        seed=None if random else seed,
    ).validated(max_new_tokens_limit)


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    time_to_first_token_s: float | None
    tokens_per_second: float | None
    cached_tokens: int = 0  # prompt tokens not read again: their keys and values were cached


@dataclass(frozen=True)
class ChatChunk:
    text: str  # the whole reply so far
    delta: str  # text new in this chunk
    finish_reason: str | None = None  # None while streaming; then "stop" | "length" | "cancelled"
    usage: Usage | None = None  # set on the final chunk
    notice: str | None = None  # set on every chunk when turns were dropped to fit
    tokens: tuple = ()  # on the final chunk when params.alternatives > 0: see branching.py
    ahead: int | None = None  # set while waiting in the batch's line (params.report_waiting)


def format_usage(usage: Usage, finish_reason: str | None) -> str:
    """One line, like an inference server's stream report."""
    parts = [
        f"prompt {usage.prompt_tokens}",
        f"completion {usage.completion_tokens}",
        f"total {usage.total_tokens} tokens",
    ]
    if usage.time_to_first_token_s is not None:
        parts.append(f"first token {usage.time_to_first_token_s:.2f} s")
    if usage.tokens_per_second is not None:
        parts.append(f"{usage.tokens_per_second:.1f} tokens/s")
    parts.append(f"finish: {finish_reason or 'unknown'}")
    return " · ".join(parts)
