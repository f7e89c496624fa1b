"""Chat generation: a conversation in, a streamed reply out (no UI here).

The chat tab and the OpenAI-compatible API both call `stream_chat`. It renders
the conversation with the tokenizer's own chat template, runs `model.generate`
in a background thread with a `TextIteratorStreamer`, and yields the growing
reply as `ChatChunk`s, ending with one that carries the finish reason and usage.

Promises kept here rather than in every caller:
* Text a user types is text: special tokens in a message (`<|im_start|>`,
  `</s>` …) are split into ordinary tokens, never read as control tokens.
* A conversation that outgrows the context window loses its oldest turns (the
  system prompt stays) and says so; one message that cannot fit is an error.
* Stop means stop: setting `cancel`, or closing the generator (a client that
  went away), ends `model.generate` at the next token via a StoppingCriteria.
* Generation runs on the process's main thread when the app lends it
  (modules/engine/compute.py: torch decodes about twice as fast there).
* One generation at a time per model (`LoadedModel.lock`): on a small CPU,
  interleaved generations only slow each other down (see benchmarks/).
"""

from __future__ import annotations

import logging
import math
import queue
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field, replace

import torch
from transformers import StoppingCriteria, StoppingCriteriaList, TextIteratorStreamer

from modules.engine.compute import Job, live_jobs, start_job
from modules.errors import InvalidInputError, ModelError, ModelOutOfMemoryError, PlaygroundError
from modules.engine.model_cache import LoadedModel

log = logging.getLogger(__name__)

ROLES = ("system", "user", "assistant")
FINISH_STOP, FINISH_LENGTH, FINISH_CANCELLED = "stop", "length", "cancelled"
GENERATE_THREAD_PREFIX = "chat-generate"
MAX_MESSAGE_CHARS = 200_000  # far beyond any context window; bounds tokenizer work
MAX_STOP_STRINGS = 4
MAX_SEED = 2**32 - 1
# A tokenizer's model_max_length above this is transformers' "no limit" placeholder.
_NO_LIMIT = 10**7
# Used when a model ships no chat template (a base model): a plain transcript.
PLAIN_TRANSCRIPT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ message['role'] | capitalize }}: {{ message['content'] }}\n\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}Assistant:{% endif %}"
)

# --- values ----------------------------------------------------------------
@dataclass(frozen=True)
class GenerationParams:
    """How to sample a reply. `validated` checks ranges before any model work."""

    max_new_tokens: int = 256
    temperature: float = 0.7
    top_p: float = 0.9
    top_k: int = 50
    repetition_penalty: float = 1.0
    do_sample: bool = True
    seed: int | None = None
    stop: tuple[str, ...] = ()

    def validated(self, max_new_tokens_limit: int) -> GenerationParams:
        """A clean copy (ints as ints, stop as a tuple), or InvalidInputError naming the field."""
        stop = (self.stop,) if isinstance(self.stop, str) else tuple(self.stop or ())
        if len(stop) > MAX_STOP_STRINGS or not all(isinstance(s, str) and s for s in stop):
            raise InvalidInputError(
                f"stop must be at most {MAX_STOP_STRINGS} non-empty strings."
            )
        return replace(
            self,
            max_new_tokens=_whole("max_new_tokens", self.max_new_tokens, 1, max_new_tokens_limit),
            temperature=_number("temperature", self.temperature, 0.0, 2.0),
            top_p=_number("top_p", self.top_p, 0.0, 1.0, low_open=True),
            top_k=_whole("top_k", self.top_k, 0, 1000),
            repetition_penalty=_number("repetition_penalty", self.repetition_penalty, 0.5, 2.0),
            do_sample=bool(self.do_sample),
            seed=None if self.seed is None else _whole("seed", self.seed, 0, MAX_SEED),
            stop=stop,
        )

    @property
    def samples(self) -> bool:
        """Temperature 0 means greedy, as in the OpenAI API."""
        return self.do_sample and self.temperature > 0


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    time_to_first_token_s: float | None
    tokens_per_second: float | None


