"""The one gr.Blocks: a header saying which model is active (and how its load is going), then the four tabs."""

from __future__ import annotations

import gradio as gr

from modules.app_context import AppContext
from modules.tasks.warm_start import chat_model_progress, progress_line
from modules.ui import chat_tab, explorer_tab, sentiment_tab, translation_tab

TITLE = "Transformers Playground"
PROGRESS_INTERVAL_S = 1.0


def build_demo(context: AppContext) -> gr.Blocks:
    """The page for `context`. Nothing is loaded here: start-up (serving/launch.py) starts
    the chat model's load in the background, other models load on first use."""
    with gr.Blocks(title=TITLE) as demo:
        gr.Markdown(_header(context), elem_id="active-model")
        _load_progress_line(context)
        with gr.Tabs():
            with gr.Tab("Chat", id="chat"):
                chat_tab.build(context)
            with gr.Tab("Translation", id="translation"):
                translation_tab.build(context)
            with gr.Tab("Sentiment", id="sentiment"):
                sentiment_tab.build(context)
            with gr.Tab("Next-token explorer", id="explorer"):
                explorer_tab.build(context)
    demo.queue(
        default_concurrency_limit=context.settings.concurrency_limit,
        max_size=context.settings.max_queue_size,
    )
    return demo


def _header(context: AppContext) -> str:
    settings = context.settings
    text = (f"# 🤗 {TITLE}\nOpen models, running privately on this machine. "
            f"Chat model: **{context.chat_model.ref}** — {context.chat_model.reason}.")
    if settings.offline:
        text += " Offline: the Hugging Face Hub is not used."
    if settings.public_url:
        text += f" OpenAI-compatible API: `{settings.public_url}/v1`."
    return text


def _load_progress_line(context: AppContext) -> None:
    """A line under the header that follows the chat model's background load, then hides."""

    line = gr.Markdown("", elem_id="load-progress")
    timer = gr.Timer(PROGRESS_INTERVAL_S)  # each page polls until the load is over

    def refresh() -> tuple[str, gr.Timer]:
        progress = chat_model_progress(context.settings, context.cache, context.chat_model.ref)
        return progress_line(progress), gr.Timer(active=progress.state == "loading")

    timer.tick(refresh, outputs=[line, timer], queue=False, show_progress="hidden",
               api_visibility="private")
