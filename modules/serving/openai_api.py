"""The OpenAI-compatible HTTP API (`/v1`), served next to the Gradio page.

Real clients (the `openai` package, LangChain, curl, other chat UIs) speak the
chat-completions protocol. This module translates it to and from `context.chat_backend`,
the backend the Chat tab uses too: the local model cache, or the remote server set with
--remote-base-url. Errors map to HTTP statuses by their type (`api_error_for`). It
imports no gradio: `create_api(context)` is a plain FastAPI app, mounted at /v1 by
`modules.serving.launch.create_app`.
"""

from __future__ import annotations

import json
import logging
import secrets
import threading
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, replace
from typing import Any, TypeVar

import anyio
from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from modules.app_context import AppContext
from modules.engine.batching import SchedulerBusyError
from modules.engine.compute import on_request_thread
from modules.errors import (
    InvalidInputError,
    InvalidModelError,
    InvalidParameterError,
    ModelNotFoundError,
    ModelOfflineError,
    ModelOutOfMemoryError,
    PlaygroundError,
    PromptTooLongError,
)
from modules.serving import openai_schemas as schemas
from modules.serving.metrics import RequestMetricsMiddleware, metrics_for
from modules.tasks.chat import ChatBackend, ChatChunk, GenerationParams, Usage
from modules.tasks.structured import json_constraint, schema_for
from modules.tasks.chat.logprobs import MAX_TOP_LOGPROBS, LogprobRecorder, TokenLogprob

log = logging.getLogger(__name__)
T = TypeVar("T")

OWNER = "transformers-playground"
ROLES = {"system", "user", "assistant"}
ROLE_ALIASES = {"developer": "system"}  # newer OpenAI clients send "developer"
KIND_WORDS = {int: "an integer", bool: "true or false", dict: "an object"}
# GenerationParams field -> the request field a client knows it by.
PARAM_NAMES = {"max_new_tokens": "max_tokens"}
SAMPLING_FIELDS = {"max_tokens", "max_completion_tokens", "temperature", "top_p", "top_k",
                   "repetition_penalty", "seed", "stop", "n", "presence_penalty",
                   "frequency_penalty", "user", "stream", "stream_options", "model"}
CHAT_FIELDS = SAMPLING_FIELDS | {"messages", "logprobs", "top_logprobs", "tools", "functions",
                                 "tool_choice", "response_format"}
_unknown_fields_logged: set[str] = set()
MAX_CHOICES = 4  # n: replies generated side by side in one batch
RETRY_AFTER_S = 2  # a queue full of short replies drains in seconds on a small model


class ApiError(Exception):
    """An error answered in OpenAI's JSON shape with an HTTP status."""

    def __init__(self, status: int, message: str, type_: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = (
            status, message, type_, param, code)
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type,
                          "param": self.param, "code": self.code}}


@dataclass(frozen=True)
class ChatRequest:
    """A checked /v1/chat/completions request."""

    model: str
    messages: list[dict[str, str]]
    params: GenerationParams
    stream: bool
    include_usage: bool
    top_logprobs: int | None = None  # None: no logprobs asked for
    response_format: dict[str, Any] | None = None  # checked; JSON ones need a local model
    n: int = 1  # choices: generated side by side in the model's batch


