"""The app module: importable without launching, four tabs in order, active model shown."""

import importlib
import sys

import gradio as gr

from modules.config import EMBEDDED_MODEL


def test_app_exposes_demo_without_launching(monkeypatch):
    monkeypatch.setattr(sys, "argv", ["pytest"])
    sys.modules.pop("app", None)
    app = importlib.import_module("app")
    assert isinstance(app.demo, gr.Blocks)
    assert app.demo.server_name is None  # built, not launched
    tabs = [block.label for block in app.demo.blocks.values() if isinstance(block, gr.Tab)]
    assert tabs == ["Chat", "Translation", "Sentiment", "Next-token explorer"]
    header = next(
        block.value for block in app.demo.blocks.values()
        if isinstance(block, gr.Markdown) and block.elem_id == "active-model"
    )
    assert EMBEDDED_MODEL in header and "offline" in header
    assert app.demo.playground.cache.loaded_names() == []  # nothing loads at import
