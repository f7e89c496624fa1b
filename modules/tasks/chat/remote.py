"""Chat through an OpenAI-compatible server (vLLM, TGI, llama.cpp server, Ollama, or
another copy of this app) instead of a local model: the remote `ChatBackend`.

`stream_remote_chat` yields the same `ChatChunk`s as `stream_chat` (generation.py), so
the chat tab and /v1 treat both alike. The HTTP stream is read on a helper thread: Stop (the
`cancel` event) or closing the generator returns at once, and the helper closes the
connection when the server sends its next line, which makes the server stop too.
"""

from __future__ import annotations

import json
import queue
import threading
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any

import anyio
import httpx

from modules.engine.callbacks import StatusCallback
from modules.tasks.chat.params import ChatChunk, GenerationParams, Usage
from modules.errors import InvalidInputError, ModelError, ModelNotFoundError
from modules.messages import message as keyed

CONNECT_TIMEOUT_S = 10.0
READ_TIMEOUT_S = 300.0  # a long prompt on a busy server can take minutes before its first token
POLL_INTERVAL_S = 0.05
SERVER_ERROR_CHARS = 300
OPENAI_FINISH_REASONS = {"stop", "length"}


class RemoteChatBackend:
    """Chat replies from an OpenAI-compatible server at `base_url` (usually ending in /v1)."""

    name = "remote"

    def __init__(self, base_url: str, api_key: str | None, model: str = "") -> None:
        self.base_url, self.api_key, self.model = base_url, api_key, (model or "").strip()

    @property
    def description(self) -> str:
        return keyed("chat.remote_description", model=self.model or keyed("chat.the_remote_model"),
                     where=_where(self.base_url)).english()

    @property
    def default_model(self) -> str:
        return self.model

    def models(self) -> list[str]:
        """The configured model, else what the server lists."""
        if self.model:
            return [self.model]
        return served_models(self.base_url, _headers(self.api_key))

    def is_ready(self, model: str | None = None) -> bool:
        return True  # the server holds its model; nothing loads here

    def prepare(self, model: str | None = None, on_status: StatusCallback | None = None) -> str:
        return self.description

    def context_window(self, model: str | None = None) -> int | None:
        return None  # an OpenAI-compatible server does not say

    def stream(self, messages: Sequence[dict[str, str]], params: GenerationParams,
               cancel: threading.Event | None = None, model: str | None = None,
               ) -> Iterator[ChatChunk]:
        return stream_remote_chat(self.base_url, self.api_key, (model or "").strip() or self.model,
                                  messages, params, cancel)

    def astream(self, messages: Sequence[dict[str, str]], params: GenerationParams,
                cancel: threading.Event | None = None, model: str | None = None,
                ) -> AsyncIterator[ChatChunk]:
        """`stream`, each chunk awaited on a pool thread (a token's wait here is the network's)."""
        return read_on_pool_threads(self.stream(messages, params, cancel, model))


async def read_on_pool_threads(chunks: Iterator[ChatChunk]) -> AsyncIterator[ChatChunk]:
    """A blocking iterator, each `next` (and the closing) on a pool thread, not the loop's."""
    try:
        while (chunk := await anyio.to_thread.run_sync(next, chunks, None)) is not None:
            yield chunk
    finally:
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(getattr(chunks, "close", lambda: None))