# --- the app ---------------------------------------------------------------
def create_api(context: AppContext) -> FastAPI:
    """The /v1 app: models and chat completions on `context`'s cache and settings."""
    api = FastAPI(title="Transformers Playground OpenAI-compatible API",
                  docs_url=None, redoc_url=None, openapi_url="/openapi.json")
    api.add_exception_handler(ApiError, _api_error_response)
    api.add_exception_handler(StarletteHTTPException, _http_error_response)
    api.add_exception_handler(Exception, _unexpected_error_response)
    api.add_middleware(RequestMetricsMiddleware, context=context)
    metrics = api.state.metrics = metrics_for(context)  # /v1/completions reports there too
    require_key = Depends(_key_checker(context.settings.api_key))
    backend = context.chat_backend

    @api.get("/models", dependencies=[require_key], responses=schemas.responses(schemas.MODEL_LIST))
    def list_models() -> dict[str, Any]:
        return {"object": "list", "data": [_model_card(m) for m in _models(backend)]}

    @api.get("/models/{model_id:path}", dependencies=[require_key],
             responses=schemas.responses(schemas.MODEL))
    def get_model(model_id: str) -> dict[str, Any]:
        return _model_card(_known_model(backend, model_id))

    @api.post("/chat/completions", dependencies=[require_key],
              openapi_extra=schemas.request_body(schemas.CHAT_REQUEST),
              responses=schemas.responses(schemas.CHAT_COMPLETION, streams=True))
    async def chat_completions(request: Request):
        chat = await run_in_threadpool(parse_chat_request, await _json_body(request), context)
        await run_in_threadpool(_prepare, backend, chat.model)
        if chat.n > 1:
            return await _several_choices(request, backend, chat, metrics)
        recorder = _recorder(backend, chat)
        constraint = await run_in_threadpool(_constraint, backend, chat)
        processors = tuple(p for p in (constraint, recorder) if p is not None)
        if processors:
            chat = replace(chat, params=replace(chat.params, logits_processors=processors))
        cancel = threading.Event()
        chunks = backend.astream(chat.messages, chat.params, cancel, model=chat.model)
        streaming = False
        try:
            # The first chunk is read before answering, so a bad request gets a real status.
            first = await _while_connected(request, cancel, lambda: _next_chunk(chunks))
            headers = {"X-Playground-Notice": _header_safe(first.notice)} if first.notice else {}
            if chat.stream:
                streaming = True  # from here the event stream closes `chunks`
                return StreamingResponse(
                    _sse_stream(chat, first, chunks, cancel, recorder, metrics.observe_usage),
                    media_type="text/event-stream",
                    headers={**headers, "Cache-Control": "no-cache"},
                )
            last = await _while_connected(request, cancel, lambda: _read_to_end(first, chunks))
            metrics.observe_usage(last.usage)
            return JSONResponse(_completion_body(chat.model, last, recorder), headers=headers)
        finally:
            if not streaming:
                await _close(chunks, cancel)

    from modules.serving.openai_completions import add_completions  # it builds on this module

    add_completions(api, context, require_key)
    return api


async def _several_choices(request: Request, backend: ChatBackend, chat: ChatRequest,
                          metrics) -> JSONResponse:
    """n replies to one request, generated at once (they share the model's batch); a seed
    gives choice i the seed + i, so the choices differ and repeat."""
    cancel = threading.Event()
    runs = []
    for index in range(chat.n):
        recorder = _recorder(backend, chat)
        constraint = await run_in_threadpool(_constraint, backend, chat)
        seed = None if chat.params.seed is None else (chat.params.seed + index) % (2**32)
        params = replace(chat.params, seed=seed,
                         logits_processors=tuple(p for p in (constraint, recorder) if p is not None))
        runs.append((backend.astream(chat.messages, params, cancel, model=chat.model), recorder))
    lasts: list[ChatChunk | None] = [None] * chat.n

    async def read_all() -> None:
        async def read(index: int) -> None:
            chunks = runs[index][0]
            lasts[index] = await _read_to_end(await _next_chunk(chunks), chunks)

        try:
            async with anyio.create_task_group() as group:
                for index in range(chat.n):
                    group.start_soon(read, index)
        except BaseExceptionGroup as errors:  # a refusal from one choice is the answer
            raise next((e for e in errors.exceptions if isinstance(e, ApiError)), errors) from None

    try:
        await _while_connected(request, cancel, read_all)  # which passes an ApiError on as it is
    finally:
        for chunks, _ in runs:
            await _close(chunks, cancel)
    bodies = [_completion_body(chat.model, last, recorder) for last, (_, recorder) in zip(lasts, runs)]
    for last in lasts:
        metrics.observe_usage(last.usage)
    body = bodies[0]
    body["choices"] = [{**b["choices"][0], "index": i} for i, b in enumerate(bodies)]
    completion = sum(last.usage.completion_tokens for last in lasts if last.usage)
    prompt = lasts[0].usage.prompt_tokens if lasts[0].usage else 0
    cached = lasts[0].usage.cached_tokens if lasts[0].usage else 0
    body["usage"] = _usage_body(Usage(prompt, completion, prompt + completion, None, None, cached))
    return JSONResponse(body)


