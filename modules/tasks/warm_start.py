"""Warm start: the default chat model loads in the background as the app starts.

The page answers at once; the header and GET /health read the load's progress, and
a message sent meanwhile waits for the same load (the model cache loads it once).
"""

from __future__ import annotations

from modules.config import Settings
from modules.engine.model_cache import LoadProgress, ModelCache, ModelKind
from modules.messages import Message, message


def start_loading_chat_model(settings: Settings, cache: ModelCache, ref: str) -> None:
    """Begin loading the default chat model (GGUF conversion included) unless chat is remote."""
    if not settings.remote_base_url:
        cache.load_in_background(ref, ModelKind.CAUSAL_LM)


def chat_model_progress(settings: Settings, cache: ModelCache, ref: str) -> LoadProgress:
    """Where the default chat model stands; a remote chat server is always "ready" here."""
    if settings.remote_base_url:
        return LoadProgress("ready")
    return cache.load_progress(ref, ModelKind.CAUSAL_LM)


def progress_message(progress: LoadProgress) -> Message | None:
    """One line for the page's header; None once ready or when nothing was started."""
    if progress.state == "loading":
        status = progress.message or message("app.loading_default")
        return message("app.loading", status=status, seconds=f"{progress.elapsed_s:.0f}")
    if progress.state == "failed":
        return message("app.load_failed", problem=progress.message)
    return None
