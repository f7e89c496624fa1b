"""What every tab is built with: the settings, the one model cache, the active chat model."""

from __future__ import annotations

from dataclasses import dataclass

from modules.config import Settings
from modules.engine.model_cache import ModelCache
from modules.engine.model_choice import ActiveModel, active_chat_model, chat_model_choices


@dataclass(frozen=True)
class AppContext:
    settings: Settings
    cache: ModelCache
    chat_model: ActiveModel

    @classmethod
    def create(cls, settings: Settings, cache: ModelCache | None = None) -> AppContext:
        return cls(settings, cache or ModelCache(settings), active_chat_model(settings))

    def chat_model_choices(self) -> list[str]:
        return chat_model_choices(self.settings)