def _key_checker(api_key: str | None):
    """A dependency that demands `Authorization: Bearer <api_key>` when a key is set."""

    def check(request: Request) -> None:
        if api_key is None:
            return
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not secrets.compare_digest(
            given.strip().encode(), api_key.encode()
        ):
            raise ApiError(401, "Missing or wrong API key: send 'Authorization: Bearer <key>'.",
                           code="invalid_api_key")

    return check


# --- request parsing ---------------------------------------------------------
async def _json_body(request: Request) -> dict[str, Any]:
    try:
        body = json.loads(await request.body())
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ApiError(400, "The request body is not valid JSON.") from None
    if not isinstance(body, dict):
        raise ApiError(400, "The request body must be a JSON object.")
    return body


def parse_chat_request(body: dict[str, Any], context: AppContext) -> ChatRequest:
    """Check a chat-completions body; raise ApiError (400/404) naming the bad field."""
    log_unknown_fields(body, CHAT_FIELDS)
    unsupported = [f for f in ("tools", "functions", "tool_choice")
                   if body.get(f) not in (None, False, [])]
    if unsupported:
        raise ApiError(400, f"'{unsupported[0]}' is not supported by this server.",
                       param=unsupported[0])
    response_format = body.get("response_format")
    try:
        schema_for(response_format)
    except InvalidParameterError as error:
        raise ApiError(400, str(error), param="response_format") from None
    backend = context.chat_backend
    model = body.get("model") or backend.default_model or _models(backend)[0]
    if not isinstance(model, str):
        raise ApiError(400, "'model' must be a string.", param="model")
    stream = _typed(body, "stream", bool, False)
    stream_options = _typed(body, "stream_options", dict, None) or {}
    return ChatRequest(
        model=_known_model(backend, model),
        messages=parse_messages(body.get("messages")),
        params=_generation_params(body, context.settings.max_new_tokens),
        stream=stream,
        include_usage=stream and bool(stream_options.get("include_usage")),
        top_logprobs=_chat_logprobs(body),
        n=_choices(body, stream),
        response_format=response_format if isinstance(response_format, dict) else None,
    )


def _choices(body: dict[str, Any], stream: bool) -> int:
    n = _typed(body, "n", int, 1)
    if not 1 <= n <= MAX_CHOICES:
        raise ApiError(400, f"'n' must be 1 to {MAX_CHOICES}.", param="n")
    if n > 1 and stream:
        raise ApiError(400, "n > 1 is not streamed here: ask without 'stream'.", param="n")
    return n


def _chat_logprobs(body: dict[str, Any]) -> int | None:
    """`logprobs: true` and `top_logprobs` (0-20) -> how many alternatives; None when off."""
    wanted = _typed(body, "logprobs", bool, False)
    top = _typed(body, "top_logprobs", int, None)
    if top is not None and not 0 <= top <= MAX_TOP_LOGPROBS:
        raise ApiError(400, f"'top_logprobs' must be 0 to {MAX_TOP_LOGPROBS}.", param="top_logprobs")
    if top and not wanted:
        raise ApiError(400, "'top_logprobs' needs 'logprobs': true.", param="top_logprobs")
    return (top or 0) if wanted else None


def log_unknown_fields(body: dict[str, Any], known: set[str]) -> None:
    """Unknown request fields are ignored, as OpenAI-compatible servers do; each is logged once."""
    for name in body.keys() - known - _unknown_fields_logged:
        _unknown_fields_logged.add(name)
        log.info("Ignoring the request field %r (not used by this server).", name[:80])


