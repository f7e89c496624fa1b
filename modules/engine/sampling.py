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

A batch step picks for all its rows with `pick_rows`: the same tokens as each row's
`TokenPicker.pick` (the same random draws too), with the whole-vocabulary passes
(temperature, top-k, the alternatives' normaliser) done once for every row instead of
once per row: about 0.9 ms a row on a 2-core CPU, a tenth of a four-row step. Greedy
rows share one argmax. On the CPU the argmax and top-k passes run through the native
step's loops once its extension is loaded (`argmax_ids`, `top_k_of`): torch's CPU argmax
and topk read one score at a time.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from transformers import LogitsProcessorList
from transformers.generation.logits_process import (
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
)

from modules.engine.kernels import native_step

History = list[int] | torch.Tensor  # a sequence's token ids so far: a list, or [1, n] ids

# `pick_rows` takes this many scores past the largest k, so that tokens tying the k-th
# score (common in bf16 logits) are in its one top-k pass too.
TIE_MARGIN = 16


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
        # The temperature is always the chain's last step: `pick_rows` applies it to all rows at once.
        last = self.processors[-1] if self.processors else None
        self.temperature = last.temperature if isinstance(last, TemperatureLogitsWarper) else None
        self.before_temperature = LogitsProcessorList(
            self.processors[:-1] if self.temperature is not None else self.processors)

    def pick(self, history: History, scores: torch.Tensor) -> int:
        """The next token after `history` (prompt and reply so far), from a [1, vocab] row."""
        if self.processors or self.observers:
            ids = history_ids(history, scores.device)
        if self.processors:
            scores = run_chain(self.processors, ids, scores)
        if self.generator is None:
            if self.observers:
                run_chain(self.observers, ids, scores)
            return argmax_ids(scores)[0]
        kept, kept_scores = nucleus(scores[0], self.sampling.top_k, self.sampling.top_p)
        if self.observers:
            final = torch.full_like(scores, -float("inf"))
            final[0, kept] = kept_scores
            run_chain(self.observers, ids, final)
        return int(kept[exponential_race(torch.softmax(kept_scores, -1), self.generator)])


def pick_rows(pickers: Sequence[TokenPicker], history_of: Callable[[int], History],
              scores: torch.Tensor) -> list[int | Exception]:
    """For each row r of `scores` [rows, vocab], what `pickers[r].pick(history_of(r), row r)`
    returns (an exception where it raises), drawing the same random numbers.

    Sampled rows without observers share the whole-vocabulary passes: one division for
    their temperatures and one top-k for all their top-k sets. A row whose k-th score
    ties the next one, or whose set reaches a forbidden token, takes `nucleus` alone.
    """
    picks: list = [None] * len(pickers)
    greedy = [row for row, picker in enumerate(pickers)
              if picker.generator is None and not picker.processors and not picker.observers]
    for row, token in zip(greedy, argmax_ids(_rows_of(scores, greedy)) if greedy else []):
        picks[row] = token
    shared = [row for row, picker in enumerate(pickers) if picker.generator is not None
              and not picker.observers and 0 < picker.sampling.top_k < scores.shape[-1]]
    for row in sorted(set(range(len(pickers))) - set(shared) - set(greedy)):
        picks[row] = _pick_alone(pickers[row], history_of, row, scores[row:row + 1])
    if not shared:
        return picks
    rows = _rows_of(scores, shared).clone()  # the processors below write into it
    usable = []
    for place, row in enumerate(shared):
        picker = pickers[row]
        try:
            if picker.before_temperature:
                ids = history_ids(history_of(row), scores.device)
                rows[place] = run_chain(picker.before_temperature, ids, rows[place:place + 1])[0]
            usable.append(place)
        except Exception as error:  # e.g. a processor that fails: only this row ends
            picks[row] = error
    temperatures = [pickers[shared[place]].temperature or 1.0 for place in range(len(shared))]
    if any(t != 1.0 for t in temperatures):  # TemperatureLogitsWarper's scores / t, as scores * (1 / t)
        rows.mul_(torch.tensor(temperatures, dtype=rows.dtype, device=rows.device).reciprocal_()[:, None])
    largest_k = max(pickers[shared[place]].sampling.top_k for place in usable) if usable else 0
    top_values, top_ids = top_k_of(rows, min(largest_k + TIE_MARGIN, rows.shape[-1]))
    edges = top_values.tolist()
    for place in usable:
        picker, row = pickers[shared[place]], shared[place]
        k, values = picker.sampling.top_k, edges[place]
        end = bisect_right([-v for v in values], -values[k - 1], lo=k)  # past the k-th's ties
        try:
            if values[k - 1] == -torch.inf or end == len(values) < rows.shape[-1]:
                kept, kept_scores = nucleus(rows[place], k, picker.sampling.top_p)
            else:  # exactly `nucleus`'s top-k set (ties with the k-th included), in id order
                kept = top_ids[place, :end].sort().values
                kept, kept_scores = top_p_cut(kept, rows[place, kept], picker.sampling.top_p)
            picks[row] = int(kept[exponential_race(torch.softmax(kept_scores, -1), picker.generator)])
        except Exception as error:
            picks[row] = error
    return picks


def history_ids(history: History, device: torch.device) -> torch.Tensor:
    """`history` as the [1, n] ids processors read (a tensor is taken as it is, on `device`)."""
    if isinstance(history, torch.Tensor):
        return history.to(device)
    return torch.tensor([history], device=device)


def run_chain(chain: LogitsProcessorList, ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
    """`chain(ids, scores)`, each processor in turn, without `LogitsProcessorList.__call__`'s
    signature inspection of every processor on every call (~60 us of a ~410 us sampled pick):
    these chains never get extra arguments."""
    for processor in chain:
        scores = processor(ids, scores)
    return scores


def _pick_alone(picker: TokenPicker, history_of: Callable[[int], History], row: int,
                scores: torch.Tensor) -> int | Exception:
    try:
        return picker.pick(history_of(row) if picker.processors or picker.observers else [], scores)
    except Exception as error:
        return error


def top_alternatives(scores: torch.Tensor, counts: Sequence[int]) -> list[list[tuple[int, float]]]:
    """For each row, its `counts[row]` most likely tokens and their probabilities
    (softmax of the row), from one top-k and one normaliser for all rows."""
    wanted = [row for row, count in enumerate(counts) if count > 0]
    found: list[list[tuple[int, float]]] = [[] for _ in counts]
    if not wanted:
        return found
    rows = _rows_of(scores, wanted)
    values, ids = top_k_of(rows, min(max(counts[row] for row in wanted), rows.shape[-1]))
    probabilities = (values - torch.logsumexp(rows, -1, keepdim=True)).exp_()
    for place, row in enumerate(wanted):
        count = counts[row]
        found[row] = list(zip(ids[place, :count].tolist(), probabilities[place, :count].tolist()))
    return found


def argmax_ids(scores: torch.Tensor) -> list[int]:
    """Each row's id of its first largest score, as `scores.argmax(-1)` gives it (SmolLM2's
    49K logits, four rows: 15 us against torch's 170 on a 2-core CPU)."""
    native = _native_loops(scores)
    if native is not None:
        ids = native.argmax_rows(scores.contiguous())
        if -1 not in ids:  # -1: a row holds a NaN, which torch ranks first
            return ids
    return scores.argmax(-1).tolist()


def top_k_of(scores: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Each row's k largest scores and their ids, largest first, as `scores.topk(k)` gives them
    (four rows of 49K logits, k = 5: 29 us against torch's 220). Natively, scores tying the
    k-th go in id order, first ones kept; torch keeps some of them."""
    native = _native_loops(scores)
    if native is not None and 0 < k <= scores.shape[-1]:
        values, ids = native.top_rows(scores.contiguous(), k)
        if values.numel():  # empty: a row holds a NaN
            return values, ids
    return scores.topk(k, dim=-1)


def _native_loops(scores: torch.Tensor):
    """native_step's extension, for float32 [rows, vocab] CPU scores once it is loaded, else None."""
    if scores.device.type != "cpu" or scores.dtype != torch.float32 or scores.dim() != 2:
        return None
    module = native_step.builder.module()
    return module if hasattr(module, "top_rows") else None


def _rows_of(scores: torch.Tensor, rows: list[int]) -> torch.Tensor:
    """scores[rows], without a copy when that is every row."""
    if len(rows) == scores.shape[0]:
        return scores
    return scores.index_select(0, torch.tensor(rows, device=scores.device))


def nucleus(scores: torch.Tensor, top_k: int, top_p: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The token ids `TopKLogitsWarper(top_k)` then `TopPLogitsWarper(top_p)` keep, and their scores.

    Ties with the k-th score all survive, as in `TopKLogitsWarper`; tokens already at
    -inf (a constraint forbade them) never do. Survivors are sorted stably by score
    (ties in id order), so the cut is deterministic.
    """
    if 0 < top_k < scores.numel():
        kth = top_k_of(scores[None], top_k)[0][0, -1]
        kept = torch.nonzero(scores >= kth if kth > -torch.inf else scores > kth).squeeze(1)
    else:
        kept = torch.nonzero(scores > -torch.inf).squeeze(1)
    if not len(kept):
        raise ValueError("every token's score is -inf: nothing can be sampled")
    return top_p_cut(kept, scores[kept], top_p)


def top_p_cut(kept: torch.Tensor, kept_scores: torch.Tensor,
              top_p: float) -> tuple[torch.Tensor, torch.Tensor]:
    """`TopPLogitsWarper(top_p)` over the kept tokens (ids in ascending order) and their scores."""
    if top_p >= 1.0:
        return kept, kept_scores
    ascending, order = torch.sort(kept_scores, stable=True)
    cumulative = ascending.softmax(-1).cumsum(-1)
    removed = cumulative <= 1 - top_p
    removed[-1] = False  # keep at least one token
    order = order[~removed]
    return kept[order], kept_scores[order]


def exponential_race(probabilities: torch.Tensor, generator: torch.Generator) -> int:
    """Index i with probability p_i: argmax p_i / E_i with E_i ~ Exp(1), multinomial's own method.

    The draw happens where `generator` lives (the CPU: `Sampling.generator`), so a seed gives
    the same random numbers on any device; on a GPU the (few) kept probabilities come over."""
    if probabilities.device != generator.device:
        probabilities = probabilities.to(generator.device)
    races = torch.empty_like(probabilities).exponential_(1, generator=generator)
    return int(torch.argmax(probabilities / races))