@dataclass(frozen=True)
class ChatChunk:
    text: str  # the whole reply so far
    delta: str  # text new in this chunk
    finish_reason: str | None = None  # None while streaming; then "stop" | "length" | "cancelled"
    usage: Usage | None = None  # set on the final chunk
    notice: str | None = None  # set on every chunk when turns were dropped to fit


@dataclass(frozen=True)
class PreparedPrompt:
    """The model input for a conversation, after fitting it into the window."""

    input_ids: list[int]
    dropped_turns: int
    max_new_tokens: int  # the requested number, capped by what the window leaves

    @property
    def notice(self) -> str | None:
        if not self.dropped_turns:
            return None
        what = "oldest turn" if self.dropped_turns == 1 else f"{self.dropped_turns} oldest turns"
        return f"Dropped the {what} to fit the context window."


def _whole(name: str, value, low: int, high: int) -> int:
    number = _number(name, value, low, high)
    if number != int(number):
        raise InvalidInputError(f"{name} must be a whole number from {low} to {high}.")
    return int(number)


def _number(name: str, value, low: float, high: float, low_open: bool = False) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = math.nan
    if isinstance(value, bool) or not math.isfinite(number):
        raise InvalidInputError(f"{name} must be a number from {low} to {high}.")
    if number > high or number < low or (low_open and number <= low):
        bound = f"above {low}" if low_open else f"from {low}"
        raise InvalidInputError(f"{name} must be {bound} to {high}, got {value}.")
    return number


# --- the prompt --------------------------------------------------------------
def validate_messages(messages: list[dict[str, str]]) -> list[dict[str, str]]:
    """OpenAI-style messages, checked and copied to plain {role, content} dicts."""
    if not isinstance(messages, (list, tuple)) or not messages:
        raise InvalidInputError("The conversation is empty: send a message first.")
    clean = []
    for number, message in enumerate(messages, 1):
        role = message.get("role") if isinstance(message, dict) else None
        content = message.get("content") if isinstance(message, dict) else None
        if role not in ROLES:
            raise InvalidInputError(
                f"Message {number} has role {role!r}; use one of {', '.join(ROLES)}."
            )
        if not isinstance(content, str):
            raise InvalidInputError(f"Message {number} has no text content.")
        if len(content) > MAX_MESSAGE_CHARS:
            raise InvalidInputError(
                f"Message {number} is {len(content):,} characters; the limit is "
                f"{MAX_MESSAGE_CHARS:,}."
            )
        clean.append({"role": role, "content": content})
    if not any(m["role"] == "user" for m in clean):
        raise InvalidInputError("The conversation has no user message.")
    last_user = [m for m in clean if m["role"] == "user"][-1]
    if not last_user["content"].strip():
        raise InvalidInputError("The message is empty: type something first.")
    return clean


def context_window(loaded: LoadedModel) -> int:
    """Positions the model can attend to (the smaller of model and tokenizer limits)."""
    limits = [
        getattr(loaded.model.config, "max_position_embeddings", None),
        getattr(loaded.tokenizer, "model_max_length", None),
    ]
    known = [int(n) for n in limits if isinstance(n, (int, float)) and 0 < n < _NO_LIMIT]
    return min(known) if known else 2048


