"""Chat generation: a conversation in, a streamed reply out (no UI here).

`stream_chat` fits the conversation into the window (prompt.py), runs
`model.generate` as a job with a `TextIteratorStreamer`, and yields the growing
reply as `ChatChunk`s, ending with one that carries the finish reason and usage.
Callers reach it through `LocalChatBackend` (backends.py).

* Stop means stop: setting `cancel`, or closing the generator (a client that
  went away), ends `model.generate` at the next token via a StoppingCriteria.
* Generation runs on the process's main thread when the app lends it
  (modules/engine/compute.py: torch decodes about twice as fast there).
* One generation at a time per model (`LoadedModel.lock`): on a small CPU,
  interleaved generations only slow each other down (see benchmarks/).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
from transformers import StoppingCriteria, StoppingCriteriaList, TextIteratorStreamer

from modules.engine.compute import Job, live_jobs, start_job
from modules.engine.model_cache import LoadedModel
from modules.errors import ModelError, ModelOutOfMemoryError, PlaygroundError
from modules.tasks.chat.params import (
    FINISH_CANCELLED,
    FINISH_LENGTH,
    FINISH_STOP,
    ChatChunk,
    GenerationParams,
    Usage,
)
from modules.tasks.chat.prompt import PreparedPrompt, prepare_prompt

log = logging.getLogger(__name__)

GENERATE_THREAD_PREFIX = "chat-generate"


# --- generation --------------------------------------------------------------
class _GenerationWatch(StoppingCriteria):
    """Called by generate after every new token: counts, times, and stops on request."""

    def __init__(self, *events: threading.Event) -> None:
        self.events = events
        self.tokens = 0
        self.last_token: int | None = None
        self.first_token_at: float | None = None

    def __call__(self, input_ids: torch.LongTensor, scores, **kwargs) -> torch.BoolTensor:
        self.tokens += 1
        self.last_token = int(input_ids[0, -1])
        if self.first_token_at is None:
            self.first_token_at = time.perf_counter()
        stop = any(event.is_set() for event in self.events)
        return torch.full((input_ids.shape[0],), stop, dtype=torch.bool, device=input_ids.device)


@dataclass
class _Run:
    """What the generate thread reports back to the consumer."""

    started_at: float | None = None
    finished_at: float | None = None
    error: BaseException | None = None
    job: Job | None = field(default=None, repr=False)


def live_generation_threads() -> int:
    """How many generations are queued or running now (tests check none are left behind)."""
    return live_jobs(GENERATE_THREAD_PREFIX)


def _eos_ids(loaded: LoadedModel) -> list[int]:
    ids = loaded.model.generation_config.eos_token_id
    ids = [] if ids is None else [ids] if isinstance(ids, int) else list(ids)
    if loaded.tokenizer.eos_token_id is not None:
        ids.append(loaded.tokenizer.eos_token_id)
    return list(dict.fromkeys(ids))


def _generate_kwargs(loaded: LoadedModel, prompt: PreparedPrompt, params: GenerationParams) -> dict:
    eos = _eos_ids(loaded)
    pad = loaded.tokenizer.pad_token_id
    kwargs = {
        "max_new_tokens": prompt.max_new_tokens,
        "do_sample": params.samples,
        "repetition_penalty": params.repetition_penalty,
        "eos_token_id": eos or None,
        "pad_token_id": pad if pad is not None else (eos[0] if eos else None),
    }
    if params.samples:
        kwargs.update(temperature=params.temperature, top_p=params.top_p, top_k=params.top_k)
    else:  # greedy: leave out what would only draw warnings
        kwargs.update(temperature=None, top_p=None, top_k=None)
    return kwargs


def _run_generate(loaded: LoadedModel, kwargs: dict, params: GenerationParams,
                  streamer: TextIteratorStreamer, watch: _GenerationWatch, run: _Run) -> None:
    """The thread body: wait for the model (giving up if cancelled), then generate."""
    try:
        while not loaded.lock.acquire(timeout=0.05):
            if any(e.is_set() for e in watch.events):
                return
        try:
            if any(e.is_set() for e in watch.events):
                return
            if params.seed is not None:
                torch.manual_seed(params.seed)
            run.started_at = time.perf_counter()
            with torch.inference_mode():
                loaded.model.generate(**kwargs, streamer=streamer, stopping_criteria=StoppingCriteriaList([watch]))
        finally:
            run.finished_at = time.perf_counter()
            loaded.lock.release()
    except BaseException as error:  # reported to the consumer, who raises it
        run.error = error
    finally:
        streamer.end()  # a second end() after generate's own is harmless


def stream_chat(
    loaded: LoadedModel,
    messages: list[dict[str, str]],
    params: GenerationParams,
    cancel: threading.Event | None = None,
    max_input_tokens: int | None = None,
) -> Iterator[ChatChunk]:
    """Stream the assistant's reply to `messages`; the last chunk has finish_reason and usage."""
    requested_at = time.perf_counter()
    prompt = prepare_prompt(loaded, messages, params.max_new_tokens, max_input_tokens)
    closed = threading.Event()  # set when the consumer stops reading
    cancel = cancel or threading.Event()
    streamer = TextIteratorStreamer(
        loaded.tokenizer, skip_prompt=True, skip_special_tokens=True, timeout=0.25
    )
    watch = _GenerationWatch(cancel, closed)
    run = _Run()
    kwargs = _generate_kwargs(loaded, prompt, params)
    kwargs["input_ids"] = torch.tensor([prompt.input_ids], device=loaded.device)
    kwargs["attention_mask"] = torch.ones_like(kwargs["input_ids"])
    stops = _StopScanner(params.stop)
    text = ""
    emitted = 0
    stopped_by_string = False
    try:
        run.job = start_job(
            lambda: _run_generate(loaded, kwargs, params, streamer, watch, run),
            GENERATE_THREAD_PREFIX,
        )
        for piece in _pieces(streamer, run.job):
            text += piece
            cut = stops.find(text)
            if cut is not None:
                text, stopped_by_string = text[:cut], True
                closed.set()
            safe = len(text) if stopped_by_string else stops.safe_length(text)
            if safe > emitted:
                yield ChatChunk(text[:safe], text[emitted:safe], notice=prompt.notice)
                emitted = safe
            if stopped_by_string:
                break
        run.job.join()
        if run.error is not None:
            raise _explain(run.error)
        if emitted < len(text):  # a held-back partial stop string that never completed
            yield ChatChunk(text, text[emitted:], notice=prompt.notice)
            emitted = len(text)
        reason = _finish_reason(loaded, prompt, watch, cancel, stopped_by_string)
        yield ChatChunk(text, "", reason, _usage(prompt, watch, run, requested_at), prompt.notice)
    finally:
        closed.set()  # a consumer that closed us early: generate stops at the next token


