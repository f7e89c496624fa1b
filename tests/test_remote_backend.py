"""The remote backend: the chat logic streaming from a second copy of the app.

A second server of the app runs on another loopback port as the "remote" engine
(an OpenAI-compatible server, like vLLM or TGI would be); `stream_remote_chat`
must give the same chunks as chatting with the model in-process.
"""

from __future__ import annotations

import socket
import threading

import pytest

from modules.tasks.chat import GenerationParams, stream_chat
from modules.config import EMBEDDED_MODEL
from modules.errors import InvalidInputError, ModelError, ModelNotFoundError, PlaygroundError
from modules.tasks.chat.remote import build_request_body, stream_remote_chat
from tests.conftest import wait_for_generations
from tests.test_openai_api import (
    CAPITAL_QUESTION,
    LONG_GENERATION,
    running_app,
    slowed_and_counted,
)

REMOTE_KEY = "remote-secret-456"
GREEDY = {"temperature": 0.0}


@pytest.fixture(scope="module")
def remote_url(tiny_causal_lm_dir, shared_cache):
    with running_app(shared_cache, chat_model=str(tiny_causal_lm_dir), api_key=REMOTE_KEY) as (
        url, *_,
    ):
        yield url + "/v1"


def remote(url, model, messages, cancel=None, key=REMOTE_KEY, **params):
    return stream_remote_chat(url, key, model, messages, GenerationParams(**params), cancel)


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_remote_reply_equals_the_in_process_reply(remote_url, embedded_chat_model):
    chunks = list(remote(remote_url, EMBEDDED_MODEL, CAPITAL_QUESTION, max_new_tokens=12, **GREEDY))
    local = list(stream_chat(embedded_chat_model, CAPITAL_QUESTION,
                             GenerationParams(max_new_tokens=12, **GREEDY)))
    *streamed, final = chunks
    assert final.text == local[-1].text == "The capital of France is Paris."
    assert "".join(c.delta for c in streamed) == final.text
    assert all(c.finish_reason is None for c in streamed)
    assert [c.text for c in streamed] == [
        "".join(c.delta for c in streamed[: i + 1]) for i in range(len(streamed))
    ]
    assert final.finish_reason == "stop"
    assert final.usage.prompt_tokens == local[-1].usage.prompt_tokens
    assert final.usage.completion_tokens == local[-1].usage.completion_tokens
    assert final.usage.time_to_first_token_s > 0 and final.usage.tokens_per_second > 0


def test_max_new_tokens_reaches_the_remote_as_length(remote_url, tiny_ref, tiny_model):
    messages = [{"role": "user", "content": "Go on"}]
    final = list(remote(remote_url, tiny_ref, messages, max_new_tokens=5, **GREEDY))[-1]
    local = list(stream_chat(tiny_model, messages, GenerationParams(max_new_tokens=5, **GREEDY)))
    assert final.text == local[-1].text
    assert final.finish_reason == local[-1].finish_reason == "length"
    assert final.usage.completion_tokens == 5


def test_stop_strings_and_seed_reach_the_remote(remote_url, tiny_ref):
    final = list(remote(remote_url, EMBEDDED_MODEL, CAPITAL_QUESTION, max_new_tokens=12,
                        stop=(" Paris",), **GREEDY))[-1]
    assert final.text == "The capital of France is" and final.finish_reason == "stop"

    def sample(seed):
        return list(remote(remote_url, tiny_ref, [{"role": "user", "content": "Hi"}],
                           max_new_tokens=6, temperature=1.0, top_p=1.0, seed=seed))[-1].text

    assert sample(11) == sample(11)


def test_empty_model_name_uses_the_servers_first_model(remote_url, tiny_ref, tiny_model):
    messages = [{"role": "user", "content": "Hello"}]
    final = list(remote(remote_url, "", messages, max_new_tokens=4, **GREEDY))[-1]
    local = list(stream_chat(tiny_model, messages, GenerationParams(max_new_tokens=4, **GREEDY)))
    assert final.text == local[-1].text


