"""Transformers Playground: `python app.py --help` for the flags.

A Space imports this module and serves `demo`; run as a script, it also parses
flags and launches the server.
"""

from __future__ import annotations

import logging
import sys

from modules.config import Settings
from modules.serving.launch import launch
from modules.ui.layout import build_demo

logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

settings = Settings.from_args(sys.argv[1:] if __name__ == "__main__" else [])
demo = build_demo(settings)

if __name__ == "__main__":
    launch(demo, settings)
