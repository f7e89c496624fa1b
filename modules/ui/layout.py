"""The one gr.Blocks: a header saying which model is active (and how its load is going),
a language switch, then the four tabs. Text is English or Chinese (modules/ui/i18n.py)."""

from __future__ import annotations

import gradio as gr

from modules.app_context import AppContext
from modules.messages import DEFAULT_LANGUAGE, Message
from modules.messages import text as message_text
from modules.tasks.warm_start import chat_model_progress, progress_message
from modules.ui import chat_tab, explorer_tab, i18n, sentiment_tab, translation_tab
from modules.ui.chat.handlers import chat_model_reason
from modules.ui.i18n import _

TITLE = "Transformers Playground"
PROGRESS_INTERVAL_S = 1.0
TAB_KEYS = ("tabs.chat", "tabs.translation", "tabs.sentiment", "tabs.explorer")


def build_demo(context: AppContext) -> gr.Blocks:
    """The page for `context`. Nothing is loaded here: start-up (serving/launch.py) starts
    the chat model's load in the background, other models load on first use."""
    with i18n.TranslatedBlocks(title=TITLE) as demo:
        with gr.Row(equal_height=True):
            header = gr.Markdown(_header(context, DEFAULT_LANGUAGE), elem_id="active-model")
            with gr.Column(scale=0, min_width=180):
                switch = i18n.LanguageSwitch()
        switch.on_language_change(lambda language: _header(context, language), [header])
        _load_progress_line(context)
        with gr.Tabs():
            with gr.Tab(_(TAB_KEYS[0]), id="chat") as chat:
                chat_tab.build(context)
            with gr.Tab(_(TAB_KEYS[1]), id="translation") as translation:
                translation_tab.build(context, switch)
            with gr.Tab(_(TAB_KEYS[2]), id="sentiment") as sentiment:
                sentiment_tab.build(context)
            with gr.Tab(_(TAB_KEYS[3]), id="explorer") as explorer:
                explorer_tab.build(context)
        # The front end re-translates only the tabs it has shown when the locale changes.
        switch.on_language_change(lambda language: [gr.Tab(label=message_text(key, language))
                                                    for key in TAB_KEYS],
                                  [chat, translation, sentiment, explorer])
        switch.wire(demo)
    demo.queue(
        default_concurrency_limit=context.settings.concurrency_limit,
        max_size=context.settings.max_queue_size,
    )
    return demo


def _header(context: AppContext, language: str) -> str:
    settings = context.settings
    parts = [f"# 🤗 {message_text('app.title', language)}", message_text("app.tagline", language),
             message_text("app.chat_model", language, model=context.chat_model.ref,
                          reason=chat_model_reason(context))]
    if settings.offline:
        parts.append(message_text("app.offline", language))
    if settings.public_url:
        parts.append(message_text("app.api", language, url=f"{settings.public_url}/v1"))
    return f"{parts[0]}\n" + " ".join(parts[1:])


def _load_progress_line(context: AppContext) -> None:
    """A line under the header that follows the chat model's background load, then hides."""

    line = gr.Markdown("", elem_id="load-progress")
    timer = gr.Timer(PROGRESS_INTERVAL_S)  # each page polls until the load is over

    def refresh() -> tuple[str, gr.Timer]:
        progress = chat_model_progress(context.settings, context.cache, context.chat_model.ref)
        shown: Message | None = progress_message(progress)
        return (shown.text(i18n.reader_language()) if shown else ""), gr.Timer(
            active=progress.state == "loading")

    timer.tick(refresh, outputs=[line, timer], queue=False, show_progress="hidden",
               api_visibility="private")
