"""The batch scheduler: batched replies equal replies alone; stop, budget and queue order.

A greedy reply in a batch is compared with the same sequence run alone through the
scheduler; that each row of a native step computes exactly what it computes alone is
tests/test_native_step.py's. Exact equality with transformers' `model.generate` is not
asked: the native step's logits are float32 where generate's are rounded to bf16, so
near ties fall differently (which way depends on the CPU's kernels). On the embedded
model each chosen token is instead checked to be the model's own top choice, within
bf16 rounding, with the reply fed back through transformers' layers.
A seeded sampled reply is compared with the same sequence run alone through the
scheduler (its sampler's random stream is its own: tests/test_sampling.py checks it
against transformers' warpers).
"""

from __future__ import annotations

import threading

import pytest
import torch

from modules.engine.batching import (
    FINISH_CANCELLED,
    FINISH_LENGTH,
    BatchScheduler,
    SchedulerBusyError,
    Sequence,
    live_sequences,
)
from modules.engine.sampling import Sampling

SAMPLED = dict(temperature=0.7, top_p=0.9, top_k=50)
PROMPTS = [  # different lengths, so rows are left-padded
    "Hello!",
    "Write a long story about a brave little dragon who learns to fly over the mountains.",
    "What is the capital of France?",
    "Explain how a rainbow forms.",
]


def prompt_ids(loaded, text: str) -> list[int]:
    return loaded.tokenizer.apply_chat_template(
        [{"role": "user", "content": text}], add_generation_prompt=True, tokenize=True,
        return_dict=False)


def alone(scheduler: BatchScheduler, ids: list[int], tokens: int) -> list[int]:
    """The greedy reply to `ids` with nothing else running: a batched reply's reference."""
    running = scheduler.submit(sequence(ids, tokens))
    assert running.wait(60)
    return running.tokens


def end_tokens(loaded) -> frozenset[int]:
    ids = loaded.model.generation_config.eos_token_id
    return frozenset([] if ids is None else [ids] if isinstance(ids, int) else ids)


def sequence(ids, tokens, seed=None, eos=frozenset(), **kwargs) -> Sequence:
    sampling = Sampling(do_sample=True, seed=seed, **SAMPLED) if seed is not None else Sampling()
    return Sequence(ids, tokens, eos, sampling=sampling, **kwargs)


@pytest.fixture()
def scheduler(tiny_model):
    return BatchScheduler(tiny_model.model, tiny_model.lock, max_sequences=4)


def test_greedy_replies_in_a_batch_equal_replies_alone(tiny_model, scheduler):
    ids = [prompt_ids(tiny_model, p) for p in PROMPTS]
    expected = [alone(scheduler, i, 12) for i in ids]
    sizes: list[int] = []
    running = [scheduler.submit(sequence(i, 12, on_token=lambda _: sizes.append(scheduler.running)))
               for i in ids]
    assert all(s.wait(60) for s in running)
    assert [s.tokens for s in running] == expected
    assert max(sizes) == 4  # they really ran together


def test_sequences_joining_and_leaving_mid_batch_are_unchanged(tiny_model, scheduler):
    ids = [prompt_ids(tiny_model, p) for p in PROMPTS]
    lengths = [20, 6, 14, 9]  # short ones leave while others run
    expected = [alone(scheduler, i, n) for i, n in zip(ids, lengths)]
    first = scheduler.submit(sequence(ids[0], lengths[0]))
    joined = threading.Event()
    later: list[Sequence] = []

    def join_after_three(_token) -> None:
        if len(first.tokens) == 3 and not joined.is_set():
            joined.set()
            later.extend(scheduler.submit(sequence(i, n)) for i, n in zip(ids[1:], lengths[1:]))

    first.on_token = join_after_three
    assert first.wait(60) and all(s.wait(60) for s in later)
    assert [s.tokens for s in [first, *later]] == expected


def test_seeded_sampling_in_a_batch_gives_the_same_text_as_alone(embedded_chat_model):
    loaded = embedded_chat_model
    ids = [prompt_ids(loaded, p) for p in PROMPTS[:3]]
    scheduler = BatchScheduler(loaded.model, loaded.lock)
    eos = end_tokens(loaded)
    alone = scheduler.submit(sequence(ids[1], 10, seed=7, eos=eos))
    assert alone.wait(120)
    batch = [scheduler.submit(sequence(ids[0], 10, seed=1, eos=eos)),
             scheduler.submit(sequence(ids[1], 10, seed=7, eos=eos)),
             scheduler.submit(sequence(ids[2], 10, eos=eos))]
    assert all(s.wait(120) for s in batch)
    assert batch[1].tokens == alone.tokens
    others = [scheduler.submit(sequence(ids[1], 10, seed=seed, eos=eos)) for seed in (8, 9, 10)]
    assert all(s.wait(120) for s in others)
    assert any(s.tokens != alone.tokens for s in others)  # the seed really decides the text