def _pieces(streamer: TextIteratorStreamer, thread: Job) -> Iterator[str]:
    """The streamer's text, not hanging if the job died without ending it."""
    while True:
        try:
            piece = next(streamer)
        except StopIteration:
            return
        except queue.Empty:
            if not thread.is_alive() and streamer.text_queue.empty():
                return
            continue
        if piece:
            yield piece


def _finish_reason(loaded, prompt, watch, cancel, stopped_by_string) -> str:
    if stopped_by_string:
        return FINISH_STOP
    if cancel.is_set():
        return FINISH_CANCELLED
    if watch.last_token is not None and watch.last_token in _eos_ids(loaded):
        return FINISH_STOP
    if watch.tokens >= prompt.max_new_tokens:
        return FINISH_LENGTH
    return FINISH_CANCELLED if watch.tokens == 0 else FINISH_STOP


def _usage(prompt: PreparedPrompt, watch: _GenerationWatch, run: _Run, requested_at: float) -> Usage:
    prompt_tokens = len(prompt.input_ids)
    ttft = None if watch.first_token_at is None else watch.first_token_at - requested_at
    speed = None
    if watch.tokens and run.started_at and run.finished_at and run.finished_at > run.started_at:
        speed = watch.tokens / (run.finished_at - run.started_at)
    return Usage(prompt_tokens, watch.tokens, prompt_tokens + watch.tokens, ttft, speed)


def _explain(error: BaseException) -> PlaygroundError:
    if isinstance(error, PlaygroundError):
        return error
    if isinstance(error, (torch.OutOfMemoryError, MemoryError)):
        return ModelOutOfMemoryError("Ran out of memory while generating: try fewer tokens or a smaller model.")
    log.error("Generation failed", exc_info=error)
    return ModelError(f"Generation failed: {type(error).__name__}: {str(error)[:300]}")


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