def parse_messages(messages: Any) -> list[dict[str, str]]:
    """OpenAI messages -> [{"role", "content"}] with text content only."""
    if not isinstance(messages, list) or not messages:
        raise ApiError(400, "'messages' must be a non-empty list.", param="messages")
    parsed = []
    for index, message in enumerate(messages):
        where = f"messages[{index}]"
        if not isinstance(message, dict):
            raise ApiError(400, f"{where} must be an object.", param=where)
        role = message.get("role")
        role = ROLE_ALIASES.get(role, role) if isinstance(role, str) else None
        if role not in ROLES:
            raise ApiError(400, f"{where}.role must be one of system, user, assistant "
                           f"(got {str(message.get('role'))[:40]!r}).", param=f"{where}.role")
        parsed.append({"role": role, "content": _text_content(message.get("content"), where)})
    return parsed


def _text_content(content: Any, where: str) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # [{"type": "text", "text": "..."}]
        parts = []
        for part in content:
            if not (isinstance(part, dict) and part.get("type") == "text"
                    and isinstance(part.get("text"), str)):
                raise ApiError(400, f"{where}.content: only text parts are supported.",
                               param=f"{where}.content")
            parts.append(part["text"])
        return "".join(parts)
    raise ApiError(400, f"{where}.content must be a string or a list of text parts.",
                   param=f"{where}.content")


def _generation_params(body: dict[str, Any], max_new_tokens_limit: int) -> GenerationParams:
    """Sampling settings; ranges are checked by `GenerationParams.validated`, as in the tab.

    Omitted fields take `GenerationParams`' defaults (the one source the Chat tab starts
    from too; repetition_penalty 1.0, i.e. off, as in OpenAI's API), max_tokens the
    server's cap; temperature 0 means greedy."""
    defaults = GenerationParams()

    def given(name: str, default: Any) -> Any:
        value = body.get(name)
        return default if value is None else value

    stop = given("stop", [])
    if not isinstance(stop, (str, list)):
        raise ApiError(400, "'stop' must be a string or a list of strings.", param="stop")
    for penalty in ("presence_penalty", "frequency_penalty"):
        value = body.get(penalty)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise ApiError(400, f"'{penalty}' must be a number.", param=penalty)
        if value:  # transformers has no such processor; repetition_penalty is the near relative
            raise ApiError(400, f"'{penalty}' is not supported (only 0): transformers has no "
                           "additive penalty; use 'repetition_penalty' (e.g. 1.1) instead.",
                           param=penalty)
    params = GenerationParams(
        max_new_tokens=given("max_completion_tokens", given("max_tokens", max_new_tokens_limit)),
        temperature=given("temperature", defaults.temperature),
        top_p=given("top_p", defaults.top_p),
        top_k=given("top_k", defaults.top_k),  # top_k, repetition_penalty: as vLLM accepts them
        repetition_penalty=given("repetition_penalty", defaults.repetition_penalty),
        seed=body.get("seed"),
        stop=(stop,) if isinstance(stop, str) else tuple(stop),
    )
    try:
        return params.validated(max_new_tokens_limit)
    except InvalidParameterError as error:
        param = PARAM_NAMES.get(error.param, error.param)
        raise ApiError(400, str(error).replace(error.param, param), param=param) from None
    except (InvalidInputError, TypeError) as error:
        raise ApiError(400, f"Invalid sampling settings: {error}") from None


def _typed(body: dict[str, Any], name: str, kind: type, default: Any) -> Any:
    value = body.get(name)
    if value is None:
        return default
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ApiError(400, f"'{name}' must be {KIND_WORDS[kind]}.", param=name)
    return value


# --- models ------------------------------------------------------------------
def _models(backend: ChatBackend) -> list[str]:
    try:
        return backend.models()
    except PlaygroundError as error:  # a remote server that cannot list its models
        raise api_error_for(error) from None


def _known_model(backend: ChatBackend, model: str) -> str:
    choices = _models(backend)
    if model not in choices:
        raise ApiError(404, f"The model '{model[:200]}' does not exist here; "
                       f"GET /v1/models lists the {len(choices)} available.",
                       param="model", code="model_not_found")
    return model


def _model_card(model: str) -> dict[str, Any]:
    return {"id": model, "object": "model", "created": 0, "owned_by": OWNER}


