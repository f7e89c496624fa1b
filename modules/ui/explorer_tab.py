"""The explorer tab (layout and event wiring only)."""

from __future__ import annotations

import gradio as gr

from modules.app_context import AppContext


def build(context: AppContext) -> None:
    gr.Markdown("This tab is being built.")