def test_greedy_on_the_real_model_is_the_same_batched_and_is_the_models_choice(embedded_chat_model):
    loaded = embedded_chat_model
    ids = [prompt_ids(loaded, p) for p in PROMPTS]
    scheduler = BatchScheduler(loaded.model, loaded.lock)
    expected = []
    for i in ids:
        running = scheduler.submit(sequence(i, 10, eos=end_tokens(loaded)))
        assert running.wait(120)
        expected.append(running.tokens)
    batch = [scheduler.submit(sequence(i, 10, eos=end_tokens(loaded))) for i in ids]
    assert all(s.wait(120) for s in batch)
    assert [s.tokens for s in batch] == expected
    for prompt, reply in zip(ids, expected):  # each token is the model's greedy choice
        assert model_top_gaps(loaded, prompt, reply) < BF16_LOGIT_ROUNDING


BF16_LOGIT_ROUNDING = 0.25  # two steps of bf16 at logits of 16-32: where near ties may flip


def model_top_gaps(loaded, prompt: list[int], reply: list[int]) -> float:
    """The largest gap between the model's top logit and the chosen token's, with the reply
    fed back (teacher forcing) through the model's own forward pass (transformers' layers)."""
    with torch.inference_mode():
        logits = loaded.model(input_ids=torch.tensor([prompt + reply], device=loaded.device)).logits[0].float().cpu()
    steps = logits[len(prompt) - 1:len(prompt) - 1 + len(reply)]
    chosen = steps.gather(1, torch.tensor(reply).unsqueeze(1)).squeeze(1)
    return float((steps.max(dim=1).values - chosen).max())


def test_a_cancelled_sequence_leaves_at_the_next_step_and_the_others_go_on(tiny_model, scheduler):
    ids = [prompt_ids(tiny_model, p) for p in PROMPTS[:3]]
    expected = [alone(scheduler, i, 16) for i in ids]
    stop = threading.Event()
    batch = [scheduler.submit(sequence(ids[0], 16)),
             scheduler.submit(sequence(ids[1], 16, cancelled=stop.is_set)),
             scheduler.submit(sequence(ids[2], 16))]
    batch[1].on_token = lambda _: stop.set() if len(batch[1].tokens) == 4 else None
    assert all(s.wait(60) for s in batch)
    assert batch[1].finish_reason == FINISH_CANCELLED and len(batch[1].tokens) == 4
    assert [batch[0].tokens, batch[2].tokens] == [expected[0], expected[2]]
    assert batch[0].finish_reason == FINISH_LENGTH
    assert live_sequences() == 0


def test_the_batch_size_bounds_running_sequences_and_the_rest_wait_in_order(tiny_model):
    scheduler = BatchScheduler(tiny_model.model, tiny_model.lock, max_sequences=2)
    ids = prompt_ids(tiny_model, PROMPTS[0])
    seen: list[tuple[int, list[int]]] = []
    batch = [sequence(ids, 6) for _ in range(5)]
    batch[0].on_token = lambda _: seen.append((scheduler.running, [s.ahead for s in batch[1:]]))
    with tiny_model.lock:  # hold the model so all five are queued before the first step
        for s in batch:
            scheduler.submit(s)
        assert [s.ahead for s in batch] == [0, 1, 2, 3, 4]
    assert all(s.wait(60) for s in batch)
    assert max(running for running, _ in seen) == 2
    assert seen[1][1] == [0, 0, 1, 2]  # two running, three waiting in submission order
    assert [s.started_at for s in batch] == sorted(s.started_at for s in batch)


def test_the_kv_budget_runs_one_at_a_time_when_two_do_not_fit(tiny_model):
    ids = prompt_ids(tiny_model, PROMPTS[0])
    scheduler = BatchScheduler(tiny_model.model, tiny_model.lock, max_sequences=4,
                               kv_cache_tokens=len(ids) + 8 + len(ids))
    sizes: list[int] = []
    batch = [scheduler.submit(sequence(ids, 8, on_token=lambda _: sizes.append(scheduler.running)))
             for _ in range(3)]
    assert all(s.wait(60) for s in batch)
    assert max(sizes) == 1


def test_a_full_queue_refuses_new_requests_with_a_clear_error(tiny_model):
    scheduler = BatchScheduler(tiny_model.model, tiny_model.lock, max_sequences=1, max_waiting=2)
    ids = prompt_ids(tiny_model, PROMPTS[0])
    stop = threading.Event()
    with tiny_model.lock:
        queued = [scheduler.submit(sequence(ids, 50, cancelled=stop.is_set)) for _ in range(2)]
        with pytest.raises(SchedulerBusyError, match="busy"):
            scheduler.submit(sequence(ids, 5))
        stop.set()  # cancelled while waiting for the model: they end without a step
        assert all(s.wait(10) for s in queued)
    assert all(s.finish_reason == FINISH_CANCELLED and not s.tokens for s in queued)


