"""The app module: importable without launching, four tabs in order, active model shown."""

import importlib
import sys

import gradio as gr

from modules.config import EMBEDDED_MODEL
from modules.engine.model_cache import ModelKind
from modules.messages import text


def test_app_exposes_demo_without_launching(monkeypatch):
    monkeypatch.setattr(sys, "argv", ["pytest"])
    sys.modules.pop("app", None)
    app = importlib.import_module("app")
    assert isinstance(app.demo, gr.Blocks)
    assert not app.demo.is_running  # built, not launched
    tabs = [  # the top-level tabs (a tab may hold tabs of its own), as English readers see them
        text(block.label.key) for block in app.demo.blocks.values()
        if isinstance(block, gr.Tab) and block.parent.parent is app.demo
    ]
    assert tabs == ["Chat", "Translation", "Sentiment", "Next-token explorer"]
    header = next(
        block.value for block in app.demo.blocks.values()
        if isinstance(block, gr.Markdown) and block.elem_id == "active-model"
    )
    assert EMBEDDED_MODEL in header and "offline" in header
    assert app.context.cache.loaded_names() == []  # nothing loads at import
    progress = app.context.cache.load_progress(app.context.chat_model.ref, ModelKind.CAUSAL_LM)
    assert progress.state == "idle"  # the warm start belongs to launch, not to import
