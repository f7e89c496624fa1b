"""Picking each generated token: greedy, or sampled as transformers' warpers define it.

`Sampling` holds the knobs; `TokenPicker` applies them to one sequence's scores at
each step. The repetition penalty and the temperature run as transformers' own
processors over the whole vocabulary (cheap: one pass each). Top-k and top-p follow
`TopKLogitsWarper` then `TopPLogitsWarper` exactly, but on the top-k survivors only:
`TopPLogitsWarper` sorts the whole vocabulary (49,152 scores for SmolLM2) and
`torch.multinomial` draws one exponential per vocabulary entry, about 5 ms a token
on a 2-core CPU, paid for every sequence in a batch. Here the survivors are sorted,
and the draw is an exponential race among the kept tokens only, which picks token i
with probability p_i, as `multinomial` does.

So a seed gives the same text every time, alone or in any batch, but not the same
random stream as `generate(do_sample=True)`. Top-p without top-k still sorts the
whole vocabulary (the nucleus may be any size).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import LogitsProcessorList
from transformers.generation.logits_process import (
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
)


@dataclass(frozen=True)
class Sampling:
    """How to pick each token: greedy unless `do_sample`."""

    do_sample: bool = False
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    seed: int | None = None

    def processors(self) -> LogitsProcessorList:
        """The whole-vocabulary processors, in `generate`'s order: penalty, then temperature."""
        chain = LogitsProcessorList()
        if self.repetition_penalty != 1.0:
            chain.append(RepetitionPenaltyLogitsProcessor(self.repetition_penalty))
        if self.do_sample and self.temperature != 1.0:
            chain.append(TemperatureLogitsWarper(self.temperature))
        return chain

    def observers(self) -> LogitsProcessorList:
        """Processors that see the final scores (top-k and top-p applied) before the pick."""
        return LogitsProcessorList()

    def generator(self) -> torch.Generator | None:
        if not self.do_sample:
            return None
        generator = torch.Generator()
        if self.seed is None:
            generator.seed()
        else:
            generator.manual_seed(self.seed)
        return generator


class TokenPicker:
    """One sequence's token choice: its processors, its random generator."""

    def __init__(self, sampling: Sampling) -> None:
        self.sampling = sampling
        self.processors = sampling.processors()
        self.observers = sampling.observers()
        self.generator = sampling.generator()

    def pick(self, history: list[int], scores: torch.Tensor) -> int:
        """The next token after `history` (prompt and reply so far), from a [1, vocab] row."""
        if self.processors or self.observers:
            ids = torch.tensor([history], device=scores.device)
        if self.processors:
            scores = self.processors(ids, scores)
        if self.generator is None:
            if self.observers:
                self.observers(ids, scores)
            return int(scores.argmax(-1))
        kept, kept_scores = nucleus(scores[0], self.sampling.top_k, self.sampling.top_p)
        if self.observers:
            final = torch.full_like(scores, -float("inf"))
            final[0, kept] = kept_scores
            self.observers(ids, final)
        return int(kept[exponential_race(torch.softmax(kept_scores, -1), self.generator)])


def nucleus(scores: torch.Tensor, top_k: int, top_p: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The token ids `TopKLogitsWarper(top_k)` then `TopPLogitsWarper(top_p)` keep, and their scores.

    Ties with the k-th score all survive, as in `TopKLogitsWarper`; tokens already at
    -inf (a constraint forbade them) never do. Survivors are sorted stably by score
    (ties in id order), so the cut is deterministic.
    """
    if 0 < top_k < scores.numel():
        kth = torch.topk(scores, top_k).values[-1]
        kept = torch.nonzero(scores >= kth if kth > -torch.inf else scores > kth).squeeze(1)
    else:
        kept = torch.nonzero(scores > -torch.inf).squeeze(1)
    if not len(kept):
        raise ValueError("every token's score is -inf: nothing can be sampled")
    kept_scores = scores[kept]
    if top_p >= 1.0:
        return kept, kept_scores
    ascending, order = torch.sort(kept_scores, stable=True)
    cumulative = ascending.softmax(-1).cumsum(-1)
    removed = cumulative <= 1 - top_p
    removed[-1] = False  # keep at least one token
    order = order[~removed]
    return kept[order], kept_scores[order]


def exponential_race(probabilities: torch.Tensor, generator: torch.Generator) -> int:
    """Index i with probability p_i: argmax p_i / E_i with E_i ~ Exp(1), multinomial's own method."""
    races = torch.empty_like(probabilities).exponential_(1, generator=generator)
    return int(torch.argmax(probabilities / races))