def _recorder(backend: ChatBackend, chat: ChatRequest) -> LogprobRecorder | None:
    if chat.top_logprobs is None:
        return None
    make = getattr(backend, "logprob_recorder", None)
    if make is None:  # a remote server's own logprobs are not forwarded
        raise ApiError(400, "'logprobs' needs a local model (not --remote-base-url).",
                       param="logprobs")
    return make(chat.model, chat.top_logprobs)


@on_request_thread
def _constraint(backend: ChatBackend, chat: ChatRequest):
    """The response_format's constrained-decoding processor (compiling a schema takes time)."""
    if schema_for(chat.response_format) is None:
        return None
    load = getattr(backend, "load", None)
    if load is None:
        raise ApiError(400, "A JSON response_format needs a local model (not --remote-base-url).",
                       param="response_format")
    try:
        return json_constraint(load(chat.model), chat.response_format)
    except InvalidParameterError as error:
        raise ApiError(400, str(error), param="response_format") from None


def logprobs_content(entries: list[TokenLogprob]) -> list[dict[str, Any]]:
    """OpenAI's chat `logprobs.content`: token, logprob, bytes, top_logprobs."""
    return [{"token": e.token, "logprob": e.logprob, "bytes": e.bytes,
             "top_logprobs": [{"token": t.token, "logprob": t.logprob, "bytes": t.bytes}
                              for t in e.top]}
            for e in entries]


@on_request_thread
def _prepare(backend: ChatBackend, model: str) -> None:
    """Load the model before answering, so a load failure gets its own status."""
    try:
        backend.prepare(model)
    except PlaygroundError as error:
        raise api_error_for(error) from None


def api_error_for(error: PlaygroundError) -> ApiError:
    """The HTTP status and OpenAI error fields for a PlaygroundError, by its type."""
    message = str(error)
    if isinstance(error, SchedulerBusyError):  # the one admission gate, shared with the page
        return ApiError(429, message, type_="server_error", code="server_busy",
                        headers={"Retry-After": str(RETRY_AFTER_S)})
    if isinstance(error, (ModelNotFoundError, InvalidModelError)):
        return ApiError(404, message, param="model", code="model_not_found")
    if isinstance(error, (ModelOfflineError, ModelOutOfMemoryError)):
        return ApiError(503, message, type_="server_error", code="model_unavailable")
    if isinstance(error, PromptTooLongError):
        return ApiError(400, message, param="messages", code="context_length_exceeded")
    if isinstance(error, InvalidParameterError):
        param = PARAM_NAMES.get(error.param, error.param)
        return ApiError(400, message.replace(error.param, param), param=param)
    if isinstance(error, InvalidInputError):
        return ApiError(400, message, param="messages")
    return ApiError(500, message, type_="server_error")


# --- generation ------------------------------------------------------------------
async def _next_chunk(chunks: AsyncIterator[ChatChunk]) -> ChatChunk:
    """The next chunk (the backend's `astream` does not block the loop); errors mapped by
    `api_error_for`."""
    try:
        chunk = await anext(chunks, None)
    except PlaygroundError as error:
        raise api_error_for(error) from None
    if chunk is None:
        raise ApiError(500, "The model produced no reply.", type_="server_error")
    return chunk


async def _read_to_end(chunk: ChatChunk, chunks: AsyncIterator[ChatChunk]) -> ChatChunk:
    while chunk.finish_reason is None:
        chunk = await _next_chunk(chunks)
    return chunk


async def _while_connected(request: Request, cancel: threading.Event,
                           read: Callable[[], Awaitable[T]]) -> T:
    """Await `read()`; if the client hangs up meanwhile, set `cancel` so generation stops."""
    result, error = None, None
    async with anyio.create_task_group() as watchers:
        watchers.start_soon(_cancel_on_disconnect, request, cancel)
        try:
            result = await read()
        except ApiError as raised:  # re-raised below, not wrapped in an ExceptionGroup
            error = raised
        watchers.cancel_scope.cancel()
    if error is not None:
        raise error
    return result


async def _cancel_on_disconnect(request: Request, cancel: threading.Event) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass
    cancel.set()


async def _close(chunks: AsyncIterator[ChatChunk], cancel: threading.Event) -> None:
    """Stop generation and release the model, even while being cancelled ourselves."""
    cancel.set()
    with anyio.CancelScope(shield=True):
        await chunks.aclose()