def test_request_body_is_plain_openai():
    body = build_request_body("m", CAPITAL_QUESTION, GenerationParams(
        max_new_tokens=9, do_sample=False, seed=3, stop=("x",)))
    assert body == {
        "model": "m", "messages": CAPITAL_QUESTION, "stream": True,
        "stream_options": {"include_usage": True}, "max_tokens": 9, "temperature": 0.0,
        "top_p": 1.0, "seed": 3, "stop": ["x"],
    }


# --- Stop ---------------------------------------------------------------------------------------
def test_cancel_event_stops_the_remote_generation(remote_url, tiny_ref, tiny_model):
    cancel = threading.Event()
    with slowed_and_counted(tiny_model.model) as calls:
        chunks = remote(remote_url, tiny_ref, [{"role": "user", "content": "Go on"}], cancel,
                        max_new_tokens=LONG_GENERATION, **GREEDY)
        received = []
        for chunk in chunks:
            received.append(chunk)
            if len(received) == 3:
                cancel.set()
        assert wait_for_generations(timeout_s=60) == 0
    assert received[-1].finish_reason == "cancelled"
    assert len(received) == 4
    assert calls[0] < LONG_GENERATION / 2


def test_closing_the_generator_stops_the_remote_generation(remote_url, tiny_ref, tiny_model):
    with slowed_and_counted(tiny_model.model) as calls:
        chunks = remote(remote_url, tiny_ref, [{"role": "user", "content": "Go on"}],
                        max_new_tokens=LONG_GENERATION, **GREEDY)
        next(chunks), next(chunks)
        chunks.close()
        assert wait_for_generations(timeout_s=60) == 0
    assert 2 <= calls[0] < LONG_GENERATION / 2


# --- errors ----------------------------------------------------------------------------------
def test_wrong_key_is_a_clear_error_that_hides_the_key(remote_url, tiny_ref):
    with pytest.raises(ModelError) as caught:
        list(remote(remote_url, tiny_ref, CAPITAL_QUESTION, key="wrong-key", max_new_tokens=2))
    assert "401" in str(caught.value) and "wrong-key" not in str(caught.value)


def test_unknown_remote_model_is_model_not_found(remote_url):
    with pytest.raises(ModelNotFoundError) as caught:
        list(remote(remote_url, "no/such-model", CAPITAL_QUESTION, max_new_tokens=2))
    assert "no/such-model" in str(caught.value)


def test_rejected_parameters_are_invalid_input(remote_url, tiny_ref):
    with pytest.raises(InvalidInputError) as caught:  # not validated locally: the remote says no
        list(remote(remote_url, tiny_ref, CAPITAL_QUESTION, max_new_tokens=2, temperature=3.0))
    assert "temperature" in str(caught.value)


def test_a_prompt_too_long_for_the_remote_is_invalid_input(remote_url, tiny_ref):
    with pytest.raises(InvalidInputError) as caught:
        list(remote(remote_url, tiny_ref, [{"role": "user", "content": "word " * 2000}],
                    max_new_tokens=2))
    assert "too long" in str(caught.value)


@pytest.mark.parametrize("url", [
    f"http://127.0.0.1:{closed_port()}/v1",
    "ftp://example.invalid/v1",
    "",
])
def test_unreachable_or_malformed_url_is_a_clear_error(url, tiny_ref):
    with pytest.raises(PlaygroundError) as caught:
        list(remote(url, tiny_ref, CAPITAL_QUESTION, max_new_tokens=2))
    assert "remote" in str(caught.value).lower()


def test_wrong_base_url_path_says_to_check_it(remote_url, tiny_ref):
    with pytest.raises(ModelError) as caught:
        list(remote(remote_url.removesuffix("/v1") + "/api", tiny_ref, CAPITAL_QUESTION,
                    max_new_tokens=2))
    assert "base URL" in str(caught.value)


