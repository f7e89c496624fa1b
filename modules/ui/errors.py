"""How every tab shows a problem the user can act on: one adapter, used everywhere.

Decorate a handler with `@shows_user_errors`: a `PlaygroundError` it raises (or a
generator handler raises while streaming) becomes a red toast with the message,
and nothing is logged, since nothing broke. Any other exception is a bug and
reaches Gradio (and the log) unchanged. `user_error` builds the toast for a
handler's own checks (`raise user_error(message(key, **params))`). A message built from
a key is shown in the reader's language (modules/ui/i18n.py); a plain string as it is.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import TypeVar

import gradio as gr

from modules.errors import PlaygroundError
from modules.messages import Message
from modules.ui.i18n import reader_language

F = TypeVar("F", bound=Callable)

__all__ = ["shows_user_errors", "user_error"]


def user_error(problem: Exception | Message | str) -> gr.Error:
    """A red toast with the message in the reader's language; no traceback in the server
    log, since nothing broke."""
    if isinstance(problem, (PlaygroundError, Message)):
        return gr.Error(problem.text(reader_language()), print_exception=False)
    return gr.Error(str(problem), print_exception=False)


def shows_user_errors(handler: F) -> F:
    """Turn the PlaygroundErrors that `handler` raises into `user_error` toasts."""
    if inspect.isgeneratorfunction(handler):
        @functools.wraps(handler)
        def streaming(*args, **kwargs):
            try:
                return (yield from handler(*args, **kwargs))
            except PlaygroundError as error:
                raise user_error(error) from error

        return streaming  # type: ignore[return-value]

    @functools.wraps(handler)
    def plain(*args, **kwargs):
        try:
            return handler(*args, **kwargs)
        except PlaygroundError as error:
            raise user_error(error) from error

    return plain  # type: ignore[return-value]
