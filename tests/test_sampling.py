"""The token sampler: the same tokens as transformers' top-k and top-p warpers keep,
picked with their probabilities, repeatable under a seed."""

from __future__ import annotations

import pytest
import torch
from transformers import LogitsProcessorList, TopKLogitsWarper, TopPLogitsWarper

from modules.engine.sampling import Sampling, TokenPicker, exponential_race, nucleus


def warpers_keep(scores: torch.Tensor, top_k: int, top_p: float) -> set[int]:
    chain = LogitsProcessorList()
    if top_k:
        chain.append(TopKLogitsWarper(top_k))
    if top_p < 1.0:
        chain.append(TopPLogitsWarper(top_p))
    warped = chain(torch.zeros(1, 1, dtype=torch.long), scores[None].clone())[0]
    return set(torch.nonzero(warped > -torch.inf).squeeze(1).tolist())


@pytest.mark.parametrize("top_k,top_p", [(50, 0.9), (50, 1.0), (5, 0.5), (0, 0.9), (1000, 0.95), (1, 0.9)])
def test_nucleus_keeps_what_transformers_warpers_keep(top_k, top_p):
    generator = torch.Generator().manual_seed(top_k + int(100 * top_p))
    for _ in range(20):
        scores = torch.randn(5000, generator=generator) * 3  # float32: no ties
        kept, kept_scores = nucleus(scores, top_k, top_p)
        assert set(kept.tolist()) == warpers_keep(scores, top_k, top_p)
        assert torch.equal(kept_scores, scores[kept])


def test_nucleus_keeps_every_tie_with_the_kth_score_and_nothing_forbidden():
    scores = torch.tensor([5.0, 4.0, 4.0, 4.0, 1.0, -torch.inf])
    kept, _ = nucleus(scores, 2, 1.0)
    assert set(kept.tolist()) == {0, 1, 2, 3} == warpers_keep(scores, 2, 1.0)
    few = torch.tensor([2.0, -torch.inf, 1.0, -torch.inf])
    assert set(nucleus(few, 3, 1.0)[0].tolist()) == {0, 2}  # fewer allowed than k
    with pytest.raises(ValueError, match="-inf"):
        nucleus(torch.full((4,), -torch.inf), 2, 0.9)


def test_the_race_picks_each_token_with_its_probability():
    probabilities = torch.tensor([0.5, 0.3, 0.2])
    generator = torch.Generator().manual_seed(0)
    picks = torch.tensor([exponential_race(probabilities, generator) for _ in range(20000)])
    frequencies = torch.bincount(picks, minlength=3).float() / len(picks)
    assert torch.allclose(frequencies, probabilities, atol=0.02)  # about 5 standard deviations


def test_a_seed_repeats_the_picks_and_another_seed_changes_them():
    scores = torch.randn(1, 3000, generator=torch.Generator().manual_seed(1))
    history = [1, 2, 3]

    def picks(seed: int) -> list[int]:
        picker = TokenPicker(Sampling(do_sample=True, temperature=1.5, top_k=200, top_p=0.95, seed=seed))
        return [picker.pick(history, scores) for _ in range(30)]

    assert picks(4) == picks(4)
    assert picks(4) != picks(5)
    assert set(picks(4)) <= set(nucleus(scores[0] / 1.5, 200, 0.95)[0].tolist())


def test_greedy_takes_the_best_token_after_the_penalty():
    scores = torch.tensor([[3.0, 2.9, 0.0]])
    assert TokenPicker(Sampling()).pick([0], scores) == 0
    assert TokenPicker(Sampling(repetition_penalty=1.5)).pick([0], scores) == 1  # 3.0 / 1.5 < 2.9


class Observer:
    def __init__(self) -> None:
        self.seen: torch.Tensor | None = None

    def __call__(self, input_ids, scores):
        self.seen = scores.clone()
        return scores


class WithObserver(Sampling):
    def __init__(self, observer, **knobs) -> None:
        super().__init__(**knobs)
        object.__setattr__(self, "observer", observer)

    def observers(self) -> LogitsProcessorList:
        return LogitsProcessorList([self.observer])


def test_observers_see_the_final_scores_with_removed_tokens_at_minus_infinity():
    scores = torch.randn(1, 1000, generator=torch.Generator().manual_seed(2))
    observer = Observer()
    picker = TokenPicker(WithObserver(observer, do_sample=True, top_k=20, top_p=0.8, seed=0))
    token = picker.pick([5], scores)
    finite = set(torch.nonzero(observer.seen[0] > -torch.inf).squeeze(1).tolist())
    assert finite == warpers_keep(scores[0], 20, 0.8) and token in finite
    assert torch.equal(observer.seen[0, list(finite)], scores[0, list(finite)])
