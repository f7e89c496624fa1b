"""What every tab and the API are built with: the settings, the one model cache,
the active chat model, and the chat backend chosen once at start-up."""

from __future__ import annotations

from dataclasses import dataclass

from modules.config import Settings
from modules.engine.model_cache import ModelCache
from modules.engine.model_choice import ActiveModel, active_chat_model, chat_model_choices
from modules.tasks.chat.backends import ChatBackend, chat_backend_for


@dataclass(frozen=True)
class AppContext:
    settings: Settings
    cache: ModelCache
    chat_model: ActiveModel
    # Local model or remote server (settings.remote_base_url): the chat tab and /v1 both use it.
    chat_backend: ChatBackend

    @classmethod
    def create(cls, settings: Settings, cache: ModelCache | None = None) -> AppContext:
        cache = cache or ModelCache(settings)
        chat_model = active_chat_model(settings)
        return cls(settings, cache, chat_model, chat_backend_for(settings, cache, chat_model))

    def chat_model_choices(self) -> list[str]:
        return chat_model_choices(self.settings)
