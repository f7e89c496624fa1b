"""The token sampler: the same tokens as transformers' top-k and top-p warpers keep,
picked with their probabilities, repeatable under a seed."""

from __future__ import annotations

import shutil

import pytest
import torch
from transformers import LogitsProcessorList, TopKLogitsWarper, TopPLogitsWarper

from modules.engine import sampling
from modules.engine.kernels import native_step
from modules.engine.sampling import (
    Sampling,
    TokenPicker,
    argmax_ids,
    exponential_race,
    nucleus,
    pick_rows,
    top_alternatives,
    top_k_of,
)
from modules.tasks.chat.processors import with_request_processors
from tests.conftest import make_settings


@pytest.fixture(autouse=True, params=["torch", "native"])
def loops(request, monkeypatch):
    """Every test runs twice: argmax and top-k by torch, and by the native step's loops."""
    if request.param == "torch":
        monkeypatch.setattr(sampling, "_native_loops", lambda scores: None)
        return None
    module = native_step.builder.wait(make_settings().cache_dir)
    if module is None and shutil.which("c++") is None:
        pytest.skip(f"no C++ compiler here: {native_step.builder.error}")
    assert module is not None, native_step.builder.error
    return module


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


class Forbid:
    """A constraint that allows only `allowed` tokens (all others to -inf)."""

    def __init__(self, allowed: list[int]) -> None:
        self.allowed = allowed

    def __call__(self, input_ids, scores):
        kept = torch.full_like(scores, -torch.inf)
        kept[:, self.allowed] = scores[:, self.allowed]
        return kept


ROW_SAMPLINGS = [
    lambda seed: Sampling(do_sample=True, temperature=0.7, top_k=50, top_p=0.9, seed=seed),  # the page
    lambda seed: Sampling(do_sample=True, temperature=1.3, top_k=5, top_p=1.0, repetition_penalty=1.1,
                          seed=seed),
    lambda seed: Sampling(),  # greedy
    lambda seed: Sampling(do_sample=True, temperature=0.9, top_k=0, top_p=0.8, seed=seed),  # top-p alone
    lambda seed: Sampling(do_sample=True, top_k=3, seed=seed),  # no temperature, ties planted below
    lambda seed: WithObserver(Observer(), do_sample=True, top_k=20, top_p=0.8, seed=seed),
    lambda seed: with_request_processors(  # a request's constraint, as the chat adds it
        Sampling(do_sample=True, temperature=0.5, top_k=10, seed=seed), [Forbid([7, 8])]),
    lambda seed: with_request_processors(  # nothing allowed
        Sampling(do_sample=True, top_k=10, seed=seed), [Forbid([])]),
]


def test_picking_all_rows_at_once_gives_each_row_what_it_gets_alone():
    """The batch step's pick (shared temperature and top-k passes) draws exactly what each
    row's own picker draws: the same tokens, the same errors, seed for seed, step by step."""
    generator = torch.Generator().manual_seed(3)
    together = [TokenPicker(make(seed)) for seed, make in enumerate(ROW_SAMPLINGS)]
    alone = [TokenPicker(make(seed)) for seed, make in enumerate(ROW_SAMPLINGS)]
    histories = [[1, 2, 3, row] for row in range(len(ROW_SAMPLINGS))]
    for step in range(25):
        scores = torch.randn(len(ROW_SAMPLINGS), 4000, generator=generator) * 4
        scores[4, :6] = scores[4].max() + 1  # six tokens tie for the top three places
        scores[3, 100:] = -torch.inf if step % 2 else scores[3, 100:]
        before = scores.clone()
        picks = pick_rows(together, lambda row: histories[row], scores)
        assert torch.equal(scores, before)  # the caller's logits stay as they were
        for row, picker in enumerate(alone):
            try:
                expected = picker.pick(histories[row], scores[row:row + 1].clone())
            except ValueError as error:
                expected = error
            if isinstance(expected, Exception):
                assert isinstance(picks[row], ValueError) and str(picks[row]) == str(expected)
            else:
                assert picks[row] == expected, (step, row)
                histories[row].append(expected)
    assert len({tuple(h) for h in histories[:2]}) == 2 and len(set(histories[0][4:])) > 5  # real draws


def test_alternatives_are_the_most_likely_tokens_with_their_probabilities():
    scores = torch.randn(3, 500, generator=torch.Generator().manual_seed(4)) * 3
    found = top_alternatives(scores, [5, 0, 2])
    assert found[1] == [] and [len(row) for row in found] == [5, 0, 2]
    for row in (0, 2):
        expected = torch.softmax(scores[row], -1).topk(len(found[row]))
        assert [token for token, _ in found[row]] == expected.indices.tolist()
        assert torch.allclose(torch.tensor([p for _, p in found[row]]), expected.values, rtol=1e-5)


def _hard_rows(generator: torch.Generator) -> torch.Tensor:
    """Rows that catch a careless argmax or top-k: ties (bf16-rounded and integer scores),
    -inf runs, fewer finite scores than k, a row sorted upwards, lengths off the vector width."""
    scores = torch.randn(8, 4099, generator=generator) * 3
    scores[1] = scores[1].bfloat16().float()
    scores[2] = scores[2].round()
    scores[3, ::2] = -torch.inf
    scores[4, 3:] = -torch.inf
    scores[5] = torch.arange(4099, dtype=torch.float32)
    scores[6, 1000:1010] = scores[6].max() + 1  # ten tokens tie for the top
    scores[7] = 0.0
    return scores


def test_argmax_and_top_k_answer_as_torch_does(loops):
    generator = torch.Generator().manual_seed(5)
    for _ in range(5):
        scores = _hard_rows(generator)
        assert argmax_ids(scores) == scores.argmax(-1).tolist()
        assert argmax_ids(scores[:, :13]) == scores[:, :13].argmax(-1).tolist()
        for k in (1, 5, 66, 4099):
            values, ids = top_k_of(scores, k)
            assert torch.equal(values, scores.topk(k, dim=-1).values)
            assert torch.equal(scores.gather(1, ids), values)
            for row in range(len(scores)):  # every score above the k-th, then some of its ties
                kth, chosen = values[row, -1], set(ids[row].tolist())
                above = set((scores[row] > kth).nonzero().squeeze(1).tolist())
                ties = (scores[row] == kth).nonzero().squeeze(1).tolist()
                assert above <= chosen and chosen - above <= set(ties)
                if loops is not None:  # natively the first ties by id, so the same set every time
                    assert chosen - above == set(ties[:k - len(above)])


def test_rows_with_nan_get_torch_answers(loops):
    scores = torch.randn(3, 300, generator=torch.Generator().manual_seed(6))
    scores[1, 40] = torch.nan
    scores[2, 0] = torch.nan
    assert argmax_ids(scores) == scores.argmax(-1).tolist()
    values, ids = top_k_of(scores, 5)
    expected = scores.topk(5, dim=-1)
    assert torch.equal(values.isnan(), expected.values.isnan()) and torch.equal(ids, expected.indices)