def prepare_prompt(
    loaded: LoadedModel, messages: list[dict[str, str]], max_new_tokens: int,
    max_input_tokens: int | None = None,
) -> PreparedPrompt:
    """Token ids for `messages`, dropping the oldest turns until they fit.

    The window leaves room for the reply (up to half of it), and never more
    input than `max_input_tokens`. The reply is then capped at what is left.
    """
    messages = validate_messages(messages)
    window = context_window(loaded)
    budget = window - min(max_new_tokens, window // 2)
    if max_input_tokens:
        budget = min(budget, max_input_tokens)
    system, turns = _split_turns(messages)

    def ids_without(dropped: int) -> list[int]:
        kept = [m for turn in turns[dropped:] for m in turn]
        return render_prompt_ids(loaded.tokenizer, system + kept)

    ids = ids_without(0)
    dropped = 0
    if len(ids) > budget:
        dropped, ids = _fewest_drops(ids_without, len(turns), budget)
    if dropped is None:
        raise InvalidInputError(
            f"The message is too long for this model: with the system prompt it takes "
            f"{len(ids):,} tokens, and the context window leaves room for {budget:,}. "
            "Shorten it or start a new chat."
        )
    return PreparedPrompt(ids, dropped, max(1, min(max_new_tokens, window - len(ids))))


def _split_turns(messages: list[dict[str, str]]) -> tuple[list[dict], list[list[dict]]]:
    """Leading system messages, then turns that each start at a user message."""
    lead = 0
    while messages[lead]["role"] == "system":
        lead += 1
    turns: list[list[dict]] = []
    for message in messages[lead:]:
        if message["role"] == "user" or not turns:
            turns.append([])
        turns[-1].append(message)
    return messages[:lead], turns


def _fewest_drops(ids_without, turn_count: int, budget: int):
    """Binary search for the fewest oldest turns to drop (the last turn always stays)."""
    low, high = 1, turn_count - 1
    best = None
    while low <= high:
        middle = (low + high) // 2
        ids = ids_without(middle)
        if len(ids) <= budget:
            best, high = (middle, ids), middle - 1
        else:
            low = middle + 1
    if best is None:
        return None, ids_without(turn_count - 1)
    return best


def render_prompt_ids(tokenizer, messages: list[dict[str, str]]) -> list[int]:
    """The chat template's token ids, with every message's text tokenized as plain text.

    The template is rendered around unique markers; the template's own text is
    tokenized normally (its special tokens count), each message's content with
    `split_special_tokens=True` (so typed `<|im_start|>` is just characters).
    """
    tag = uuid.uuid4().hex
    markers = [f"@@{tag}:{n}@@" for n in range(len(messages))]
    placeholders = [{"role": m["role"], "content": k} for m, k in zip(messages, markers)]
    text = _render_template(tokenizer, placeholders)
    ids: list[int] = []
    position = 0
    for marker, message in zip(markers, messages):
        found = text.find(marker, position)
        if found < 0:
            raise ModelError("This model's chat template rewrites message text; it cannot be used here.")
        ids += _encode(tokenizer, text[position:found], plain=False)
        ids += _encode(tokenizer, message["content"], plain=True)
        position = found + len(marker)
    return ids + _encode(tokenizer, text[position:], plain=False)


def _render_template(tokenizer, messages: list[dict[str, str]]) -> str:
    template = None if getattr(tokenizer, "chat_template", None) else PLAIN_TRANSCRIPT_TEMPLATE
    try:
        return tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=True, chat_template=template
        )
    except Exception as error:  # e.g. "System role not supported": fold it into the first user turn
        if not any(m["role"] == "system" for m in messages):
            raise ModelError(f"This model's chat template failed: {error}") from error
        return _render_template(tokenizer, _fold_system(messages))


def _fold_system(messages: list[dict[str, str]]) -> list[dict[str, str]]:
    system = "\n\n".join(m["content"] for m in messages if m["role"] == "system")
    rest = [dict(m) for m in messages if m["role"] != "system"]
    first_user = next(m for m in rest if m["role"] == "user")
    first_user["content"] = f"{system}\n\n{first_user['content']}"
    return rest


def _encode(tokenizer, text: str, plain: bool) -> list[int]:
    if not text:
        return []
    return list(
        tokenizer(
            text, add_special_tokens=False, split_special_tokens=plain, verbose=False
        )["input_ids"]
    )


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


def format_usage(usage: Usage, finish_reason: str | None) -> str:
    """One line, like an inference server's stream report."""
    parts = [
        f"prompt {usage.prompt_tokens}",
        f"completion {usage.completion_tokens}",
        f"total {usage.total_tokens} tokens",
    ]
    if usage.time_to_first_token_s is not None:
        parts.append(f"first token {usage.time_to_first_token_s:.2f} s")
    if usage.tokens_per_second is not None:
        parts.append(f"{usage.tokens_per_second:.1f} tokens/s")
    parts.append(f"finish: {finish_reason or 'unknown'}")
    return " · ".join(parts)


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
