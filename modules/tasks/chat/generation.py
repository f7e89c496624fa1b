"""Chat generation: a conversation in, a streamed reply out (no UI here).

`stream_chat` fits the conversation into the window (prompt.py), hands it to
the model's batch scheduler, streams it through a `TextIteratorStreamer` that hands out each
token's text as soon as it is settled (token_streamer.py), and yields the growing
reply as `ChatChunk`s, ending with one that carries the finish reason and usage.
Callers reach it through `LocalChatBackend` (backends.py).

* Stop means stop: setting `cancel`, or closing the generator (a client that
  went away), takes the sequence out of the batch at the next step.
* Every reply on one model runs in one shared batch (modules/engine/batching.py):
  new requests join between decode steps, on the process's main thread when the
  app lends it (modules/engine/compute.py: torch decodes about twice as fast there).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import aclosing

import anyio

import torch

from modules.engine.compute import on_request_thread
from modules.engine.batching import FINISH_EOS, Sequence, live_sequences, scheduler_for
from modules.engine.model_cache import LoadedModel
from modules.engine.sampling import Sampling
from modules.errors import ModelError, ModelOutOfMemoryError, PlaygroundError
from modules.messages import message as keyed
from modules.tasks.chat.params import (
    FINISH_CANCELLED,
    FINISH_LENGTH,
    FINISH_STOP,
    ChatChunk,
    GenerationParams,
    Usage,
)
from modules.tasks.chat.processors import tell_token_chosen, with_request_processors
from modules.tasks.chat.token_streamer import AsyncTokenTextStreamer, TokenTextStreamer
from modules.tasks.chat.branching import reply_tokens
from modules.tasks.chat.prompt import PreparedPrompt, prepare_prompt

log = logging.getLogger(__name__)

GENERATE_THREAD_PREFIX = "chat-generate"


# --- generation --------------------------------------------------------------
def live_generation_threads() -> int:
    """How many generations are queued or running now (tests check none are left behind)."""
    return live_sequences()


def _sampling(params: GenerationParams) -> Sampling:
    if not params.samples:
        return Sampling(repetition_penalty=params.repetition_penalty)
    return Sampling(do_sample=True, temperature=params.temperature, top_k=params.top_k,
                    top_p=params.top_p, repetition_penalty=params.repetition_penalty,
                    seed=params.seed)


def stream_chat(
    loaded: LoadedModel,
    messages: list[dict[str, str]],
    params: GenerationParams,
    cancel: threading.Event | None = None,
    max_input_tokens: int | None = None,
) -> Iterator[ChatChunk]:
    """Stream the assistant's reply to `messages`; the last chunk has finish_reason and usage."""
    requested_at = time.perf_counter()
    prompt = prepare_prompt(loaded, messages, params.max_new_tokens, max_input_tokens,
                            params.template_options)
    yield from stream_prompt(loaded, prompt, params, cancel, requested_at)


async def astream_chat(
    loaded: LoadedModel,
    messages: list[dict[str, str]],
    params: GenerationParams,
    cancel: threading.Event | None = None,
    max_input_tokens: int | None = None,
) -> AsyncIterator[ChatChunk]:
    """`stream_chat` for a reader on an event loop: the same chunks, each handed to the loop
    by the decode thread itself (no pool thread per token); the prompt is prepared on a
    pool thread."""
    requested_at = time.perf_counter()
    prompt = await anyio.to_thread.run_sync(
        on_request_thread(prepare_prompt), loaded, messages, params.max_new_tokens,
        max_input_tokens, params.template_options)
    async with aclosing(astream_prompt(loaded, prompt, params, cancel, requested_at)) as chunks:
        async for chunk in chunks:
            yield chunk


def stream_prompt(
    loaded: LoadedModel,
    prompt: PreparedPrompt,
    params: GenerationParams,
    cancel: threading.Event | None = None,
    requested_at: float | None = None,
) -> Iterator[ChatChunk]:
    """Stream the continuation of ready token ids (a chat prompt, or a raw /v1/completions one)."""
    requested_at = time.perf_counter() if requested_at is None else requested_at
    streamer = _streamer(TokenTextStreamer, loaded)
    reply = _Reply(params, loaded, prompt, streamer, cancel)
    try:
        while not reply.done:
            try:
                chunk = reply.add(next(streamer))
            except StopIteration:
                break
            except queue.Empty:
                chunk = reply.quiet(streamer.text_queue.empty())
            if chunk is not None:
                yield chunk
        reply.sequence.wait()
        yield from reply.ending(loaded, prompt, requested_at)
    finally:
        reply.closed.set()  # a consumer that closed us early: generate stops at the next token


