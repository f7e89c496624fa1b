"""English and Chinese: the two key tables stay in step, every key the code names exists,
messages render per reader, the API keeps English, and the reader's language is found."""

from __future__ import annotations

import re
import string
from pathlib import Path

import gradio as gr
import pytest
from gradio.context import LocalContext

from modules.errors import InvalidInputError, ModelError
from modules.messages import LANGUAGES, Message, message, supported, table, text
from modules.tasks import translation
from modules.ui.errors import shows_user_errors
from modules.ui.i18n import COOKIE, I18N, reader_language

ROOT = Path(__file__).resolve().parents[1]
# `_("key")`, `t("key", ...)`, `message("key", ...)` (or `keyed(...)` where `message` is a
# variable), `Message("key")`, `text("key", ...)`, `message_text(...)`
KEY_USE = re.compile(r"""\b(?:_|t|message|keyed|Message|text|message_text)\(\s*f?["']([a-z_]+\.[a-z_.]+)["']""")


def placeholders(template: str) -> set[str]:
    return {name for _, name, _, _ in string.Formatter().parse(template) if name}


def test_every_key_exists_in_both_languages():
    english, chinese = set(table("en")), set(table("zh-CN"))
    assert english - chinese == set(), "keys missing from modules/locales/zh-CN.json"
    assert chinese - english == set(), "keys missing from modules/locales/en.json"


@pytest.mark.parametrize("key", sorted(table("en")))
def test_both_languages_fill_the_same_parameters(key):
    assert placeholders(table("en")[key]) == placeholders(table("zh-CN")[key])
    assert table("zh-CN")[key].strip(), "an empty translation"


def test_every_key_named_in_the_code_exists():
    used = set()
    for path in [*ROOT.glob("modules/**/*.py"), ROOT / "app.py"]:
        used |= set(KEY_USE.findall(path.read_text(encoding="utf-8")))
    assert used, "the pattern finds the keys the code uses"
    assert used - set(table("en")) == set()


def test_the_front_end_gets_both_tables():
    assert set(I18N.translations) >= set(LANGUAGES)
    assert I18N.translations["zh-CN"]["tabs.translation"] == "翻译"


def test_a_message_reads_in_either_language_and_str_is_english():
    problem = message("translation.too_many_texts", count=2500, limit=2000)
    assert str(problem) == "2,500 texts; the limit is 2,000 at once."
    assert problem.text("zh-CN") == "共 2,500 条文本；一次最多 2,000 条。"


def test_an_error_keeps_english_for_the_api_and_renders_chinese_for_the_page():
    error = InvalidInputError(message("translation.not_utf8"))
    assert str(error) == "The file is not UTF-8 text; save it as UTF-8 and try again."
    assert "UTF-8" in error.text("zh-CN") and "文件" in error.text("zh-CN")
    plain = InvalidInputError("A message not yet turned into a key.")
    assert plain.text("zh-CN") == str(plain)  # shown as raised


def test_nested_messages_render_in_the_same_language():
    """An error wrapping another (translation's "model failed") is one language throughout."""
    settings_models = {"zh-en": "x"}
    with pytest.raises(InvalidInputError) as caught:
        translation.model_for(settings_models, "ko-en")
    inner = caught.value
    outer = ModelError(message("translation.model_failed", problem=inner,
                               direction=translation.DirectionNames(("ko-en",)), variable="V"))
    assert "Korean → English" in str(outer) and "Korean" in str(outer).split(".")[0]
    chinese = outer.text("zh-CN")
    assert "韩语 → 英语" in chinese and "Korean" not in chinese


@pytest.mark.parametrize("tag, expected", [
    ("zh-CN", "zh-CN"), ("zh", "zh-CN"), ("zh-Hans-CN", "zh-CN"), ("ZH-tw", "zh-CN"),
    ("en-US", "en"), ("fr", "en"), ("", "en"), (None, "en"),
])
def test_supported_language(tag, expected):
    assert supported(tag) == expected


def request_with(headers: dict[str, str]) -> gr.Request:
    return gr.Request(headers=headers)