async def _sse_stream(chat: ChatRequest, first: ChatChunk, chunks: AsyncIterator[ChatChunk],
                      cancel: threading.Event,
                      recorder: LogprobRecorder | None = None,
                      on_usage: Callable[[Usage | None], None] = lambda usage: None,
                      ) -> AsyncIterator[str]:
    """Server-sent events: role, content deltas, finish_reason, [usage], [DONE].

    Starlette cancels this generator when the client disconnects; `finally` then
    stops generation."""
    completion_id, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())

    def event(delta: dict[str, str], finish_reason: str | None = None) -> str:
        # Each event carries the tokens recorded since the last one (text and tokens are
        # cut differently: a token can arrive an event before its text).
        logprobs = None
        if recorder is not None:
            logprobs = {"content": logprobs_content(recorder.drain()), "refusal": None}
        choice = {"index": 0, "delta": delta, "logprobs": logprobs, "finish_reason": finish_reason}
        payload = _chunk_body(completion_id, created, chat.model, [choice])
        if chat.include_usage:
            payload["usage"] = None
        return _sse(payload)

    chunk = first
    try:
        yield event({"role": "assistant", "content": ""})
        while True:
            if chunk.delta:
                yield event({"content": chunk.delta})
            if chunk.finish_reason is not None:
                break
            chunk = await _next_chunk(chunks)
        on_usage(chunk.usage)
        yield event({}, _openai_finish_reason(chunk.finish_reason))
        if chat.include_usage:
            yield _sse({**_chunk_body(completion_id, created, chat.model, []),
                        "usage": _usage_body(chunk.usage)})
        yield "data: [DONE]\n\n"
    except ApiError as error:  # the status line is already sent: report in the stream
        yield _sse(error.body())
    except Exception:
        log.exception("Unexpected error while streaming a chat completion")
        yield _sse(ApiError(500, "Internal server error.", type_="server_error").body())
    finally:
        await _close(chunks, cancel)


def _sse(payload: dict[str, Any]) -> str:
    return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n"


def _chunk_body(completion_id: str, created: int, model: str,
                choices: list[dict[str, Any]]) -> dict[str, Any]:
    return {"id": completion_id, "object": "chat.completion.chunk", "created": created,
            "model": model, "system_fingerprint": None, "choices": choices}


def _completion_body(model: str, last: ChatChunk,
                     recorder: LogprobRecorder | None = None) -> dict[str, Any]:
    logprobs = None
    if recorder is not None:
        logprobs = {"content": logprobs_content(recorder.entries), "refusal": None}
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "system_fingerprint": None,
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": last.text, "refusal": None},
            "logprobs": logprobs,
            "finish_reason": _openai_finish_reason(last.finish_reason),
        }],
        "usage": _usage_body(last.usage),
    }


def _openai_finish_reason(reason: str | None) -> str:
    return reason if reason in ("stop", "length") else "stop"


def _usage_body(usage: Usage | None) -> dict[str, int] | None:
    if usage is None:
        return None
    return {"prompt_tokens": usage.prompt_tokens, "completion_tokens": usage.completion_tokens,
            "total_tokens": usage.total_tokens,
            "prompt_tokens_details": {"cached_tokens": usage.cached_tokens}}


def _header_safe(text: str) -> str:
    return text.encode("ascii", "replace").decode()[:500]


# --- error responses ----------------------------------------------------------
async def _api_error_response(request: Request, error: ApiError) -> JSONResponse:
    return JSONResponse(error.body(), status_code=error.status, headers=error.headers)


async def _http_error_response(request: Request, error: StarletteHTTPException) -> JSONResponse:
    kind = "not_found" if error.status_code == 404 else None
    return JSONResponse(
        ApiError(error.status_code, str(error.detail), code=kind).body(),
        status_code=error.status_code,
    )


async def _unexpected_error_response(request: Request, error: Exception) -> JSONResponse:
    log.exception("Unexpected error in %s %s", request.method, request.url.path)
    return JSONResponse(
        ApiError(500, "Internal server error.", type_="server_error").body(), status_code=500
    )
