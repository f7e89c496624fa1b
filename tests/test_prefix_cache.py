"""The prefix cache: which entry a prompt starts from, what is kept within the budget, and
that the scheduler's replies are the same whether their prompts start from it or not."""

from __future__ import annotations

import threading

import pytest
import torch

from modules.engine.batching import BatchScheduler, Sequence
from modules.engine.kernels import native_step
from modules.engine.prefix_cache import PrefixCache
from tests.conftest import make_settings

LAYERS, HEADS, HEAD_DIM = 2, 3, 4
TOKEN_BYTES = LAYERS * 2 * HEADS * HEAD_DIM * 2  # keys and values, bf16


def kv(ids: list[int]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Keys and values that say which token and layer they are for."""
    column = torch.tensor(ids, dtype=torch.bfloat16)[None, :, None].expand(HEADS, len(ids), HEAD_DIM)
    return ([column + layer for layer in range(LAYERS)], [column - layer for layer in range(LAYERS)])


def test_a_prompt_starts_from_the_entry_it_shares_most_with_but_never_its_last_token():
    cache = PrefixCache(1 << 20)
    cache.store([1, 2, 3, 4], *kv([1, 2, 3, 4]))
    cache.store([1, 2, 9], *kv([1, 2, 9]))
    entry, length = cache.longest([1, 2, 3, 7, 8])
    assert length == 3 and entry.ids.tolist() == [1, 2, 3, 4]
    assert torch.equal(entry.keys[1][:, :length], kv([1, 2, 3])[0][1])
    assert cache.longest([1, 2, 3, 4])[1] == 3  # the last token is read: its logits pick the reply
    assert cache.longest([1, 2, 9, 5])[0].ids.tolist() == [1, 2, 9]
    assert cache.longest([5, 1, 2]) == (None, 0)
    assert cache.longest([1]) == (None, 0)


def test_a_longer_entry_replaces_its_prefixes_and_a_covered_one_is_not_stored():
    cache = PrefixCache(1 << 20)
    cache.store([1, 2], *kv([1, 2]))
    cache.store([1, 2, 3, 4], *kv([1, 2, 3, 4]))  # the next turn: the prompt, then the reply
    assert len(cache) == 1 and cache.nbytes == 4 * TOKEN_BYTES
    cache.store([1, 2, 3], *kv([1, 2, 3]))
    assert len(cache) == 1


def test_entries_are_copies_and_the_least_recently_used_go_past_the_budget():
    cache = PrefixCache(10 * TOKEN_BYTES)
    keys, values = kv([1, 2, 3, 4])
    cache.store([1, 2, 3, 4], keys, values)
    keys[0].zero_()  # the batch's buffers are written again; the entry keeps its copy
    assert cache.longest([1, 2, 3, 4, 5])[0].keys[0][0, 0, 0] == 1
    cache.store([5, 6, 7, 8], *kv([5, 6, 7, 8]))
    assert cache.longest([1, 2, 3, 9])[1] == 3  # used: [5, 6, 7, 8] is now the oldest
    cache.store([9, 10, 11], *kv([9, 10, 11]))
    assert cache.nbytes <= 10 * TOKEN_BYTES
    assert cache.longest([5, 6, 7, 0]) == (None, 0)
    assert cache.longest([1, 2, 3, 0])[1] == 3 and cache.longest([9, 10, 0])[1] == 2
    cache.store(list(range(20, 40)), *kv(list(range(20, 40))))  # alone over the budget: not kept
    assert len(cache) == 2


def test_a_zero_budget_keeps_nothing():
    cache = PrefixCache(0)
    cache.store([1, 2, 3], *kv([1, 2, 3]))
    assert len(cache) == 0 and cache.longest([1, 2, 3, 4]) == (None, 0)


# --- the scheduler, on the embedded model's native path ----------------------------------
@pytest.fixture
def native_model(embedded_chat_model, monkeypatch):
    """The embedded model with every prompt on the native path: where the dense matmul won
    at some row count (`measure_prompt_rows`), longer prompts are read from the start."""
    if native_step.builder.wait(make_settings().cache_dir) is None or not native_step.ready(embedded_chat_model.model):
        pytest.skip(f"the native step is not built here: {native_step.builder.error}")
    for m in embedded_chat_model.model.modules():
        if getattr(m, "tile_kernel", None):
            monkeypatch.setattr(m, "native_prompt_rows", native_step.ANY_ROWS)
    return embedded_chat_model


def chat_ids(loaded, messages: list[dict]) -> list[int]:
    return loaded.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                                return_dict=False)


def reply(scheduler: BatchScheduler, *prompts: list[int], tokens: int = 12) -> list[Sequence]:
    """Greedy replies to `prompts`, submitted together."""
    running = [scheduler.submit(Sequence(ids, tokens)) for ids in prompts]
    assert all(s.wait(120) and s.error is None for s in running)
    return running


def test_replies_from_cached_prefixes_are_the_replies_read_from_the_start(native_model):
    """A second user's prompt starts after the shared system prompt, a chat's next turn after
    the whole first turn, and four at once after each other's: every reply is token for
    token the one a scheduler without the cache gives."""
    model, lock = native_model.model, native_model.lock
    cached, fresh = (BatchScheduler(model, lock, prefix_cache_bytes=size) for size in (64 << 20, 0))
    first = chat_ids(native_model, [{"role": "user", "content": "Name a fruit."}])
    one = reply(cached, first)[0]
    assert one.cached_tokens == 0 and one.tokens == reply(fresh, first)[0].tokens

    second = chat_ids(native_model, [{"role": "user", "content": "Name a river."}])
    two = reply(cached, second)[0]
    shared = next(i for i, (a, b) in enumerate(zip(first, second)) if a != b)
    assert two.cached_tokens == shared > 10  # the system prompt, the user's turn marker, "Name a"
    assert two.tokens == reply(fresh, second)[0].tokens

    answer = native_model.tokenizer.decode(one.tokens, skip_special_tokens=True)
    turn = chat_ids(native_model, [{"role": "user", "content": "Name a fruit."},
                                   {"role": "assistant", "content": answer},
                                   {"role": "user", "content": "And its colour?"}])
    three = reply(cached, turn)[0]
    assert three.cached_tokens > len(first)  # the first turn's prompt and part of its reply at least
    assert three.tokens == reply(fresh, turn)[0].tokens

    prompts = [chat_ids(native_model, [{"role": "user", "content": f"Count to {n}."}]) for n in (3, 4, 5, 6)]
    together = reply(cached, *prompts, tokens=16)
    system = next(i for i, (a, b) in enumerate(zip(first, prompts[0])) if a != b)
    assert together[0].cached_tokens == system and all(s.cached_tokens > system for s in together[1:])
    assert [s.tokens for s in together] == [s.tokens for s in reply(fresh, *prompts, tokens=16)]
    assert cached.prefixes.reused_tokens == sum(s.cached_tokens for s in (one, two, three, *together))
    assert len(fresh.prefixes) == 0 and fresh.prefixes.reused_tokens == 0


def test_prompts_read_by_the_dense_matmul_are_not_stored(native_model, monkeypatch):
    """Where the dense matmul reads a prompt (too long for the native pass on this CPU), neither
    it nor its reply is stored: a shorter prompt read natively must not start from keys that
    a dense pass rounded differently."""
    for m in native_model.model.modules():
        if getattr(m, "tile_kernel", None):
            monkeypatch.setattr(m, "native_prompt_rows", 16)
    scheduler = BatchScheduler(native_model.model, native_model.lock, prefix_cache_bytes=64 << 20)
    long = chat_ids(native_model, [{"role": "user", "content": "Name a fruit."}])
    assert len(long) > 16
    assert reply(scheduler, long)[0].cached_tokens == 0 and len(scheduler.prefixes) == 0
    short = reply(scheduler, long[:10], tokens=4)[0]
    assert short.cached_tokens == 0 and len(scheduler.prefixes) == 1  # read natively: kept


def test_a_batch_that_fails_stores_nothing(native_model, monkeypatch):
    """Keys and values of a step that raised are not trusted for later prompts."""
    scheduler = BatchScheduler(native_model.model, threading.Lock(), prefix_cache_bytes=64 << 20)
    ids = chat_ids(native_model, [{"role": "user", "content": "Name a colour."}])
    steps = []

    def failing_step(*args, **kwargs):
        steps.append(None)
        raise RuntimeError("out of memory")

    monkeypatch.setattr("modules.engine.batching.decode_step", failing_step)
    done = scheduler.submit(Sequence(ids, 8))
    assert done.wait(60) and isinstance(done.error, RuntimeError) and steps
    assert [entry.ids.tolist() for entry in scheduler.prefixes._entries.values()] == [ids]  # the prompt only


def test_the_setting_sizes_each_chat_models_cache(tiny_causal_lm_dir):
    """PLAYGROUND_PREFIX_CACHE_MB reaches the scheduler the model cache makes (0: off)."""
    from modules.config import Settings
    from modules.engine.model_cache import ModelCache, ModelKind

    assert Settings.from_env({}).prefix_cache_mb == 256
    for megabytes in (0, 3):
        settings = make_settings(prefix_cache_mb=Settings.from_env({"PLAYGROUND_PREFIX_CACHE_MB": str(megabytes)})
                                 .prefix_cache_mb)
        loaded = ModelCache(settings).get(str(tiny_causal_lm_dir), ModelKind.CAUSAL_LM)
        assert loaded.scheduler.prefixes.budget_bytes == megabytes << 20