async def astream_prompt(
    loaded: LoadedModel,
    prompt: PreparedPrompt,
    params: GenerationParams,
    cancel: threading.Event | None = None,
    requested_at: float | None = None,
) -> AsyncIterator[ChatChunk]:
    """`stream_prompt` for a reader on an event loop (see `astream_chat`)."""
    requested_at = time.perf_counter() if requested_at is None else requested_at
    streamer = _streamer(AsyncTokenTextStreamer, loaded)
    reply = _Reply(params, loaded, prompt, streamer, cancel)
    try:
        while not reply.done:
            try:
                chunk = reply.add(await anext(streamer))
            except StopAsyncIteration:
                break
            except TimeoutError:
                chunk = reply.quiet(streamer.text_queue.empty())
            if chunk is not None:
                yield chunk
        if not reply.sequence.wait(0):  # its last text came a moment before it was marked done
            await anyio.to_thread.run_sync(reply.sequence.wait)
        for chunk in reply.ending(loaded, prompt, requested_at):
            yield chunk
    finally:
        reply.closed.set()


QUIET_S = 0.25  # how often a reader with no new text checks that its sequence still lives


def _streamer(kind: type, loaded: LoadedModel):
    """The reply's text streamer (`TokenTextStreamer`, or `AsyncTokenTextStreamer` on a loop)."""
    return kind(loaded.tokenizer, skip_prompt=False, skip_special_tokens=True, timeout=QUIET_S)


def _submit(loaded: LoadedModel, prompt: PreparedPrompt, params: GenerationParams, streamer,
            cancel: threading.Event | None, closed: threading.Event) -> Sequence:
    """Hand the prompt to the model's batch scheduler; its tokens go to `streamer`."""
    return scheduler_for(loaded).submit(Sequence(
        prompt.input_ids, prompt.max_new_tokens, frozenset(loaded.end_token_ids()),
        with_request_processors(_sampling(params), params.logits_processors),
        on_token=lambda token: _hand_out(token, streamer, params), on_end=streamer.end,
        cancelled=lambda: closed.is_set() or (cancel is not None and cancel.is_set()),
        top_alternatives=params.alternatives,
    ))


def _hand_out(token: int, streamer: TokenTextStreamer, params: GenerationParams) -> None:
    tell_token_chosen(params.logits_processors, token)  # before the text: its logprob is ready
    streamer.put(torch.tensor([token]))


class _Reply:
    """One sequence's reply as its text arrives, for a reader of its streamer: a stop string
    ends it (setting `closed`, so the sequence leaves the batch), text that may begin one is
    held back until it is clear that it does not, and while the sequence waits for a place
    in the batch the reader hears its place in the line."""

    def __init__(self, params: GenerationParams, loaded: LoadedModel, prompt: PreparedPrompt,
                 streamer, cancel: threading.Event | None) -> None:
        """Submit the prompt; `closed` is set when the reader stops (or a stop string ends it)."""
        self.stops = _StopScanner(params.stop)
        self.report_waiting = params.report_waiting
        self.closed = threading.Event()
        self.notice = prompt.notice
        self.sequence = _submit(loaded, prompt, params, streamer, cancel, self.closed)
        self.text = ""
        self.emitted = 0
        self.place: int | None = None  # the last place in the line reported
        self.stopped = False  # by a stop string
        self.done = False  # no more text to read

    def add(self, piece: str) -> ChatChunk | None:
        """Take a piece of text; the chunk to send, if any."""
        self.text += piece
        cut = self.stops.find(self.text)
        if cut is not None:
            self.text, self.stopped = self.text[:cut], True
            self.done = True
            self.closed.set()
        safe = len(self.text) if self.stopped else self.stops.safe_length(self.text)
        if safe <= self.emitted:
            return None
        chunk = ChatChunk(self.text[:safe], self.text[self.emitted:safe], notice=self.notice)
        self.emitted = safe
        return chunk

    def quiet(self, nothing_queued: bool) -> ChatChunk | None:
        """No text for a while: done if the sequence ended without ending its streamer, else
        its place in the line when that changed (and is to be reported)."""
        sequence = self.sequence
        if not sequence.is_alive() and nothing_queued:
            self.done = True
            return None
        waiting = sequence.started_at is None and sequence.is_alive()
        if not self.report_waiting or not waiting or sequence.ahead == self.place:
            return None
        self.place = sequence.ahead
        return ChatChunk(self.text, "", notice=self.notice, ahead=self.place)

    def ending(self, loaded: LoadedModel, prompt: PreparedPrompt, requested_at: float) -> Iterator[ChatChunk]:
        """Any held-back text, then the last chunk (finish reason, usage, tokens)."""
        sequence = self.sequence
        if sequence.error is not None:
            raise _explain(sequence.error)
        if self.emitted < len(self.text):  # a held-back partial stop string that never completed
            yield ChatChunk(self.text, self.text[self.emitted:], notice=self.notice)
            self.emitted = len(self.text)
        reason = _finish_reason(sequence, self.stopped)
        tokens = reply_tokens(loaded.tokenizer, sequence.tokens, sequence.alternatives, len(self.text))
        yield ChatChunk(self.text, "", reason, _usage(prompt, sequence, requested_at), self.notice, tokens)