# --- the Chat tab through a remote server ----------------------------------------------------
def test_chat_tab_streams_from_the_remote_server(remote_url):
    """The app configured with a remote server answers in its Chat tab without loading a model."""
    from gradio_client import Client

    from modules.engine.model_cache import ModelCache
    from tests.conftest import make_settings

    local_cache = ModelCache(make_settings())
    with running_app(local_cache, remote_base_url=remote_url, remote_api_key=REMOTE_KEY,
                     remote_model=EMBEDDED_MODEL) as (url, *_):
        client = Client(url, verbose=False)
        result = client.predict(
            message="What is the capital of France?", system_prompt="", model=EMBEDDED_MODEL,
            max_new_tokens=12, temperature=0.0, top_p=0.9, top_k=50, repetition_penalty=1.0,
            do_sample=False, seed=None, api_name="/chat",
        )
        client.close()
    chatbot, _, _, _ = result
    assert chatbot[-1]["role"] == "assistant"
    assert chatbot[-1]["content"][0]["text"] == "The capital of France is Paris."
    assert "finish: stop" in chatbot[-1]["content"][1]["text"]  # the stats line under the reply
    assert local_cache.loaded_names() == []  # the reply came from the remote server


# --- /v1 through a remote server --------------------------------------------------------------
def test_v1_answers_from_the_remote_server(remote_url):
    """/v1 of an app configured with --remote-base-url forwards to that server: the same
    reply, and no model is loaded here (it used to ignore the setting)."""
    import httpx

    from modules.engine.model_cache import ModelCache
    from tests.conftest import make_settings

    local_cache = ModelCache(make_settings())
    with running_app(local_cache, remote_base_url=remote_url, remote_api_key=REMOTE_KEY,
                     remote_model=EMBEDDED_MODEL) as (url, *_):
        listed = httpx.get(url + "/v1/models").json()
        answer = httpx.post(url + "/v1/chat/completions", timeout=120, json={
            "messages": CAPITAL_QUESTION, "max_tokens": 12, "temperature": 0,
        })
        unknown = httpx.post(url + "/v1/chat/completions", timeout=30, json={
            "model": "not-served-there", "messages": CAPITAL_QUESTION,
        })
    assert [m["id"] for m in listed["data"]] == [EMBEDDED_MODEL]
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["model"] == EMBEDDED_MODEL
    assert body["choices"][0]["message"]["content"] == "The capital of France is Paris."
    assert body["choices"][0]["finish_reason"] == "stop"
    assert body["usage"]["completion_tokens"] > 0
    assert unknown.status_code == 404 and unknown.json()["error"]["param"] == "model"
    assert local_cache.loaded_names() == []


def test_v1_streams_from_the_remote_server_with_its_first_model(remote_url, tiny_ref):
    """No remote model configured: /v1 lists what the server lists and streams from it."""
    import json

    import httpx

    from modules.engine.model_cache import ModelCache
    from tests.conftest import make_settings

    local_cache = ModelCache(make_settings())
    with running_app(local_cache, remote_base_url=remote_url, remote_api_key=REMOTE_KEY) as (
        url, *_,
    ):
        served = [m["id"] for m in httpx.get(url + "/v1/models").json()["data"]]
        with httpx.stream("POST", url + "/v1/chat/completions", timeout=120, json={
            "model": tiny_ref, "messages": [{"role": "user", "content": "Go on"}],
            "max_tokens": 5, "temperature": 0, "stream": True,
        }) as response:
            lines = [line for line in response.iter_lines() if line.startswith("data:")]
    assert tiny_ref in served
    events = [json.loads(line[5:]) for line in lines[:-1]]
    assert lines[-1] == "data: [DONE]"
    assert events[-1]["choices"][0]["finish_reason"] == "length"
    assert "".join(e["choices"][0]["delta"].get("content", "") for e in events)
    assert local_cache.loaded_names() == []
