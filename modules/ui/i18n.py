"""The page in English or Simplified Chinese, with Gradio's own gr.I18n.

Static text (tab names, labels, buttons, placeholders) is `_("key")`: Gradio's front end
translates it in the browser, from the tables in modules/locales, picking the locale from
`navigator.language`. Text the server writes (errors, status lines, anything with a
parameter) is rendered here with `reader_language()`, the language of the request
being served: the explicit choice (a cookie the switch sets), else Accept-Language.

The switch: a radio in the header. Its value is remembered in a gr.BrowserState; on
every page load the saved value (if any) is put back, and choosing a language calls the
front end's own `changeLocale` (what Gradio's Settings panel calls), sets the cookie,
and re-renders the server-written texts registered with `on_language_change`.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from http.cookies import SimpleCookie

import gradio as gr
from gradio.context import LocalContext

from modules.messages import DEFAULT_LANGUAGE, LANGUAGES, supported, table
from modules.messages import text as message_text

_MARKER = "__i18n__"  # how an I18nData reads as a string (gradio/i18n.py)
COOKIE = "playground-language"
STORAGE_KEY = "playground-language"
CHOICES = [("English", "en"), ("中文", "zh-CN")]

# Gradio's front end maps a browser's "zh-TW" to its own Traditional Chinese table and has
# none of our keys there, so it also gets the Simplified one (like supported() does).
I18N = gr.I18n(**{language: dict(table(language)) for language in LANGUAGES},
               **{"zh-TW": dict(table("zh-CN"))})

# Run in the browser. Gradio 6.31 has no supported way to change the page's locale from
# outside (no query parameter, no global API; launch's i18n only carries the tables).
# Its bundle exports `changeLocale` from its core module (what its Settings panel calls);
# importing that module's URL again returns the same instance, so its locale store
# changes for the whole page. The module's name is hashed, so it is looked up among the
# loaded resources; if it cannot be found or has changed, nothing happens (no console
# error): the page stays in the browser's language and server-written texts still follow
# the choice (the cookie).
_SET_LOCALE = """
  try {
    const core = performance.getEntriesByType("resource").map((entry) => entry.name)
      .find((name) => /\\/assets\\/core-[^/]+\\.js$/.test(name));
    const module = core ? await import(core) : null;
    if (typeof module?.changeLocale === "function") { module.changeLocale(language); }
  } catch (_) { /* the browser's language stays */ }
"""
# A choice: remembered in a cookie too, so that the server writes in that language.
_CHOOSE_JS = f"""
async (language) => {{
  document.cookie = "{COOKIE}=" + language + "; path=/; max-age=31536000; SameSite=Lax";
  {_SET_LOCALE}
  return language;
}}
"""
# On load: the saved choice, else the browser's language. A Chinese the front end has
# no table for (zh-HK, zh-SG) gets Simplified, as the server gives it (supported()).
_RESTORE_JS = f"""
async (saved) => {{
  if (saved) return await ({_CHOOSE_JS})(saved);
  document.cookie = "{COOKIE}=; path=/; max-age=0";  // no choice: the browser's language
  const chinese = (tag) => (tag || "").toLowerCase().startsWith("zh");
  const language = chinese(navigator.language) ? "zh-CN" : "en";
  if (chinese(document.documentElement.lang) !== chinese(language)) {{ {_SET_LOCALE} }}
  return language;
}}
"""

@dataclass(frozen=True)
class _Localizer:
    render: Callable[..., object]  # (language, *input values) -> output value(s)
    outputs: list[gr.components.Component]
    inputs: list[gr.components.Component]


def _(key: str) -> gr.i18n.I18nData:
    """A static label the browser translates."""
    return I18N(key)


def reader_language(request: gr.Request | None = None) -> str:
    """The language of the request being served: the switch's cookie, else the browser's
    Accept-Language, else English. Outside a request (tests, the API), English."""
    request = request or LocalContext.request.get(None)
    if request is None:
        return DEFAULT_LANGUAGE
    headers = dict(getattr(request, "headers", {}) or {})
    cookies = SimpleCookie(headers.get("cookie", ""))
    if COOKIE in cookies:
        return supported(cookies[COOKIE].value)
    return _accepted_language(headers.get("accept-language", ""))


def _accepted_language(header: str) -> str:
    """The most preferred language of an Accept-Language header we have ('zh-CN,zh;q=0.9')."""
    ranked = []
    for position, part in enumerate(header.split(",")):
        tag, _, quality = part.strip().partition(";q=")
        try:
            ranked.append((-float(quality or 1), position, tag.strip()))
        except ValueError:
            continue
    for _weight, _position, tag in sorted(ranked):
        if tag.lower() == "en" or tag.lower().startswith(("en-", "zh")):
            return supported(tag)
    return DEFAULT_LANGUAGE


def in_reader_language(value: object) -> str:
    """A message, an error or a notice from the tasks (anything with `text(language)`) in the
    reader's language; anything else as a string."""
    render = getattr(value, "text", None)
    return render(reader_language()) if callable(render) else str(value)


