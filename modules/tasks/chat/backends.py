"""The one chat-backend contract, and how the app picks its backend.

Every chat client (the chat tab, /v1) streams replies through a `ChatBackend`
chosen once at start-up (`chat_backend_for`, called by `AppContext.create`):
`LocalChatBackend` runs a model from the app's cache, `RemoteChatBackend`
(remote.py) forwards to an OpenAI-compatible server (--remote-base-url). So
pointing the app at vLLM or llama.cpp moves the tab and the API alike.

Zero-shot scoring and the next-token explorer are not chat clients: they need
the model's logits, which an OpenAI-compatible server does not return, so they
always run on a local model from the cache.
"""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import aclosing
from typing import Protocol, runtime_checkable

import anyio

from modules.config import Settings
from modules.engine.callbacks import StatusCallback
from modules.engine.compute import on_request_thread
from modules.engine.model_cache import LoadedModel, ModelCache, ModelKind
from modules.engine.model_choice import ActiveModel, chat_model_choices
from modules.engine.batching import scheduler_for
from modules.tasks.chat.generation import astream_chat, stream_chat
from modules.tasks.chat.logprobs import LogprobRecorder
from modules.tasks.chat.params import ChatChunk, GenerationParams

Message = dict[str, str]


@runtime_checkable
class ChatBackend(Protocol):
    """Streams chat replies; what the chat tab and /v1 are written against."""

    name: str  # "local" or "remote"

    @property
    def description(self) -> str:
        """One line for people: where replies come from."""

    @property
    def default_model(self) -> str:
        """The model used when a request names none ("" lets the backend choose)."""

    def models(self) -> list[str]:
        """The model names a request may ask for."""

    def is_ready(self, model: str | None = None) -> bool:
        """True when the first reply will not wait for a model to load."""

    def prepare(self, model: str | None = None, on_status: StatusCallback | None = None) -> str:
        """Make `model` ready (load it) and describe it in a few words."""

    def stream(self, messages: list[Message], params: GenerationParams,
               cancel: threading.Event | None = None, model: str | None = None,
               ) -> Iterator[ChatChunk]:
        """The growing reply; the last chunk carries finish_reason and usage."""

    def astream(self, messages: list[Message], params: GenerationParams,
                cancel: threading.Event | None = None, model: str | None = None,
                ) -> AsyncIterator[ChatChunk]:
        """`stream` for a reader on an event loop (the /v1 server), without blocking it."""

    def context_window(self, model: str | None = None) -> int | None:
        """Tokens `model` sees at once, when known without loading it (the context meter)."""


class LocalChatBackend:
    """Chat on a model held by the app's model cache (`stream_chat`)."""

    name = "local"

    def __init__(self, settings: Settings, cache: ModelCache, chat_model: ActiveModel) -> None:
        self.settings, self.cache, self.chat_model = settings, cache, chat_model

    @property
    def description(self) -> str:
        return f"{self.chat_model.ref} on this machine"

    @property
    def default_model(self) -> str:
        return self.chat_model.ref

    def models(self) -> list[str]:
        return chat_model_choices(self.settings)

    def resolve(self, model: str | None) -> str:
        return (model or "").strip() or self.chat_model.ref

    def is_ready(self, model: str | None = None) -> bool:
        return self.cache.is_loaded(self.resolve(model), ModelKind.CAUSAL_LM)

    def prepare(self, model: str | None = None, on_status: StatusCallback | None = None) -> str:
        loaded = self.cache.get(self.resolve(model), ModelKind.CAUSAL_LM, on_status)
        speed = loaded.speed_line  # on a CPU: the plan and kernels this machine runs it with
        return loaded.description if speed is None else f"{loaded.description}; {speed}"

    def stream(self, messages: list[Message], params: GenerationParams,
               cancel: threading.Event | None = None, model: str | None = None,
               ) -> Iterator[ChatChunk]:
        loaded = self.load(model)
        yield from stream_chat(loaded, messages, params, cancel, self.settings.max_input_tokens)

    async def astream(self, messages: list[Message], params: GenerationParams,
                      cancel: threading.Event | None = None, model: str | None = None,
                      ) -> AsyncIterator[ChatChunk]:
        loaded = await anyio.to_thread.run_sync(on_request_thread(self.load), model)
        async with aclosing(astream_chat(loaded, messages, params, cancel,
                                         self.settings.max_input_tokens)) as chunks:
            async for chunk in chunks:
                yield chunk

    def load(self, model: str | None = None) -> LoadedModel:
        """The model itself, for raw-text completion and prompt scoring (/v1/completions);
        its batch scheduler is made here, sized by the settings (PLAYGROUND_BATCH_SIZE)."""
        loaded = self.cache.get(self.resolve(model), ModelKind.CAUSAL_LM)
        scheduler_for(loaded, max_sequences=self.settings.batch_size,
                      kv_cache_tokens=self.settings.kv_cache_tokens)
        return loaded

    def logprob_recorder(self, model: str | None, top: int) -> LogprobRecorder:
        """A recorder for one request's token log-probabilities (put it in the params'
        logits_processors); special tokens such as end-of-turn are left out."""
        tokenizer = self.cache.get(self.resolve(model), ModelKind.CAUSAL_LM).tokenizer
        return LogprobRecorder(tokenizer, top, frozenset(tokenizer.all_special_ids))

    def context_window(self, model: str | None = None) -> int | None:
        if not self.is_ready(model):
            return None
        return self.cache.get(self.resolve(model), ModelKind.CAUSAL_LM).context_window()


def chat_backend_for(settings: Settings, cache: ModelCache, chat_model: ActiveModel) -> ChatBackend:
    """The remote server when one is configured (settings.remote_base_url), else local."""
    if settings.remote_base_url:
        from modules.tasks.chat.remote import RemoteChatBackend

        return RemoteChatBackend(settings.remote_base_url, settings.remote_api_key,
                                 settings.remote_model or "")
    return LocalChatBackend(settings, cache, chat_model)