def _headers(api_key: str | None) -> dict[str, str]:
    headers = {"Accept": "text/event-stream"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    return headers


def stream_remote_chat(
    base_url: str,
    api_key: str | None,
    model: str,
    messages: Sequence[dict[str, str]],
    params: GenerationParams,
    cancel: threading.Event | None = None,
) -> Iterator[ChatChunk]:
    """Stream a reply from `{base_url}/chat/completions` (base_url usually ends in /v1).

    An empty `model` means the server's first model (`GET /models`): a vLLM or TGI
    server usually serves exactly one."""
    url = chat_completions_url(base_url)
    headers = _headers(api_key)
    model = (model or "").strip() or first_served_model(base_url, headers)
    request = build_request_body(model, messages, params)
    yield from _stream(url, headers, request, cancel or threading.Event())


def first_served_model(base_url: str, headers: dict[str, str]) -> str:
    """The first id that `GET {base_url}/models` lists."""
    return served_models(base_url, headers)[0]


def served_models(base_url: str, headers: dict[str, str]) -> list[str]:
    """The ids that `GET {base_url}/models` lists (at least one, or ModelNotFoundError)."""
    url = base_url.strip().rstrip("/") + "/models"
    try:
        response = httpx.get(url, headers=headers, timeout=CONNECT_TIMEOUT_S)
    except httpx.HTTPError as error:
        raise ModelError(keyed("chat.remote_unreachable", where=_where(url), kind=type(error).__name__)) from None
    if response.status_code >= 400:
        raise _http_error(response, "")
    listed = (_json_or_none(response) or {}).get("data") or []
    ids = [str(m["id"]) for m in listed if isinstance(m, dict) and m.get("id")]
    if not ids:
        raise ModelNotFoundError(keyed("chat.remote_no_models", where=_where(url)))
    return ids


def chat_completions_url(base_url: str) -> str:
    base = (base_url or "").strip().rstrip("/")
    if not base.startswith(("http://", "https://")):
        raise InvalidInputError(keyed("chat.remote_url_scheme"))
    return base + "/chat/completions"


def build_request_body(
    model: str, messages: Sequence[dict[str, str]], params: GenerationParams
) -> dict[str, Any]:
    """The OpenAI request for these settings. Only standard fields: strict servers
    (OpenAI itself) reject unknown ones, so top_k and repetition_penalty are not sent."""
    if not messages:
        raise InvalidInputError(keyed("chat.conversation_empty_type"))
    body: dict[str, Any] = {
        "model": model.strip(),
        "messages": [{"role": m["role"], "content": m["content"]} for m in messages],
        "stream": True,
        "stream_options": {"include_usage": True},
        "max_tokens": params.max_new_tokens,
        "temperature": params.temperature if params.do_sample else 0.0,
        "top_p": params.top_p if params.do_sample else 1.0,
    }
    if params.seed is not None:
        body["seed"] = params.seed
    if params.stop:
        body["stop"] = list(params.stop)
    return body


def _stream(
    url: str, headers: dict[str, str], body: dict[str, Any], cancel: threading.Event
) -> Iterator[ChatChunk]:
    events: queue.Queue[tuple[str, Any]] = queue.Queue()
    stop_reading = threading.Event()
    reader = threading.Thread(
        target=_read_events, args=(url, headers, body, events, stop_reading),
        name="remote-chat-reader", daemon=True,
    )
    started = time.perf_counter()
    reader.start()
    text, finish_reason, usage_fields, first_token_at = "", None, None, None
    content_events = 0
    try:
        while True:
            if cancel.is_set():
                yield ChatChunk(text=text, delta="", finish_reason="cancelled")
                return
            try:
                kind, value = events.get(timeout=POLL_INTERVAL_S)
            except queue.Empty:
                continue
            if kind == "error":
                raise value
            if kind == "done":
                break
            delta, reason, usage = _parse_event(value)
            usage_fields = usage or usage_fields
            finish_reason = reason or finish_reason
            if delta:
                content_events += 1
                first_token_at = first_token_at or time.perf_counter()
                text += delta
                yield ChatChunk(text=text, delta=delta)
        yield ChatChunk(
            text=text, delta="",
            finish_reason=finish_reason if finish_reason in OPENAI_FINISH_REASONS else "stop",
            usage=_usage(usage_fields, content_events, started, first_token_at,
                         time.perf_counter()),
        )
    finally:
        stop_reading.set()


def _read_events(
    url: str, headers: dict[str, str], body: dict[str, Any],
    events: queue.Queue, stop_reading: threading.Event,
) -> None:
    """Runs on the helper thread: put ("event", json) items, then ("done"|"error", ...)."""
    timeout = httpx.Timeout(CONNECT_TIMEOUT_S, read=READ_TIMEOUT_S)
    try:
        with httpx.Client(timeout=timeout) as client, client.stream(
            "POST", url, json=body, headers=headers
        ) as response:
            if response.status_code >= 400:
                response.read()
                events.put(("error", _http_error(response, body["model"])))
                return
            for line in response.iter_lines():
                if stop_reading.is_set():
                    return  # leaving the `with` closes the connection: the server stops
                data = _sse_data(line)
                if data is None:
                    continue
                if data == "[DONE]":
                    break
                events.put(("event", json.loads(data)))
        events.put(("done", None))
    except httpx.TimeoutException:
        events.put(("error", ModelError(keyed("chat.remote_timed_out", where=_where(url)))))
    except httpx.HTTPError as error:
        events.put(("error", ModelError(
            keyed("chat.remote_unreachable", where=_where(url), kind=type(error).__name__))))
    except json.JSONDecodeError:
        events.put(("error", ModelError(keyed("chat.remote_not_a_stream", where=_where(url)))))


def _sse_data(line: str) -> str | None:
    """The payload of a `data:` line; None for comments, blank lines and other fields."""
    if not line.startswith("data:"):
        return None
    return line[len("data:"):].strip()


def _parse_event(event: Any) -> tuple[str, str | None, dict | None]:
    """(text delta, finish reason, usage) from one chat.completion.chunk."""
    if not isinstance(event, dict):
        raise ModelError(keyed("chat.remote_malformed_event"))
    if event.get("error"):
        raise ModelError(keyed("chat.remote_failed", problem=_error_message(event)))
    choices = event.get("choices") or []
    choice = choices[0] if choices and isinstance(choices[0], dict) else {}
    delta = choice.get("delta") or {}
    content = delta.get("content") if isinstance(delta, dict) else None
    usage = event.get("usage")
    return (content if isinstance(content, str) else "",
            choice.get("finish_reason"),
            usage if isinstance(usage, dict) else None)


def _usage(fields: dict | None, content_events: int, started: float,
           first_token_at: float | None, finished: float) -> Usage:
    """The server's token counts, with timings measured here.

    A server that sends no counts (it ignored stream_options) gets an estimate: one
    token per streamed content event, as vLLM, TGI and llama.cpp stream them."""
    fields = fields or {}
    prompt = int(fields.get("prompt_tokens") or 0)
    completion = int(fields.get("completion_tokens") or content_events)
    generating = finished - first_token_at if first_token_at is not None else 0.0
    return Usage(
        prompt_tokens=prompt,
        completion_tokens=completion,
        total_tokens=int(fields.get("total_tokens") or prompt + completion),
        time_to_first_token_s=first_token_at - started if first_token_at is not None else None,
        tokens_per_second=completion / generating if completion and generating > 0 else None,
    )


def _http_error(response: httpx.Response, model: str) -> Exception:
    """An error status as a PlaygroundError carrying the server's own explanation."""
    status, where = response.status_code, _where(str(response.request.url))
    detail = _error_message(_json_or_none(response)) or response.text.strip()
    detail = detail[:SERVER_ERROR_CHARS] or response.reason_phrase
    if status in (401, 403):
        return ModelError(keyed("chat.remote_refused", where=where, status=status))
    if status == 404 and model and "model" in detail.lower():
        return ModelNotFoundError(keyed("chat.remote_no_such_model", where=where, model=model, problem=detail))
    if status == 404:
        return ModelError(keyed("chat.remote_not_found", where=where, path=response.request.url.path))
    if 400 <= status < 500:
        return InvalidInputError(keyed("chat.remote_rejected", problem=detail))
    return ModelError(keyed("chat.remote_http_failed", where=where, status=status, problem=detail))


def _json_or_none(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return None


def _error_message(body: Any) -> str:
    """The message of an OpenAI-shaped error body (or a bare {"error": "..."} one)."""
    if not isinstance(body, dict):
        return ""
    error = body.get("error", body)
    if isinstance(error, dict):
        return str(error.get("message") or error.get("detail") or "")
    return str(error or "")


def _where(url: str) -> str:
    """scheme://host:port only: never echo credentials or paths that may hold them."""
    parsed = httpx.URL(url)
    port = f":{parsed.port}" if parsed.port else ""
    return f"{parsed.scheme}://{parsed.host}{port}"
