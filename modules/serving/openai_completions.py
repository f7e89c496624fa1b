"""POST /v1/completions: raw prompts (no chat template), as evaluation harnesses send them.

lm-evaluation-harness's `local-completions` scores text with `echo: true`, `logprobs: 1`
and `max_tokens` 0 or 1: each prompt token's log-probability comes from one forward pass
over the prompt (`score_prompt`). Generation goes through the chat logic's
`stream_prompt`, so the sampling fields, stop strings and `logprobs` mean what they mean
in chat. Logprobs use the legacy shape (tokens, token_logprobs, top_logprobs, text_offset).
Local models only: a remote backend's raw completions are not forwarded.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.concurrency import run_in_threadpool

from modules.app_context import AppContext
from modules.engine.compute import on_request_thread
from modules.errors import PlaygroundError
from modules.serving import openai_api as v1
from modules.tasks.chat import ChatChunk, GenerationParams, Usage
from modules.tasks.chat.generation import astream_prompt
from modules.tasks.chat.logprobs import MAX_TOP_LOGPROBS, LogprobRecorder, TokenLogprob
from modules.tasks.completion import prepare_prompt_ids, prepare_raw_prompt, score_prompt

COMPLETION_FIELDS = v1.SAMPLING_FIELDS | {"prompt", "echo", "logprobs", "suffix", "best_of"}
MAX_PROMPTS = 32


@dataclass(frozen=True)
class CompletionRequest:
    model: str
    prompts: list[str | list[int]]
    params: GenerationParams
    generate: bool  # False for max_tokens 0: score the echoed prompt only
    echo: bool
    top_logprobs: int | None  # legacy integer `logprobs`; None when off
    stream: bool
    include_usage: bool


def add_completions(api: FastAPI, context: AppContext, require_key: Any) -> None:
    backend = context.chat_backend

    @api.post("/completions", dependencies=[require_key],
              openapi_extra=v1.schemas.request_body(v1.schemas.COMPLETION_REQUEST),
              responses=v1.schemas.responses(v1.schemas.TEXT_COMPLETION, streams=True))
    async def completions(request: Request):
        body = await v1._json_body(request)
        parsed = await run_in_threadpool(parse_completion_request, body, context)
        load = getattr(backend, "load", None)
        if load is None:
            raise v1.ApiError(400, "/v1/completions needs a local model (not --remote-base-url).")
        await run_in_threadpool(v1._prepare, backend, parsed.model)
        loaded = load(parsed.model)
        if parsed.stream:
            prompt = await run_in_threadpool(_prepare_prompt, loaded, parsed, parsed.prompts[0], context)
            return StreamingResponse(_sse(request, loaded, parsed, prompt),
                                     media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache"})
        choices, usage = [], Usage(0, 0, 0, None, None)
        for index, raw in enumerate(parsed.prompts):
            prompt = await run_in_threadpool(_prepare_prompt, loaded, parsed, raw, context)
            choice, used = await _complete(request, loaded, parsed, prompt, index)
            choices.append(choice)
            usage = Usage(usage.prompt_tokens + used.prompt_tokens,
                          usage.completion_tokens + used.completion_tokens,
                          usage.total_tokens + used.total_tokens, None, None,
                          usage.cached_tokens + used.cached_tokens)
        return JSONResponse({"id": f"cmpl-{uuid.uuid4().hex}", "object": "text_completion",
                             "created": int(time.time()), "model": parsed.model,
                             "system_fingerprint": None, "choices": choices,
                             "usage": v1._usage_body(usage)})


def parse_completion_request(body: dict[str, Any], context: AppContext) -> CompletionRequest:
    """Check a completions body; raise ApiError naming the bad field."""
    v1.log_unknown_fields(body, COMPLETION_FIELDS)
    for name in ("suffix",):
        if body.get(name) not in (None, ""):
            raise v1.ApiError(400, f"'{name}' is not supported by this server.", param=name)
    if v1._typed(body, "n", int, 1) != 1:
        raise v1.ApiError(400, "Only n=1 is supported on /v1/completions.", param="n")
    if v1._typed(body, "best_of", int, 1) != 1:
        raise v1.ApiError(400, "Only best_of=1 is supported.", param="best_of")
    backend = context.chat_backend
    model = body.get("model") or backend.default_model or v1._models(backend)[0]
    if not isinstance(model, str):
        raise v1.ApiError(400, "'model' must be a string.", param="model")
    echo = v1._typed(body, "echo", bool, False)
    top = v1._typed(body, "logprobs", int, None)
    if top is not None and not 0 <= top <= MAX_TOP_LOGPROBS:
        raise v1.ApiError(400, f"'logprobs' must be 0 to {MAX_TOP_LOGPROBS}.", param="logprobs")
    stream = v1._typed(body, "stream", bool, False)
    prompts = _prompts(body.get("prompt"))
    if stream and len(prompts) > 1:
        raise v1.ApiError(400, "Streaming takes one prompt.", param="prompt")
    score_only = body.get("max_tokens") == 0 and body.get("max_completion_tokens") is None
    if score_only and not echo:
        raise v1.ApiError(400, "'max_tokens' 0 needs 'echo': true (it scores the prompt).",
                          param="max_tokens")
    params = v1._generation_params({**body, "max_tokens": 1} if score_only else body,
                                   context.settings.max_new_tokens)
    stream_options = v1._typed(body, "stream_options", dict, None) or {}
    return CompletionRequest(v1._known_model(backend, model), prompts, params, not score_only,
                             echo, top, stream, stream and bool(stream_options.get("include_usage")))


def _prompts(prompt: Any) -> list[str | list[int]]:
    """A string, token ids, or a list of either (as lm-evaluation-harness sends them)."""
    if isinstance(prompt, str) or _is_ids(prompt):
        prompts = [prompt]
    elif isinstance(prompt, list) and prompt and all(isinstance(p, str) or _is_ids(p) for p in prompt):
        prompts = list(prompt)
    else:
        raise v1.ApiError(400, "'prompt' must be a string, a list of token ids, or a non-empty "
                          "list of those.", param="prompt")
    if len(prompts) > MAX_PROMPTS:
        raise v1.ApiError(400, f"At most {MAX_PROMPTS} prompts per request.", param="prompt")
    if any(len(p) == 0 for p in prompts):
        raise v1.ApiError(400, "A prompt is empty.", param="prompt")
    return prompts


def _is_ids(value: Any) -> bool:
    return (isinstance(value, list) and bool(value)
            and all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in value))


@dataclass(frozen=True)
class _Prompt:
    prepared: Any  # PreparedPrompt
    text: str
    scores: list[TokenLogprob | None]  # echoed prompt tokens' logprobs ([] unless asked)


@on_request_thread
def _prepare_prompt(loaded: Any, parsed: CompletionRequest, raw: str | list[int],
                    context: AppContext) -> _Prompt:
    try:
        if isinstance(raw, str):
            prepared = prepare_raw_prompt(loaded, raw, parsed.params.max_new_tokens,
                                          context.settings.max_input_tokens)
            text = raw
        else:
            prepared = prepare_prompt_ids(loaded, raw, parsed.params.max_new_tokens,
                                          context.settings.max_input_tokens)
            text = loaded.tokenizer.decode(raw)
        scores = []
        if parsed.echo and parsed.top_logprobs is not None:
            scores = score_prompt(loaded, prepared.input_ids, parsed.top_logprobs)
        return _Prompt(prepared, text, scores)
    except PlaygroundError as error:
        api_error = v1.api_error_for(error)
        if api_error.param == "messages":
            api_error.param = "prompt"
        raise api_error from None


def _start(loaded: Any, parsed: CompletionRequest, prompt: _Prompt, cancel: threading.Event):
    recorder = None
    params = parsed.params
    if parsed.top_logprobs is not None:
        tokenizer = loaded.tokenizer
        recorder = LogprobRecorder(tokenizer, parsed.top_logprobs, frozenset(tokenizer.all_special_ids))
        params = replace(params, logits_processors=(recorder,))
    return astream_prompt(loaded, prompt.prepared, params, cancel), recorder


async def _complete(request: Request, loaded: Any, parsed: CompletionRequest, prompt: _Prompt,
                    index: int) -> tuple[dict[str, Any], Usage]:
    prompt_tokens = len(prompt.prepared.input_ids)
    text, reason, entries, generated, cached = "", "length", [], 0, 0
    if parsed.generate:
        cancel = threading.Event()
        chunks, recorder = _start(loaded, parsed, prompt, cancel)
        try:
            last = await v1._while_connected(request, cancel, lambda: _first_then_rest(chunks))
        finally:
            await v1._close(chunks, cancel)
        text, reason = last.text, v1._openai_finish_reason(last.finish_reason)
        generated = last.usage.completion_tokens if last.usage else 0
        cached = last.usage.cached_tokens if last.usage else 0
        metrics_for_request(request).observe_usage(last.usage)
        entries = recorder.entries if recorder else []
    logprobs = None
    if parsed.top_logprobs is not None:
        echoed = prompt.scores if parsed.echo else []
        logprobs = legacy_logprobs(echoed, entries, prompt.text if parsed.echo else "")
    choice = {"index": index, "text": (prompt.text if parsed.echo else "") + text,
              "logprobs": logprobs, "finish_reason": reason}
    return choice, Usage(prompt_tokens, generated, prompt_tokens + generated, None, None, cached)


async def _first_then_rest(chunks) -> ChatChunk:
    return await v1._read_to_end(await v1._next_chunk(chunks), chunks)


def legacy_logprobs(prompt_scores: list[TokenLogprob | None], generated: list[TokenLogprob],
                    echoed_text: str) -> dict[str, Any]:
    """The completions API's logprobs: parallel lists, offsets into the choice's text."""
    tokens, token_logprobs, top_logprobs, offsets = [], [], [], []
    offset = 0
    for index, entry in enumerate(prompt_scores):
        token = entry.token if entry else None
        if token is None:  # the first prompt token has no logprob: take its text from the prompt
            token = ""
        tokens.append(token)
        token_logprobs.append(entry.logprob if entry else None)
        top_logprobs.append(_top_by_text(entry) if entry else None)
        offsets.append(offset)
        offset += len(token)
    if prompt_scores:  # the first token's text is what the scored ones leave at the start
        first = max(0, len(echoed_text) - sum(len(t) for t in tokens))
        tokens[0] = echoed_text[:first]
        offsets = [0] + [o + first for o in offsets[1:]]
        offset = len(echoed_text)
    for entry in generated:
        tokens.append(entry.token)
        token_logprobs.append(entry.logprob)
        top_logprobs.append(_top_by_text(entry))
        offsets.append(offset)
        offset += len(entry.token)
    return {"tokens": tokens, "token_logprobs": token_logprobs, "top_logprobs": top_logprobs,
            "text_offset": offsets}


async def _sse(request: Request, loaded: Any, parsed: CompletionRequest,
               prompt: _Prompt) -> AsyncIterator[str]:
    completion_id, created = f"cmpl-{uuid.uuid4().hex}", int(time.time())

    def event(text: str, logprobs: dict | None, reason: str | None) -> str:
        payload = {"id": completion_id, "object": "text_completion", "created": created,
                   "model": parsed.model, "system_fingerprint": None,
                   "choices": [{"index": 0, "text": text, "logprobs": logprobs,
                                "finish_reason": reason}]}
        if parsed.include_usage:
            payload["usage"] = None
        return v1._sse(payload)

    wants_logprobs = parsed.top_logprobs is not None
    prompt_tokens = len(prompt.prepared.input_ids)
    if parsed.echo:
        yield event(prompt.text, legacy_logprobs(prompt.scores, [], prompt.text)
                    if wants_logprobs else None, None)
    offset = len(prompt.text) if parsed.echo else 0
    generated, cached, reason = 0, 0, "length"
    if parsed.generate:
        cancel = threading.Event()
        chunks, recorder = _start(loaded, parsed, prompt, cancel)
        try:
            while True:
                chunk = await v1._next_chunk(chunks)
                if chunk.delta or chunk.finish_reason is None:
                    logprobs = None
                    if recorder is not None:
                        logprobs = _shifted(legacy_logprobs([], recorder.drain(), ""), offset)
                    yield event(chunk.delta, logprobs, None)
                    offset += len(chunk.delta)
                if chunk.finish_reason is not None:
                    reason = v1._openai_finish_reason(chunk.finish_reason)
                    generated = chunk.usage.completion_tokens if chunk.usage else 0
                    cached = chunk.usage.cached_tokens if chunk.usage else 0
                    metrics_for_request(request).observe_usage(chunk.usage)
                    break
        except v1.ApiError as error:
            yield v1._sse(error.body())
            return
        finally:
            await v1._close(chunks, cancel)
    yield event("", None, reason)
    if parsed.include_usage:
        usage = Usage(prompt_tokens, generated, prompt_tokens + generated, None, None, cached)
        yield v1._sse({"id": completion_id, "object": "text_completion", "created": created,
                       "model": parsed.model, "choices": [], "usage": v1._usage_body(usage)})
    yield "data: [DONE]\n\n"


def metrics_for_request(request: Request):
    """The app's Metrics (create_api puts them on the /v1 app's state)."""
    return request.app.state.metrics


def _top_by_text(entry: TokenLogprob) -> dict[str, float] | None:
    """{token text: logprob}; where two tokens read alike, the likelier one's value."""
    if not entry.top:
        return None
    top: dict[str, float] = {}
    for alternative in entry.top:  # best first
        top.setdefault(alternative.token, alternative.logprob)
    return top


def _shifted(logprobs: dict[str, Any], offset: int) -> dict[str, Any]:
    return {**logprobs, "text_offset": [o + offset for o in logprobs["text_offset"]]}