def _finish_reason(sequence: Sequence, stopped_by_string: bool) -> str:
    if stopped_by_string:
        return FINISH_STOP
    return {FINISH_EOS: FINISH_STOP, FINISH_LENGTH: FINISH_LENGTH}.get(
        sequence.finish_reason, FINISH_CANCELLED)


def _usage(prompt: PreparedPrompt, sequence: Sequence, requested_at: float) -> Usage:
    prompt_tokens, tokens = len(prompt.input_ids), len(sequence.tokens)
    ttft = None if sequence.first_token_at is None else sequence.first_token_at - requested_at
    speed = None
    if tokens and sequence.started_at and sequence.finished_at and sequence.finished_at > sequence.started_at:
        speed = tokens / (sequence.finished_at - sequence.started_at)
    return Usage(prompt_tokens, tokens, prompt_tokens + tokens, ttft, speed, sequence.cached_tokens)


def _explain(error: BaseException) -> PlaygroundError:
    if isinstance(error, PlaygroundError):
        return error
    if isinstance(error, (torch.OutOfMemoryError, MemoryError)):
        return ModelOutOfMemoryError(keyed("chat.out_of_memory"))
    log.error("Generation failed", exc_info=error)
    return ModelError(keyed("chat.generation_failed", kind=type(error).__name__, problem=str(error)[:300]))


class _StopScanner:
    """Finds stop strings in the growing reply; holds back text that may begin one."""

    def __init__(self, stops: tuple[str, ...]) -> None:
        self.stops = stops
        self.scanned = 0

    def find(self, text: str) -> int | None:
        if not self.stops:
            return None
        hits = []
        for stop in self.stops:
            found = text.find(stop, max(0, self.scanned - len(stop) + 1))
            if found >= 0:
                hits.append(found)
        self.scanned = len(text)
        return min(hits) if hits else None

    def safe_length(self, text: str) -> int:
        hold = 0
        for stop in self.stops:
            for size in range(min(len(stop) - 1, len(text)), hold, -1):
                if text.endswith(stop[:size]):
                    hold = size
                    break
        return len(text) - hold


class CancelRegistry:
    """Per-session cancel events, so a Stop press reaches the generation it means.

    `arm` is called when a request is sent (clearing a stale Stop), `begin` when its
    generation starts, `stop` from the Stop button: it sets the running events,
    or, if the request is still waiting in the queue, makes its `begin` return an
    event that is already set.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._active: dict[str, set[threading.Event]] = {}
        self._pending_stop: set[str] = set()

    def arm(self, session: str) -> None:
        with self._lock:
            self._pending_stop.discard(session)

    def begin(self, session: str) -> threading.Event:
        event = threading.Event()
        with self._lock:
            if session in self._pending_stop:
                self._pending_stop.discard(session)
                event.set()
            self._active.setdefault(session, set()).add(event)
        return event

    def end(self, session: str, event: threading.Event) -> None:
        with self._lock:
            events = self._active.get(session, set())
            events.discard(event)
            if not events:
                self._active.pop(session, None)

    def stop(self, session: str) -> int:
        """Stop the session's generations; returns how many were running."""
        with self._lock:
            events = self._active.get(session, set())
            for event in events:
                event.set()
            if not events:
                self._pending_stop.add(session)
            return len(events)
