"""Every user-facing text, by key, in English and Simplified Chinese.

The two tables are modules/locales/en.json and zh-CN.json (flat: key -> text with
`{name}` parameters). Logic below the UI never writes a sentence in one language: it
builds a `Message` (a key and its parameters), whose `str()` is the English text,
which is what the HTTP API returns (the convention of OpenAI-compatible clients).
The page renders the same message in the reader's language (modules/ui/i18n.py).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

LOCALES = Path(__file__).resolve().parent / "locales"
DEFAULT_LANGUAGE = "en"
LANGUAGES = ("en", "zh-CN")  # BCP 47 tags, as Gradio's front end names its locales


@cache
def table(language: str) -> Mapping[str, str]:
    """The key -> text table of one language (read once)."""
    return json.loads((LOCALES / f"{language}.json").read_text(encoding="utf-8"))


def supported(language: str | None) -> str:
    """The supported language closest to a BCP 47 tag: 'zh', 'zh-Hans-CN', 'zh-SG' -> 'zh-CN';
    anything else -> English. (Traditional Chinese readers get Simplified, not English.)"""
    tag = (language or "").strip().lower()
    return "zh-CN" if tag == "zh" or tag.startswith("zh-") else DEFAULT_LANGUAGE


def text(key: str, language: str = DEFAULT_LANGUAGE, **params: object) -> str:
    """The text of `key` in `language` with `params` filled in (a parameter that is itself a
    `Message`, or an error built from one, in the same language); English if that language
    lacks the key (a unit test keeps the tables in step), the key itself if both do."""
    template = table(supported(language)).get(key) or table(DEFAULT_LANGUAGE).get(key, key)
    if not params:
        try:
            return template.format()  # literal braces are written doubled: {{ }}
        except (KeyError, IndexError, ValueError):
            return template  # a parameter missing: visible, not a crash
    return template.format(**{name: _in(language, value) for name, value in params.items()})


def _in(language: str, value: object) -> object:
    """A parameter as the reader should see it: nested messages in the same language."""
    render = getattr(value, "text", None)
    return render(language) if callable(render) else value


@dataclass(frozen=True)
class Message:
    """A user-facing sentence not yet put into words: rendered per reader."""

    key: str
    params: Mapping[str, object] = field(default_factory=dict)

    def text(self, language: str = DEFAULT_LANGUAGE) -> str:
        return text(self.key, language, **self.params)

    def __str__(self) -> str:
        return self.text(DEFAULT_LANGUAGE)

    def english(self) -> "EnglishText":
        """The English text as a `str` that still knows this message: for fields typed `str`
        (an HTTP header, a notice the API returns) that the page renders per reader."""
        return EnglishText(self)


class EnglishText(str):
    """A message's English text, as a plain `str` everywhere, plus `text(language)`."""

    message: Message

    def __new__(cls, problem: Message) -> "EnglishText":
        made = super().__new__(cls, str(problem))
        made.message = problem
        return made

    def text(self, language: str = DEFAULT_LANGUAGE) -> str:
        return self.message.text(language)


def message(key: str, **params: object) -> Message:
    """`Message(key, params)`, shorter to write at a raise."""
    return Message(key, params)
