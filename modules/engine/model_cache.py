"""The one place that loads and holds models.

Every tab and the HTTP API ask `ModelCache.get` for a (model, tokenizer) pair.
A model is loaded once per process however many threads ask at once; the least
recently used models are dropped beyond a bound, and their memory is freed.
Loading failures become `ModelError`s whose message a user can act on.
"""

from __future__ import annotations

import enum
import logging
import threading
import time
from collections import OrderedDict
from concurrent.futures import Future
from dataclasses import dataclass, field

import torch
from huggingface_hub.errors import (
    GatedRepoError,
    LocalEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from transformers import (
    AutoModelForCausalLM,
    AutoModelForSeq2SeqLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from modules.config import Settings
from modules.engine import heap
from modules.engine.batching import BatchScheduler
from modules.engine.compute import start_job
from modules.engine.device import pick_device, pick_dtype
from modules.errors import (
    GatedModelError,
    InvalidModelError,
    ModelError,
    ModelNotFoundError,
    ModelOfflineError,
    ModelOutOfMemoryError,
)
from modules.messages import message
from modules.engine.kernels import native_step
from modules.engine.kernels.fast_decode import Prepared, prepare_chat_model
from modules.engine.gguf_conversion import ensure_converted
from modules.engine.tokenizer_lock import serialize_encoding
from modules.engine.callbacks import StatusCallback
from modules.engine.model_refs import ModelRef, in_hub_cache, parse_model_ref

log = logging.getLogger(__name__)
# A tokenizer's model_max_length at or above this is transformers' "no limit" placeholder.
_NO_LIMIT = 10**7
DEFAULT_CONTEXT_WINDOW = 2048


class ModelKind(enum.Enum):
    CAUSAL_LM = AutoModelForCausalLM
    SEQ2SEQ = AutoModelForSeq2SeqLM
    CLASSIFIER = AutoModelForSequenceClassification


DTYPE_KINDS = {ModelKind.CAUSAL_LM: "chat", ModelKind.SEQ2SEQ: "translation", ModelKind.CLASSIFIER: "classifier"}


@dataclass
class LoadedModel:
    """A model ready to use, with what the UI needs to say about it."""

    ref: ModelRef
    kind: ModelKind
    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    device: torch.device
    dtype: torch.dtype
    nbytes: int
    # How the weights are stored when not plainly in `dtype` (e.g. "int8 weights").
    quantization: str | None = None
    # On CPU, the kernels and dtypes picked for this machine, in one line (cpu_profile).
    speed_plan: str | None = None
    # Held while a request runs the model, for callers that must not interleave.
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    # Causal LMs: runs every generation in one shared batch (modules/engine/batching.py).
    scheduler: BatchScheduler | None = field(default=None, repr=False)
    # What tasks derive from this model and reuse (e.g. zero-shot label priors); dies with it.
    extras: dict = field(default_factory=dict, repr=False)

    @property
    def name(self) -> str:
        return self.ref.display_name

    @property
    def description(self) -> str:
        dtype = str(self.dtype).removeprefix("torch.")
        if self.quantization:
            dtype += f", {self.quantization}"
        return f"{self.name} ({self.device.type}, {dtype})"

    @property
    def speed_line(self) -> str | None:
        """The CPU speed plan and how decode steps run now (the native step is built in the
        background, so this can change after the load), e.g. "decode: fused int4 (bf16) ·
        prefill: bf16 (AVX512) · native step, int4 x int16 rows (AVX512-VNNI)"."""
        if self.speed_plan is None:
            return None
        step = native_step.step_line(self.model)
        return self.speed_plan if step is None else f"{self.speed_plan} · {step}"

    def end_token_ids(self) -> list[int]:
        """The tokens that end a reply: the generation config's and the tokenizer's end
        token (one rule for the batch scheduler and constrained decoding)."""
        ids = self.model.generation_config.eos_token_id
        ids = [] if ids is None else [ids] if isinstance(ids, int) else list(ids)
        if self.tokenizer.eos_token_id is not None:
            ids.append(self.tokenizer.eos_token_id)
        return list(dict.fromkeys(ids))

    def context_window(self, fallback: int = DEFAULT_CONTEXT_WINDOW) -> int:
        """Tokens the model can see at once: the smaller of the config's positions and
        the tokenizer's limit, or `fallback` when neither says (one rule for every task)."""
        limits = [
            getattr(self.model.config, "max_position_embeddings", None),
            getattr(self.tokenizer, "model_max_length", None),
        ]
        known = [int(n) for n in limits
                 if isinstance(n, (int, float)) and not isinstance(n, bool) and 0 < n < _NO_LIMIT]
        return min(known) if known else fallback


@dataclass
class LoadProgress:
    """How a background load (`ModelCache.load_in_background`) is going: for /health and the header."""

    state: str  # "idle" (never asked), "loading", "ready" or "failed"
    message: str = ""
    started: float = field(default_factory=time.monotonic)

    @property
    def elapsed_s(self) -> float:
        return time.monotonic() - self.started

    def say(self, message: str) -> None:
        self.message = message


def _model_bytes(model: torch.nn.Module) -> int:
    tensors = {id(t): t for t in [*model.parameters(), *model.buffers()]}
    return sum(t.numel() * t.element_size() for t in tensors.values())


class ModelCache:
    """Loads each (reference, kind) once; keeps at most `max_models`, LRU first out."""

    def __init__(self, settings: Settings, max_models: int | None = None) -> None:
        self.settings = settings
        self.max_models = max(1, max_models or settings.max_loaded_models)
        self.device = pick_device(settings.device)
        self._lock = threading.Lock()
        self._models: OrderedDict[tuple[str, ModelKind], LoadedModel] = OrderedDict()
        self._loading: dict[tuple[str, ModelKind], Future[LoadedModel]] = {}
        self.loads = 0  # how many real loads happened: tests and benchmarks read it
        self._progress: dict[tuple[str, ModelKind], LoadProgress] = {}
        # CPU chat models decode through a native step built for this CPU (in the background,
        # while models load; once per machine): modules/engine/kernels/native_step.py.
        self._native_steps = settings.fast_decode and settings.native_step and self.device.type == "cpu"
        if self._native_steps:
            native_step.start_building(settings.cache_dir)

    # --- public -----------------------------------------------------------
    def get(
        self, ref: str, kind: ModelKind, on_status: StatusCallback | None = None
    ) -> LoadedModel:
        """The loaded model for `ref`, loading it (once, whoever asks) if needed."""
        key = (ref.strip(), kind)
        with self._lock:
            if key in self._models:
                self._models.move_to_end(key)
                return self._models[key]
            future = self._loading.get(key)
            owner = future is None
            if owner:
                future = self._loading[key] = Future()
        if not owner:
            if on_status:
                on_status(message("models.waiting_for_load", model=key[0]).english())
            return future.result()
        try:
            loaded = self._load(key[0], kind, on_status)
        except BaseException as error:
            with self._lock:
                del self._loading[key]
            future.set_exception(error)
            raise
        with self._lock:
            del self._loading[key]
            self._models[key] = loaded
            evicted = self._evict_beyond_bound()
        future.set_result(loaded)
        if evicted:
            self._free(evicted)
        else:
            heap.settle()
        return loaded

    def load_in_background(self, ref: str, kind: ModelKind) -> None:
        """Start loading `ref` now, so the first request finds it ready; `load_progress` reports.

        It runs as a job: on the main thread when the app lends it (full speed for the
        GGUF conversion and weight preparation), else on a thread of its own."""
        key = (ref.strip(), kind)
        progress = LoadProgress("loading", f"Loading {key[0]}…")
        with self._lock:
            self._progress[key] = progress

        def load() -> None:
            try:
                self.get(key[0], kind, on_status=progress.say)
            except Exception as error:  # shown on the page and by /health; requests retry
                progress.message, progress.state = str(error), "failed"
            else:
                progress.message, progress.state = "", "ready"
                log.info("%s is ready (%.1f s after the start of its load)", key[0],
                         progress.elapsed_s)

        start_job(load, name="model-load")

    def load_progress(self, ref: str, kind: ModelKind) -> LoadProgress:
        """The background load's progress; "ready" once loaded by anyone, "idle" if never asked."""
        key = (ref.strip(), kind)
        with self._lock:
            if key in self._models:
                return LoadProgress("ready")
            return self._progress.get(key) or LoadProgress("idle")

    def loaded_names(self) -> list[str]:
        """Loaded model references, least recently used first."""
        with self._lock:
            return [ref for ref, _ in self._models]

    def loaded_models(self) -> list[LoadedModel]:
        """A snapshot of the models held now (GET /metrics reads their sizes)."""
        with self._lock:
            return list(self._models.values())

    def is_loaded(self, ref: str, kind: ModelKind) -> bool:
        with self._lock:
            return (ref.strip(), kind) in self._models

    def evict(self, ref: str, kind: ModelKind) -> bool:
        with self._lock:
            dropped = self._models.pop((ref.strip(), kind), None)
        found = dropped is not None
        evicted = [dropped] if found else []
        del dropped  # `_free` empties `evicted`: no other reference may outlive it, or the model stays frozen
        self._free(evicted)
        return found

    def total_bytes(self) -> int:
        with self._lock:
            return sum(m.nbytes for m in self._models.values())

    # --- loading ----------------------------------------------------------
    def _evict_beyond_bound(self) -> list[LoadedModel]:
        evicted = []
        while len(self._models) > self.max_models:
            _, oldest = self._models.popitem(last=False)
            evicted.append(oldest)
        return evicted

    @staticmethod
    def _free(evicted: list[LoadedModel]) -> None:
        if not evicted:
            return
        log.info("Unloading %s", ", ".join(model.description for model in evicted))
        evicted.clear()  # the last references (callers keep none), so the collection frees them
        heap.release()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def _load(self, text: str, kind: ModelKind, on_status: StatusCallback | None) -> LoadedModel:
        ref = parse_model_ref(text)
        dtype = pick_dtype(self.settings.dtype, self.device, DTYPE_KINDS[kind])
        source, options = self._source(ref, on_status)
        if on_status:
            on_status(message("models.loading", model=ref.display_name).english())
        log.info("Loading %s as %s on %s", ref.text, kind.name, self.device)
        try:
            tokenizer = serialize_encoding(AutoTokenizer.from_pretrained(source, **options))
            model = kind.value.from_pretrained(source, dtype=dtype, **options)
        except (torch.OutOfMemoryError, MemoryError) as error:
            raise ModelOutOfMemoryError(message("models.out_of_memory", model=ref.display_name)) from error
        except Exception as error:
            raise self._explain(ref, error) from error
        model.to(self.device).eval()
        prepared = self._after_load(model, kind, dtype, ref.text)
        self.loads += 1
        loaded = LoadedModel(
            ref=ref, kind=kind, model=model, tokenizer=tokenizer,
            device=self.device, dtype=prepared.dtype, nbytes=_model_bytes(model),
            quantization=prepared.quantization, speed_plan=prepared.plan,
        )
        if kind is ModelKind.CAUSAL_LM:
            loaded.scheduler = BatchScheduler(model, loaded.lock, self.settings.batch_size,
                                              self.settings.kv_cache_tokens,
                                              max_waiting=self.settings.max_queue_size,
                                              prefix_cache_bytes=self.settings.prefix_cache_mb << 20)
        return loaded

    def _after_load(self, model: PreTrainedModel, kind: ModelKind, dtype: torch.dtype,
                    model_key: str) -> Prepared:
        """Optional speed-up for chat models (PLAYGROUND_FAST_DECODE), chosen per CPU."""
        if kind is not ModelKind.CAUSAL_LM or not self.settings.fast_decode:
            return Prepared(dtype)
        return prepare_chat_model(model, self.device, dtype, model_key, self.settings.cache_dir,
                                  probe=self.settings.dtype == "auto", native=self._native_steps,
                                  amx=self.settings.amx, int16_rows=self.settings.int16_rows)

    def _source(self, ref: ModelRef, on_status: StatusCallback | None) -> tuple[str, dict]:
        """Where from_pretrained reads, and with which options."""
        if ref.gguf_file is not None:
            try:
                folder = ensure_converted(ref.gguf_file, self.settings.cache_dir, on_status)
            except Exception as error:
                raise InvalidModelError(message("models.gguf_unreadable", path=ref.text, problem=error)) from error
            return str(folder), {}
        if ref.folder is not None:
            return str(ref.folder), {"trust_remote_code": ref.text in self.settings.trust_remote_code}
        if on_status and not in_hub_cache(ref):
            on_status(message("models.downloading", model=ref.hub_id).english())
        return ref.hub_id, {
            "revision": ref.revision,
            "local_files_only": self.settings.offline,
            "trust_remote_code": ref.text in self.settings.trust_remote_code
            or ref.hub_id in self.settings.trust_remote_code,
        }

    def _explain(self, ref: ModelRef, error: Exception) -> ModelError:
        """Turn a loading exception into one sentence the user can act on."""
        if isinstance(error, ModelError):
            return error
        name = ref.display_name
        chain = _exception_chain(error)
        text = " ".join(str(e) for e in chain)
        if any(isinstance(e, GatedRepoError) for e in chain):
            return GatedModelError(message("models.gated", model=name))
        if any(isinstance(e, RevisionNotFoundError) for e in chain):
            return ModelNotFoundError(message("models.no_such_revision", model=name))
        if any(isinstance(e, RepositoryNotFoundError) for e in chain) or "is not a local folder and is not a valid model identifier" in text:
            return ModelNotFoundError(message("models.not_on_hub", model=name))
        offline = self.settings.offline or any(
            isinstance(e, LocalEntryNotFoundError) for e in chain
        ) or "couldn't connect" in text.lower() or "offline" in text.lower()
        if ref.hub_id and offline:
            return ModelOfflineError(message("models.offline", model=name, repo=ref.hub_id))
        if "trust_remote_code" in text:
            return InvalidModelError(message("models.remote_code", model=name, allowed=ref.hub_id or ref.text))
        if "Unrecognized" in text or "does not appear to have" in text or "not supported" in text:
            return InvalidModelError(message("models.unusable", model=name, problem=_first_line(error)))
        log.exception("Unexpected error loading %s", ref.text)
        return ModelError(message("models.load_failed", model=name, problem=_first_line(error)))


def _exception_chain(error: BaseException) -> list[BaseException]:
    chain, seen = [], set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        chain.append(error)
        error = error.__cause__ or error.__context__
    return chain


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0][:300] if text else type(error).__name__
