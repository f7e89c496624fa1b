"""Step-level batched generation over one loaded causal LM (continuous batching).

Decoding a small model on a CPU is dominated by per-step overhead, not arithmetic:
one forward pass over four sequences costs little more than over one. So every
sequence generating on a model runs in one shared batch: a new request is prefilled
alone (its first token comes out at once), then joins the batch between decode
steps; a finished, stopped or abandoned one leaves between steps.

Why not transformers' own continuous batching (`generate_batch`, paged KV cache)?
It runs its loop on a thread of its own (torch decodes about half as fast off the
main thread here, modules/engine/compute.py), and its paged cache does not compose
with the fused layers (modules/engine/kernels/fused_llama.py): they call
`past_key_values.update(k, v, layer)` and attend themselves, while the paged cache
needs per-batch read/write indices and its own attention function.

The batch keeps one DynamicCache with left padding: row i's first `pads[i]` cache
positions are padding and its position ids count only its own tokens. On fused models
each row attends over its own columns only (`decode_step`), so it computes bit for bit
what it would alone; other models mask the padding (equal up to rounding). Greedy replies match
generation alone token for token; seeded sampling draws from a per-sequence
torch.Generator (modules/engine/sampling.py), so the same seed gives the same text
whatever else runs.

A KV-cache budget (tokens reserved per sequence: prompt + max new tokens) and a
maximum batch size decide how many run at once; the rest wait in order and can see
their place in the line (`Sequence.ahead`).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from transformers import DynamicCache

from modules.engine.compute import start_job
from modules.engine.kernels import native_step
from modules.engine.kernels.decode_step import decode_step, supports_decode_step
from modules.engine.kv_cache import growing_cache
from modules.engine.prefix_cache import PrefixCache
from modules.engine.sampling import Sampling, TokenPicker, pick_rows, top_alternatives
from modules.errors import ModelError
from modules.messages import message

log = logging.getLogger(__name__)

DRIVER_JOB_PREFIX = "batch-driver"
DEFAULT_MAX_SEQUENCES = 4
DEFAULT_KV_CACHE_TOKENS = 8192
DEFAULT_MAX_WAITING = 32
DEFAULT_PREFIX_CACHE_BYTES = 256 << 20
LOCK_POLL_S = 0.05

FINISH_EOS, FINISH_LENGTH, FINISH_CANCELLED = "stop", "length", "cancelled"


class SchedulerBusyError(ModelError):
    """Too many requests are already waiting for this model."""


@dataclass(eq=False)
class Sequence:
    """One request's generation. The scheduler fills in tokens, times and the outcome.

    `on_token(id)` is called on the generating thread for every new token (the end
    token included), `on_end()` once when it is over; `cancelled()` is polled before
    every step.
    """

    prompt_ids: list[int]
    max_new_tokens: int
    eos_ids: frozenset[int] = frozenset()
    sampling: Sampling = Sampling()
    on_token: Callable[[int], None] = lambda token: None
    on_end: Callable[[], None] = lambda: None
    cancelled: Callable[[], bool] = lambda: False
    tokens: list[int] = field(default_factory=list)
    submitted_at: float = field(default_factory=time.perf_counter)
    started_at: float | None = None
    first_token_at: float | None = None
    finished_at: float | None = None
    finish_reason: str | None = None
    error: BaseException | None = None
    ahead: int = 0  # sequences waiting before this one (0 once running)
    cached_tokens: int = 0  # prompt tokens whose keys and values came from the prefix cache
    # When > 0, the model's top alternatives (token id, probability) at each step, from
    # the logits this step computed anyway (no extra forward pass): the chat's branching.
    top_alternatives: int = 0
    alternatives: list[list[tuple[int, float]]] = field(default_factory=list)
    _done: threading.Event = field(default_factory=threading.Event, repr=False)
    _picker: TokenPicker | None = field(default=None, repr=False)
    _ids: torch.Tensor | None = field(default=None, repr=False)  # history_ids' buffer
    _ids_filled: int = field(default=0, repr=False)
    _read_natively: bool = field(default=False, repr=False)  # its prompt went through native_prompt

    def history_ids(self) -> torch.Tensor:
        """The prompt and the reply so far (what the repetition penalty reads) as [1, n] ids, in
        a buffer with room for every reserved token: a step copies only its new token (the
        whole list, 4,000 tokens, took 0.65 ms a step and row)."""
        prompt, length = len(self.prompt_ids), len(self.prompt_ids) + len(self.tokens)
        if self._ids is None or self._ids.shape[1] < length:
            self._ids, self._ids_filled = torch.empty(1, max(length, self.reserved_tokens), dtype=torch.long), 0
        filled = self._ids_filled
        if filled < length:
            new = self.prompt_ids[filled:] + self.tokens if filled < prompt else self.tokens[filled - prompt:]
            self._ids[0, filled:length] = torch.tensor(new, dtype=torch.long)
            self._ids_filled = length
        return self._ids[:, :length]

    @property
    def reserved_tokens(self) -> int:
        return len(self.prompt_ids) + self.max_new_tokens

    def is_alive(self) -> bool:
        """Waiting or running (the counterpart of a thread's is_alive)."""
        return not self._done.is_set()

    def wait(self, timeout: float | None = None) -> bool:
        return self._done.wait(timeout)


class _BatchCache:
    """The running rows' KV cache, left-padded to a common length."""

    def __init__(self) -> None:
        self.cache: DynamicCache | None = None
        self.pads: list[int] = []

    @property
    def length(self) -> int:
        return 0 if self.cache is None else self.cache.layers[0].keys.shape[-2]

    def add(self, cache: DynamicCache) -> None:
        """Append one prefilled sequence's cache as a new row."""
        if self.cache is None:
            self.cache, self.pads = cache, [0]
            return
        new_length = cache.layers[0].keys.shape[-2]
        target = max(self.length, new_length)
        grow = target - self.length
        for mine, theirs in zip(self.cache.layers, cache.layers):
            mine.keys = torch.cat([_left_pad(mine.keys, grow), _left_pad(theirs.keys, target - new_length)])
            mine.values = torch.cat([_left_pad(mine.values, grow),
                                     _left_pad(theirs.values, target - new_length)])
        self.pads = [pad + grow for pad in self.pads] + [target - new_length]

    def keep(self, rows: list[int]) -> None:
        """Keep only `rows` (in this order), and drop columns that are padding in all of them."""
        if not rows:
            self.cache, self.pads = None, []
            return
        trim = min(self.pads[row] for row in rows)
        index = torch.tensor(rows, device=self.device)
        for layer in self.cache.layers:
            layer.keys = layer.keys.index_select(0, index)[:, :, trim:]
            layer.values = layer.values.index_select(0, index)[:, :, trim:]
        self.pads = [self.pads[row] - trim for row in rows]

    @property
    def device(self) -> torch.device:
        """Where the cache lives (the model's device): the step's index tensors go there too."""
        return self.cache.layers[0].keys.device

    def positions(self) -> torch.Tensor:
        """Position ids [rows, 1] of each row's next token: its own tokens so far."""
        return (self.length - torch.tensor(self.pads, device=self.device)).unsqueeze(1)

    def mask(self, attention: str) -> torch.Tensor | None:
        """The attention mask for one new token per row (None: no padding), for `model(...)`."""
        if not any(self.pads):
            return None
        length, device = self.length, self.device
        mask = (torch.arange(length + 1, device=device).unsqueeze(0)
                >= torch.tensor(self.pads, device=device).unsqueeze(1))[:, None, None, :]
        if attention == "eager":  # eager attention adds its mask
            dtype = self.cache.layers[0].keys.dtype
            mask = torch.zeros(mask.shape, dtype=dtype, device=device).masked_fill(~mask, torch.finfo(dtype).min)
        return mask

    def starts(self) -> list[int] | None:
        """Each row's first real cache column (None: no padding), for `decode_step`."""
        return list(self.pads) if any(self.pads) else None


def _left_pad(tensor: torch.Tensor, count: int) -> torch.Tensor:
    if not count:
        return tensor
    shape = list(tensor.shape)
    shape[-2] = count
    return torch.cat([tensor.new_zeros(shape), tensor], dim=-2)


def batchable(model: torch.nn.Module) -> bool:
    """Can rows of this model's cache be padded and joined (a plain full-attention cache)?"""
    config = getattr(model, "config", None)
    if config is None or getattr(config, "is_encoder_decoder", False):
        return False
    if getattr(config, "sliding_window", None) and getattr(config, "use_sliding_window", True):
        return False
    return getattr(config, "_attn_implementation", "sdpa") in ("sdpa", "eager")


class BatchScheduler:
    """Runs every sequence on one model in a shared batch, one step at a time.

    The loop runs as a compute job (the main thread when the app lends it) while any
    sequence runs or waits, and holds `lock` for each step, so other users of the
    model (zero-shot scoring) fit in between steps.
    """

    def __init__(self, model: torch.nn.Module, lock: threading.Lock,
                 max_sequences: int = DEFAULT_MAX_SEQUENCES,
                 kv_cache_tokens: int = DEFAULT_KV_CACHE_TOKENS,
                 max_waiting: int = DEFAULT_MAX_WAITING,
                 prefix_cache_bytes: int = DEFAULT_PREFIX_CACHE_BYTES) -> None:
        self.model = model
        self.lock = lock
        self.max_sequences = max(1, max_sequences if batchable(model) else 1)
        self.kv_cache_tokens = kv_cache_tokens
        self.max_waiting = max_waiting
        self._state = threading.Lock()
        self._waiting: deque[Sequence] = deque()
        self._running: list[Sequence] = []
        self._batch = _BatchCache()
        self._driving = False
        # Fused models take a lean path for decode steps (same logits, less overhead), and
        # the native step once it is built; a batch keeps the step it started with.
        self._lean_steps = supports_decode_step(model)
        self._native_steps = False
        # Prompts and replies read on the native path, for later prompts that begin alike.
        self.prefixes = PrefixCache(prefix_cache_bytes)

    # --- what callers use ----------------------------------------------------
    def submit(self, sequence: Sequence) -> Sequence:
        """Queue `sequence`; it starts as soon as the batch and the budget allow."""
        with self._state:
            if len(self._waiting) >= self.max_waiting:
                raise SchedulerBusyError(message("models.busy", waiting=len(self._waiting)))
            sequence.ahead = len(self._waiting)
            self._waiting.append(sequence)
            _live.add(sequence)
            if not self._driving:
                self._driving = True
                start_job(self._drive, DRIVER_JOB_PREFIX)
        return sequence

    def live(self) -> int:
        """Sequences running or waiting."""
        with self._state:
            return len(self._waiting) + len(self._running)

    @property
    def running(self) -> int:
        return len(self._running)

    # --- the loop ------------------------------------------------------------
    def _drive(self) -> None:
        while True:
            with self._state:
                if not self._waiting and not self._running:
                    self._driving = False
                    return
            self._acquire_model()
            try:
                with torch.inference_mode():
                    self._admit()
                    if self._running:
                        self._decode_step()
            finally:
                self.lock.release()

    def _acquire_model(self) -> None:
        """Wait for the model, ending cancelled sequences meanwhile."""
        while not self.lock.acquire(timeout=LOCK_POLL_S):
            self._drop_cancelled()
        self._drop_cancelled()

    def _drop_cancelled(self) -> None:
        with self._state:
            waiting = [s for s in self._waiting if s.cancelled()]
            for sequence in waiting:
                self._waiting.remove(sequence)
            self._renumber()
            running = [row for row, s in enumerate(self._running) if s.cancelled()]
        for sequence in waiting:
            _finish(sequence, FINISH_CANCELLED)
        if running:
            self._leave(set(running), FINISH_CANCELLED)

    def _renumber(self) -> None:
        for place, sequence in enumerate(self._waiting):
            sequence.ahead = place

    def _admit(self) -> None:
        """Prefill waiting sequences, in order, while the batch and the budget have room."""
        while True:
            with self._state:
                if not self._waiting or not self._fits(self._waiting[0]):
                    return
                sequence = self._waiting.popleft()
                sequence.ahead = 0
                self._renumber()
            self._prefill(sequence)

    def _fits(self, sequence: Sequence) -> bool:
        if not self._running:
            return True  # one sequence always runs, even beyond the budget
        reserved = sum(s.reserved_tokens for s in self._running)
        return (len(self._running) < self.max_sequences
                and reserved + sequence.reserved_tokens <= self.kv_cache_tokens)

    def _prefill(self, sequence: Sequence) -> None:
        sequence.started_at = time.perf_counter()
        sequence._picker = TokenPicker(sequence.sampling)
        if self._batch.cache is None:  # a new batch: one kind of step for all its replies
            self._native_steps = self._lean_steps and native_step.ready(self.model)
        cache = growing_cache(self.model.config, self._cache_dtype())
        ids = sequence.prompt_ids
        reusable = self._native_steps and native_step.prompt_applies(self.model, len(ids))
        prefix, sequence.cached_tokens = self.prefixes.longest(ids) if reusable else (None, 0)
        try:
            logits = native_step.native_prompt(self.model, ids, cache, prefix, sequence.cached_tokens) \
                if reusable else None
            sequence._read_natively = logits is not None
            if logits is None:
                sequence.cached_tokens = 0
                logits = self.model(input_ids=torch.tensor([ids], device=self.model.device), past_key_values=cache,
                                    use_cache=True, logits_to_keep=1).logits[:, -1, :]
            token = _choose([sequence], logits.float())[0]
            if isinstance(token, Exception):
                raise token
        except BaseException as error:  # this request fails; the batch goes on
            _finish(sequence, None, error)
            return
        finished = self._emit(sequence, token)
        if sequence._read_natively:  # after the first token is out (2,200 tokens: ~2 ms of copying)
            self.prefixes.note_reused(sequence.cached_tokens)
            self.prefixes.store(ids, [layer.keys[0] for layer in cache.layers],
                                [layer.values[0] for layer in cache.layers])
        if finished:
            _finish(sequence, None)
            return
        with self._state:
            self._running.append(sequence)
        self._batch.add(cache)

    def _cache_dtype(self) -> torch.dtype | None:
        """The batch's keys and values: as the native step reads them (bf16 for a bf16 model),
        float32 for the Python lean step (it attends in float32), else as the model makes them."""
        if self._native_steps:
            return native_step.cache_dtype(self.model)
        return torch.float32 if self._lean_steps else None

    def _decode_step(self) -> None:
        last = torch.tensor([[s.tokens[-1]] for s in self._running], device=self.model.device)
        positions = self._batch.positions()
        try:
            if self._lean_steps:
                logits = decode_step(self.model, last, positions, self._batch.starts(), self._batch.cache,
                                     native=self._native_steps).float()
            else:
                mask = self._batch.mask(self.model.config._attn_implementation)
                logits = self.model(input_ids=last, attention_mask=mask, position_ids=positions,
                                    past_key_values=self._batch.cache, use_cache=True
                                    ).logits[:, -1, :].float()
        except BaseException as error:  # the batch's state is unknown: end every row
            self._leave(set(range(len(self._running))), None, error)
            return
        running = list(self._running)
        ended: set[int] = set()
        for row, (sequence, token) in enumerate(zip(running, _choose(running, logits))):
            if isinstance(token, Exception):  # e.g. a constraint that allows no token: only this row ends
                sequence.error = token
                ended.add(row)
            elif self._emit(sequence, token):
                ended.add(row)
        if ended:
            self._leave(ended, None)

    def _emit(self, sequence: Sequence, token: int) -> bool:
        """Record and hand out `token`; True when the sequence is finished with it."""
        sequence.tokens.append(token)
        if sequence.first_token_at is None:
            sequence.first_token_at = time.perf_counter()
        try:
            sequence.on_token(token)
        except BaseException as error:  # a broken consumer ends only its own sequence
            sequence.error = error
            sequence.finish_reason = FINISH_CANCELLED
            return True
        if token in sequence.eos_ids:
            sequence.finish_reason = FINISH_EOS
        elif len(sequence.tokens) >= sequence.max_new_tokens:
            sequence.finish_reason = FINISH_LENGTH
        return sequence.finish_reason is not None

    def _leave(self, rows: set[int], reason: str | None, error: BaseException | None = None) -> None:
        """Take `rows` out of the batch and finish them."""
        if error is None:
            self._remember(rows)
        with self._state:
            leaving = [s for row, s in enumerate(self._running) if row in rows]
            kept = [row for row in range(len(self._running)) if row not in rows]
            self._running = [self._running[row] for row in kept]
        self._batch.keep(kept)
        for sequence in leaving:
            _finish(sequence, reason or sequence.finish_reason, error)

    def _remember(self, rows: set[int]) -> None:
        """Store leaving rows' prompt and reply in the prefix cache: a chat's next turn begins
        with them. The cache holds each row's tokens but its last (not yet fed back)."""
        if not self._native_steps or not self.prefixes.budget_bytes:
            return
        for row in sorted(rows):
            sequence, start = self._running[row], self._batch.pads[row]
            if not sequence._read_natively:  # a dense pass's keys differ from a native pass's by rounding
                continue
            ids = sequence.prompt_ids + sequence.tokens[:-1]
            layers = self._batch.cache.layers
            if layers[0].keys.shape[-2] - start == len(ids):
                self.prefixes.store(ids, [layer.keys[row, :, start:] for layer in layers],
                                    [layer.values[row, :, start:] for layer in layers])


def _choose(sequences: list[Sequence], scores: torch.Tensor) -> list[int | Exception]:
    """Each sequence's next token from its row of `scores` [rows, vocab] (an exception where
    its choice fails), noting the top alternatives of those that keep them."""
    for sequence, alternatives in zip(sequences, top_alternatives(
            scores, [s.top_alternatives for s in sequences])):
        if sequence.top_alternatives:
            sequence.alternatives.append(alternatives)
    return pick_rows([s._picker for s in sequences], lambda row: sequences[row].history_ids(), scores)


def _finish(sequence: Sequence, reason: str | None, error: BaseException | None = None) -> None:
    sequence.finish_reason = reason or sequence.finish_reason or FINISH_CANCELLED
    if error is not None and sequence.error is None:
        sequence.error = error
    sequence.finished_at = time.perf_counter()
    sequence.ahead = 0
    _live.discard(sequence)
    try:
        sequence.on_end()
    finally:
        sequence._done.set()


_live: set[Sequence] = set()  # sequences waiting or running, on any model


def live_sequences() -> int:
    """How many sequences wait or run now (tests check none are left behind)."""
    return len(_live)


_schedulers_lock = threading.Lock()


def scheduler_for(loaded, **settings) -> BatchScheduler:
    """The one scheduler of a loaded model, made on first use (`loaded.scheduler`)."""
    with _schedulers_lock:
        if getattr(loaded, "scheduler", None) is None:
            loaded.scheduler = BatchScheduler(loaded.model, loaded.lock, **settings)
        return loaded.scheduler

