"""Which chat model is active, and why: the configured one, or the embedded one offline."""

from __future__ import annotations

import dataclasses
import logging
import os
import socket
from dataclasses import dataclass
from urllib.parse import urlparse


from modules.config import EMBEDDED_MODEL, Settings
from modules.errors import PlaygroundError
from modules.engine.model_refs import in_hub_cache, parse_model_ref

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ActiveModel:
    ref: str
    reason: str


def hub_reachable(timeout: float = 2.0) -> bool:
    """Can we open a TCP connection to the Hub? Cheap, and fails fast with no DNS."""
    endpoint = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    port = endpoint.port or (443 if endpoint.scheme == "https" else 80)
    try:
        with socket.create_connection((endpoint.hostname, port), timeout=timeout):
            return True
    except OSError:
        return False


def with_connectivity(settings: Settings) -> Settings:
    """Settings marked offline when the Hub cannot be reached, so loads never hang on it."""
    if settings.offline or hub_reachable():
        return settings
    log.warning("The Hugging Face Hub cannot be reached: running offline.")
    return dataclasses.replace(settings, offline=True)


def available_locally(ref_text: str) -> bool:
    """Is this model usable without the network (local file/folder, or in the HF cache)?"""
    try:
        ref = parse_model_ref(ref_text)
    except PlaygroundError:
        return False
    if ref.hub_id is None:
        return True
    return in_hub_cache(ref)


def active_chat_model(settings: Settings) -> ActiveModel:
    """The configured chat model, or the embedded one when offline and it is not cached."""
    if not settings.offline or available_locally(settings.chat_model):
        return ActiveModel(settings.chat_model, "configured chat model")
    return ActiveModel(
        EMBEDDED_MODEL,
        f"offline: embedded SmolLM2-135M-Instruct ({settings.chat_model} is not cached here)",
    )


def chat_model_choices(settings: Settings) -> list[str]:
    """The models a chat dropdown offers: active first, then the others configured."""
    choices = [active_chat_model(settings).ref, settings.chat_model, *settings.extra_chat_models]
    choices.append(EMBEDDED_MODEL)
    return list(dict.fromkeys(choices))
