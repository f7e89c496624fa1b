"""Presets: a named bundle of a system prompt and sampling settings.

A few ship with the app; the user's own are kept with the conversations (in the
browser's store, under "presets"). Plain values in and out.
"""

from __future__ import annotations

from modules.errors import InvalidInputError
from modules.messages import message as keyed
from modules.tasks.chat.params import CHAT_TAB_REPETITION_PENALTY, GenerationParams

DEFAULTS = GenerationParams()
PRESET_FIELDS = ("system_prompt", "max_new_tokens", "temperature", "top_p", "top_k",
                 "repetition_penalty", "do_sample")
MAX_USER_PRESETS = 50
HELPFUL = "You are a helpful assistant."
BUILT_IN: dict[str, dict] = {
    "Balanced": {"system_prompt": HELPFUL, "temperature": DEFAULTS.temperature, "top_p": DEFAULTS.top_p,
                 "top_k": DEFAULTS.top_k, "repetition_penalty": CHAT_TAB_REPETITION_PENALTY,
                 "do_sample": True},
    "Precise (greedy)": {"system_prompt": HELPFUL, "temperature": 0.0, "top_p": 1.0, "top_k": 0,
                         "repetition_penalty": CHAT_TAB_REPETITION_PENALTY, "do_sample": False},
    "Creative": {"system_prompt": "You are a creative, vivid writer.", "temperature": 1.0,
                 "top_p": 0.95, "top_k": 100, "repetition_penalty": CHAT_TAB_REPETITION_PENALTY,
                 "do_sample": True},
    "Translator zh→en": {
        "system_prompt": "You are a professional translator. Translate the user's Chinese text into "
                         "natural, faithful English. Reply with the translation only.",
        "temperature": 0.0, "top_p": 1.0, "top_k": 0, "repetition_penalty": 1.0, "do_sample": False,
    },
}
DEFAULT_PRESET = "Balanced"


def preset_names(store: dict | None) -> list[str]:
    """Built-in presets first, then the user's own (alphabetical)."""
    return [*BUILT_IN, *sorted(_user_presets(store))]


def preset_values(store: dict | None, name: str) -> dict:
    """The settings `name` sets (only the fields it names)."""
    found = BUILT_IN.get(name) or _user_presets(store).get(name)
    if found is None:
        raise InvalidInputError(keyed("chat.no_such_preset", name=name))
    return {key: found[key] for key in PRESET_FIELDS if key in found}


def save_preset(store: dict | None, name: str, values: dict) -> dict:
    """The store with the user's preset `name` set to `values` (built-in names are kept as shipped)."""
    name = " ".join((name or "").split())[:80]
    if not name:
        raise InvalidInputError(keyed("chat.preset_name_missing"))
    if name in BUILT_IN:
        raise InvalidInputError(keyed("chat.preset_built_in_name", name=name))
    presets = _user_presets(store)
    if name not in presets and len(presets) >= MAX_USER_PRESETS:
        raise InvalidInputError(keyed("chat.too_many_presets", limit=MAX_USER_PRESETS))
    presets[name] = {key: values[key] for key in PRESET_FIELDS if key in values}
    return {**(store or {}), "presets": presets}


def delete_preset(store: dict | None, name: str) -> dict:
    if name in BUILT_IN:
        raise InvalidInputError(keyed("chat.preset_built_in_delete", name=name))
    presets = _user_presets(store)
    if presets.pop(name, None) is None:
        raise InvalidInputError(keyed("chat.no_such_preset", name=name))
    return {**(store or {}), "presets": presets}


def _user_presets(store: dict | None) -> dict[str, dict]:
    presets = (store or {}).get("presets") if isinstance(store, dict) else None
    return {k: v for k, v in presets.items() if isinstance(v, dict)} if isinstance(presets, dict) else {}