@pytest.mark.parametrize("headers, expected", [
    ({}, "en"),
    ({"accept-language": "zh-CN,zh;q=0.9,en;q=0.8"}, "zh-CN"),
    ({"accept-language": "fr-FR,fr;q=0.9,zh;q=0.5,en;q=0.3"}, "zh-CN"),  # first we have
    ({"accept-language": "en;q=0.5,zh-TW;q=0.9"}, "zh-CN"),
    ({"accept-language": "de-DE"}, "en"),
    ({"accept-language": "zh-CN", "cookie": f"other=1; {COOKIE}=en"}, "en"),  # the switch wins
    ({"accept-language": "en-US", "cookie": f"{COOKIE}=zh-CN"}, "zh-CN"),
])
def test_reader_language_from_the_switch_then_the_browser(headers, expected):
    assert reader_language(request_with(headers)) == expected


def test_outside_a_request_the_reader_reads_english():
    assert reader_language() == "en"


def test_the_ui_adapter_shows_a_keyed_error_in_the_readers_language():
    @shows_user_errors
    def handler():
        raise InvalidInputError(message("translation.sentence_too_long"))

    token = LocalContext.request.set(request_with({"accept-language": "zh-CN,zh"}))
    try:
        with pytest.raises(gr.Error) as caught:
            handler()
    finally:
        LocalContext.request.reset(token)
    assert caught.value.message == text("translation.sentence_too_long", "zh-CN")
    with pytest.raises(gr.Error) as english:  # no request: English
        handler()
    assert english.value.message == "A sentence is too long for the translation model."


def test_a_message_is_a_value():
    assert message("tabs.chat") == Message("tabs.chat", {})
    assert text("no.such.key", "zh-CN") == "no.such.key"  # visible, not a crash


def test_the_api_description_names_translated_fields_in_english():
    """"Use via API" and /gradio_api/info show English labels, not `__i18n__` markers."""
    from modules.ui.i18n import TranslatedBlocks, _

    def shout(words: str) -> str:
        """Shout the words."""
        return words.upper()

    with TranslatedBlocks() as demo:
        box = gr.Textbox(label=_("translation.text"))
        out = gr.Textbox(label=_("translation.output"))
        plain = gr.Textbox(label="Plain label")
        box.submit(shout, box, out, api_name="shout")
        plain.submit(shout, plain, plain, api_name="plain")
    endpoints = demo.get_api_info()["named_endpoints"]
    assert endpoints["/shout"]["parameters"][0]["label"] == text("translation.text", "en")
    assert endpoints["/shout"]["returns"][0]["label"] == text("translation.output", "en")
    assert endpoints["/plain"]["parameters"][0]["label"] == "Plain label"
    assert "__i18n__" not in repr(endpoints)


# Errors only the HTTP API can raise keep plain English (its clients read English anyway).
API_ONLY = {"modules/tasks/structured.py", "modules/tasks/completion.py", "modules/tasks/chat/params.py"}
API_ONLY_MESSAGES = ("max_text_tokens must be",)  # a zero-shot argument no page sets


def literal_user_errors(source: str, where: str) -> list[str]:
    """`SomeError("plain text")` / `SomeError(f"...")` calls of the app's user-facing errors."""
    import ast

    import modules.errors as errors

    names = {name for name, value in vars(errors).items()
             if isinstance(value, type) and issubclass(value, errors.PlaygroundError)}
    names.add("SchedulerBusyError")
    found = []
    for node in ast.walk(ast.parse(source)):
        if not (isinstance(node, ast.Call) and getattr(node.func, "id", None) in names and node.args):
            continue
        problem = node.args[1] if node.func.id == "InvalidParameterError" and len(node.args) > 1 else node.args[0]
        if isinstance(problem, (ast.Constant, ast.JoinedStr, ast.BinOp)):
            text_ = ast.unparse(problem)
            if not any(allowed in text_ for allowed in API_ONLY_MESSAGES):
                found.append(f"{where}:{node.lineno}: {text_[:80]}")
    return found


def test_errors_the_page_can_show_are_keyed_not_plain_english():
    """Every user-facing error below the UI is built from a key (so the page can show it in
    Chinese); only errors of the API-only code stay plain English."""
    files = [path for folder in ("modules/tasks", "modules/engine") for path in (ROOT / folder).rglob("*.py")
             if str(path.relative_to(ROOT)) not in API_ONLY]
    assert len(files) > 20
    found = [line for path in files
             for line in literal_user_errors(path.read_text(encoding="utf-8"), str(path.relative_to(ROOT)))]
    assert found == []


def test_the_literal_error_finder_finds_one():
    sample = ('raise InvalidInputError(f"No {thing}.")\nraise ModelError(message("x.y"))\n'
              'raise InvalidParameterError("stop", "Too many.")\n')
    assert len(literal_user_errors(sample, "sample.py")) == 2