def test_a_failing_consumer_ends_only_its_own_sequence(tiny_model, scheduler):
    ids = [prompt_ids(tiny_model, p) for p in PROMPTS[:2]]
    expected = alone(scheduler, ids[1], 10)

    def broken(_token):
        raise RuntimeError("consumer went away")

    batch = [scheduler.submit(sequence(ids[0], 10, on_token=broken)),
             scheduler.submit(sequence(ids[1], 10))]
    assert all(s.wait(60) for s in batch)
    assert isinstance(batch[0].error, RuntimeError) and len(batch[0].tokens) == 1
    assert batch[1].tokens == expected


def test_growing_layer_holds_what_concatenation_would_and_grows_in_place():
    """GrowingLayer == DynamicLayer's concatenation, step after step, also after the batch
    replaces its tensors from outside (row selection); between doublings a step writes in
    place instead of copying the whole cache."""
    from transformers.cache_utils import DynamicLayer

    from modules.engine.kv_cache import GrowingLayer

    torch.manual_seed(0)
    growing, plain = GrowingLayer(), DynamicLayer()
    pointers = set()
    for step in range(150):
        rows = 3 if step < 100 else 2
        new = 7 if step == 0 else 1
        key, value = torch.randn(rows, 2, new, 4), torch.randn(rows, 2, new, 4)
        got, want = growing.update(key, value), plain.update(key, value)
        assert all(torch.equal(g, w) for g, w in zip(got, want))
        pointers.add(growing.keys.data_ptr())
        if step == 99:  # the batch keeps rows 0 and 2 (as _BatchCache.keep does)
            for layer in (growing, plain):
                layer.keys = layer.keys.index_select(0, torch.tensor([0, 2]))
                layer.values = layer.values.index_select(0, torch.tensor([0, 2]))
    assert len(pointers) <= 6  # 150 steps: a handful of buffers, not one per step


class ForbidEverythingFromTheThirdToken:
    """A constraint that allows no token after two (a broken grammar, say)."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, input_ids, scores):
        self.calls += 1
        return scores if self.calls < 3 else torch.full_like(scores, -torch.inf)


def test_a_row_whose_pick_fails_ends_alone_and_the_batch_goes_on(tiny_model, scheduler):
    from modules.tasks.chat.processors import with_request_processors

    ids = [prompt_ids(tiny_model, p) for p in PROMPTS[:2]]
    expected = alone(scheduler, ids[0], 12)
    fine = sequence(ids[0], 12)
    broken = Sequence(ids[1], 12, frozenset(), sampling=with_request_processors(
        Sampling(do_sample=True, top_k=50, seed=0), [ForbidEverythingFromTheThirdToken()]))
    batch = [scheduler.submit(fine), scheduler.submit(broken)]
    assert all(s.wait(60) for s in batch)
    assert isinstance(broken.error, ValueError) and "-inf" in str(broken.error)
    assert len(broken.tokens) == 2  # it failed in a decode step, beside `fine`
    assert fine.error is None and fine.tokens == expected
    assert live_sequences() == 0


def test_a_sequences_history_ids_follow_its_history():
    """The ids the repetition penalty reads are the prompt and the reply so far at every step,
    though each step copies only its new token into the buffer."""
    sequence = Sequence([5, 6, 7], max_new_tokens=3)
    assert sequence.history_ids().tolist() == [[5, 6, 7]]
    for token in (8, 9, 10, 11, 12):  # past max_new_tokens too: the buffer grows
        sequence.tokens.append(token)
        assert torch.equal(sequence.history_ids(), torch.tensor([sequence.prompt_ids + sequence.tokens]))


def test_a_penalised_reply_in_a_batch_is_the_reply_alone(tiny_model):
    """A greedy reply under a repetition penalty reads its own history from the batch's
    buffers: the same tokens as transformers' generate with the same penalty."""
    ids = tiny_model.tokenizer("Hello there, hello there", return_tensors="pt").input_ids
    expected = tiny_model.model.generate(ids, max_new_tokens=12, do_sample=False, repetition_penalty=1.3,
                                         pad_token_id=0)[0, ids.shape[1]:].tolist()
    scheduler = BatchScheduler(tiny_model.model, threading.Lock(), max_sequences=4)
    sequences = [Sequence(ids[0].tolist(), 12, sampling=Sampling(repetition_penalty=1.3)),
                 Sequence([1, 2, 3, 4], 12, sampling=Sampling(repetition_penalty=1.3))]
    for sequence in sequences:
        scheduler.submit(sequence)
    assert all(sequence.wait(60) for sequence in sequences)
    assert sequences[0].tokens[:len(expected)] == expected
