"""Request-scoped logits processors (constrained decoding, log-probability recording).

A request may bring its own transformers `LogitsProcessor`s in
`GenerationParams.logits_processors`. They join the chain the batch scheduler runs
for that sequence (modules/engine/sampling.py): constraints first (so top-k and top-p
choose among allowed tokens only), then the sampling knobs, then observers (processors
with `token_chosen`, like `LogprobRecorder`), which see the final scores and then hear
which token was picked.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass

from transformers import LogitsProcessor, LogitsProcessorList

from modules.engine.sampling import Sampling


def is_observer(processor: LogitsProcessor) -> bool:
    return callable(getattr(processor, "token_chosen", None))


@dataclass(frozen=True)
class RequestSampling(Sampling):
    """`Sampling` with the request's own processors around the knobs."""

    extra: tuple[LogitsProcessor, ...] = ()

    def processors(self) -> LogitsProcessorList:
        chain = LogitsProcessorList(p for p in self.extra if not is_observer(p))
        chain.extend(super().processors())
        return chain

    def observers(self) -> LogitsProcessorList:
        return LogitsProcessorList(p for p in self.extra if is_observer(p))


def with_request_processors(sampling: Sampling, processors: Iterable[LogitsProcessor]) -> Sampling:
    processors = tuple(processors)
    if not processors:
        return sampling
    return RequestSampling(**asdict(sampling), extra=processors)


def tell_token_chosen(processors: Iterable[LogitsProcessor], token_id: int) -> None:
    for processor in processors:
        if is_observer(processor):
            processor.token_chosen(token_id)