def t(key: str, **params: object) -> str:
    """`key` in the current reader's language, for text the server writes."""
    return message_text(key, reader_language(), **params)


class LanguageSwitch:
    """The header's language radio, and the server-written texts it re-renders."""

    def __init__(self) -> None:
        self.localizers: list[_Localizer] = []
        self.radio = gr.Radio(CHOICES, value=None, label=_("app.language"), show_label=False,
                              elem_id="language-switch", container=False)
        self.saved = gr.BrowserState(None, storage_key=STORAGE_KEY,
                                     secret="language-is-not-secret")  # kept across restarts

    def on_language_change(self, render: Callable[..., object],
                           outputs: Sequence[gr.components.Component],
                           inputs: Sequence[gr.components.Component] = ()) -> None:
        """Call `render(language, *inputs)` for `outputs` on load and whenever the language
        changes (one output: one value; several: a tuple)."""
        self.localizers.append(_Localizer(render, list(outputs), list(inputs)))

    def wire(self, demo: gr.Blocks) -> None:
        """On load: the saved choice back into the radio (and the browser's locale).
        Then every localizer for the reader's language (per request: the cookie or the
        browser's own). A choice: saved, applied in the browser, texts re-rendered."""
        outputs = [output for each in self.localizers for output in each.outputs]
        inputs = [input_ for each in self.localizers for input_ in each.inputs]

        def render_all(*given: object) -> list[object]:
            language, values, start = reader_language(), [], 0
            for each in self.localizers:
                value = each.render(language, *given[start:start + len(each.inputs)])
                start += len(each.inputs)
                values.extend(value if len(each.outputs) > 1 else [value])
            return values

        loaded = demo.load(lambda saved: saved or gr.skip(), self.saved, self.radio,
                           queue=False, api_visibility="private")
        loaded.then(None, self.radio, self.radio, js=_RESTORE_JS, queue=False,
                    api_visibility="private").then(
            render_all, inputs, outputs, queue=False, api_visibility="private")
        self.radio.input(None, self.radio, self.radio, js=_CHOOSE_JS, queue=False,
                         api_visibility="private").then(
            lambda language: language, self.radio, self.saved, queue=False,
            api_visibility="private").then(
            render_all, inputs, outputs, queue=False, api_visibility="private")


class TranslatedBlocks(gr.Blocks):
    """gr.Blocks that keeps the translation tables however it is served: gr.Blocks takes
    none, and `launch()` without `i18n=` would drop them (tests and `gradio app.py` call
    it so); `mount_gradio_app` without `i18n=` keeps the attribute set here."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.i18n_instance = I18N

    def launch(self, *args, i18n: gr.I18n | None = None, **kwargs):
        return super().launch(*args, i18n=i18n or I18N, **kwargs)

    def get_api_info(self, *args, **kwargs):
        """Gradio's API description ("Use via API", /gradio_api/info, its clients) with each
        translated label in English: Gradio copies a component's label into it as it is,
        and an `I18nData` label would show as an `__i18n__{...}` marker there."""
        info = super().get_api_info(*args, **kwargs)
        for endpoints in info.values():
            for endpoint in endpoints.values():
                for field in (*endpoint.get("parameters", ()), *endpoint.get("returns", ())):
                    field["label"] = english_label(field.get("label"))
        return info


def english_label(label: object) -> object:
    """A translated label (an `I18nData`, or its `__i18n__` string form) as its English text;
    any other label as it is."""
    if isinstance(label, gr.i18n.I18nData):
        return message_text(label.key)
    if isinstance(label, str) and label.startswith(_MARKER):
        try:
            return message_text(json.loads(label[len(_MARKER):])["key"])
        except (ValueError, KeyError, TypeError):
            return label
    return label
