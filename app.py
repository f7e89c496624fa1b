"""Transformers Playground: `python app.py --help` for the flags.

Run as a script (how a Hugging Face Space, the container and users start it), it
checks whether the Hub can be reached, builds the page and launches the server.
Imported, it builds `demo` without launching (tests, `gradio app.py`).
"""

from __future__ import annotations

import logging
import sys

from modules.app_context import AppContext
from modules.config import Settings
from modules.engine.model_choice import with_connectivity
from modules.serving.launch import launch
from modules.ui.layout import build_demo

logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

settings = Settings.from_args(sys.argv[1:] if __name__ == "__main__" else [])
# Start-up's one network probe (2 s at most): offline, chat falls back to the embedded model.
context = AppContext.create(with_connectivity(settings))
demo = build_demo(context)

if __name__ == "__main__":
    launch(demo, context)
