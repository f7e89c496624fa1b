"""The one gr.Blocks: a header saying which model is active, then the four tabs."""

from __future__ import annotations

import gradio as gr

from modules.app_context import AppContext
from modules.config import Settings
from modules.engine.model_cache import ModelCache
from modules.engine.model_choice import with_connectivity
from modules.ui import chat_tab, explorer_tab, sentiment_tab, translation_tab

TITLE = "Transformers Playground"


def build_demo(settings: Settings, cache: ModelCache | None = None) -> gr.Blocks:
    """Build the app. Nothing is loaded here: models load on first use, through `cache`."""
    context = AppContext.create(with_connectivity(settings), cache)
    with gr.Blocks(title=TITLE) as demo:
        gr.Markdown(
            f"# 🤗 {TITLE}\nOpen models, running privately on this machine. "
            f"Chat model: **{context.chat_model.ref}** — {context.chat_model.reason}."
            + (" Offline: the Hugging Face Hub is not used." if context.settings.offline else ""),
            elem_id="active-model",
        )
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
    demo.playground = context  # tests and the HTTP API reach the cache through the demo
    return demo
