"""How the tabs show a problem the user can act on."""

from __future__ import annotations

import gradio as gr


def user_error(problem: Exception | str) -> gr.Error:
    """A red toast with the message; no traceback in the server log, since nothing broke."""
    return gr.Error(str(problem), print_exception=False)
