"""Page users share the model's batch: two chats at once generate in the same forward
passes, and a chat that waits for a place sees how many are ahead of it."""

from __future__ import annotations

import contextlib
import threading
import time

import pytest
from gradio_client import Client

from modules.app_context import AppContext
from modules.engine.batching import Sequence, scheduler_for
from modules.engine.model_cache import ModelKind
from modules.tasks.chat import live_generation_threads
from modules.ui.layout import build_demo
from tests.conftest import free_port, make_settings, wait_for_generations

GREEDY = {"do_sample": False, "max_new_tokens": 24}
SLOW_STEP_S = 0.05
RELEASE_AFTER_S = 60  # a safety net: the test releases the line itself long before


@pytest.fixture(scope="module")
def app(tiny_causal_lm_dir, shared_cache):
    context = AppContext.create(make_settings(chat_model=str(tiny_causal_lm_dir)), shared_cache)
    demo = build_demo(context)
    demo.launch(prevent_thread_lock=True, server_name="127.0.0.1", server_port=free_port(),
                quiet=True)
    yield demo, shared_cache.get(str(tiny_causal_lm_dir), ModelKind.CAUSAL_LM)
    demo.close()


@contextlib.contextmanager
def slowed_recording_rows(model):
    """Each forward pass a little slower, and the most rows any pass carried.

    Hooked on the token embedding, which every pass runs: prompts through `model(...)`,
    the scheduler's decode steps through the lean path (modules/engine/kernels/decode_step.py).
    """
    rows = [0]

    def hook(module, args, output):
        rows[0] = max(rows[0], args[0].shape[0])
        time.sleep(SLOW_STEP_S)

    handle = model.get_input_embeddings().register_forward_hook(hook)
    try:
        yield rows
    finally:
        handle.remove()


def test_two_page_chats_generate_in_one_batch(app):
    demo, tiny = app
    baseline = live_generation_threads()
    with slowed_recording_rows(tiny.model) as rows:
        jobs = [Client(demo.local_url, verbose=False).submit(text, api_name="/chat", **GREEDY)
                for text in ("Tell me about rivers.", "Tell me about mountains.")]
        replies = [job.result()[0] for job in jobs]
    for chatbot in replies:
        assert [m["role"] for m in chatbot] == ["user", "assistant"]
    assert rows[0] >= 2, "the two replies never shared a forward pass"
    assert wait_for_generations(baseline, timeout_s=10) == baseline


def test_a_waiting_page_chat_sees_how_many_are_ahead(app):
    demo, tiny = app
    scheduler = scheduler_for(tiny)
    release = threading.Event()
    safety = threading.Timer(RELEASE_AFTER_S, release.set)
    safety.start()
    # One sequence that reserves the whole KV budget runs (nothing else fits beside it),
    # a second waits first in line: the page's request is then one behind it.
    occupying = [Sequence([1, 2, 3], scheduler.kv_cache_tokens, cancelled=release.is_set)
                 for _ in range(2)]
    statuses = []
    try:
        with slowed_recording_rows(tiny.model):
            for sequence in occupying:
                scheduler.submit(sequence)
            job = Client(demo.local_url, verbose=False).submit("Hello there", api_name="/chat", **GREEDY)
            for _, _, status, _ in job:
                statuses.append(status)
                if "ahead of you" in (status or ""):
                    release.set()
            chatbot, _, status, _ = job.outputs()[-1]
    finally:
        release.set()
        safety.cancel()
    assert any("1 ahead of you" in (s or "") for s in statuses), statuses
    assert chatbot[-1]["role"] == "assistant" and "finish: cancelled" not in str(chatbot[-1])
    assert "ahead of you" not in (status or "")  # cleared once the reply runs
    for sequence in occupying:
        assert sequence.wait(timeout=10)
