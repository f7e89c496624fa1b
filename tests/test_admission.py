"""One admission gate for the page and /v1: the model's waiting line (PLAYGROUND_MAX_QUEUE).

The test holds the model so nothing runs, fills the line with /v1 requests, and checks
that /v1 then answers 429 with Retry-After, in OpenAI's error shape, that the page's chat
says the model is busy, and that both work again once the line moves."""

from __future__ import annotations

import threading
import time

import httpx
import pytest
from gradio_client import Client

from modules.engine.model_cache import ModelKind
from tests.test_openai_api import API_KEY, running_app

LINE = 2  # places in the waiting line for this test


def chat_body(model: str) -> dict:
    return {"model": model, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}


def test_a_full_queue_is_429_on_v1_and_busy_on_the_page(tiny_causal_lm_dir, shared_cache,
                                                          monkeypatch):
    model = str(tiny_causal_lm_dir)
    loaded = shared_cache.get(model, ModelKind.CAUSAL_LM)
    monkeypatch.setattr(loaded.scheduler, "max_waiting", LINE)
    headers = {"Authorization": f"Bearer {API_KEY}"}
    with running_app(shared_cache, chat_model=model, api_key=API_KEY) as (url, _, _):
        answers: list[int] = []

        def wait_in_line() -> None:
            answers.append(httpx.post(url + "/v1/chat/completions", json=chat_body(model),
                                      headers=headers, timeout=120).status_code)

        with loaded.lock:  # the model is busy: requests wait in line
            waiting = [threading.Thread(target=wait_in_line) for _ in range(LINE)]
            for thread in waiting:
                thread.start()
            deadline = time.monotonic() + 30
            while loaded.scheduler.live() < LINE and time.monotonic() < deadline:
                time.sleep(0.05)
            assert loaded.scheduler.live() == LINE

            refused = httpx.post(url + "/v1/chat/completions", json=chat_body(model),
                                 headers=headers, timeout=60)
            assert refused.status_code == 429
            assert int(refused.headers["Retry-After"]) > 0
            error = refused.json()["error"]
            assert set(error) == {"message", "type", "param", "code"}
            assert error["code"] == "server_busy" and "busy" in error["message"]

            page = Client(url, verbose=False)
            with pytest.raises(Exception, match="busy.*[Tt]ry again in a moment"):
                page.predict("Hello", api_name="/chat", max_new_tokens=2)
        for thread in waiting:
            thread.join(timeout=60)
        assert answers == [200] * LINE  # the line moved once the model was free
        again = httpx.post(url + "/v1/chat/completions", json=chat_body(model), headers=headers,
                           timeout=60)
        assert again.status_code == 200
