"""The one UI error adapter: PlaygroundErrors become quiet toasts, bugs stay bugs."""

from __future__ import annotations

import gradio as gr
import pytest

from modules.errors import InvalidInputError
from modules.ui.errors import shows_user_errors


def test_a_user_error_becomes_a_toast_with_its_message():
    @shows_user_errors
    def handler(text: str) -> str:
        raise InvalidInputError(f"Bad {text}.")

    with pytest.raises(gr.Error, match="Bad input.") as caught:
        handler("input")
    assert caught.value.print_exception is False


def test_a_streaming_handler_keeps_what_it_yielded_then_shows_the_error():
    @shows_user_errors
    def handler():
        yield "partial"
        raise InvalidInputError("Stopped early.")

    steps = handler()
    assert next(steps) == "partial"
    with pytest.raises(gr.Error, match="Stopped early."):
        next(steps)


def test_a_bug_is_not_disguised_as_a_user_error():
    @shows_user_errors
    def handler():
        raise KeyError("bug")

    with pytest.raises(KeyError):
        handler()
    assert handler.__name__ == "handler"  # Gradio reads the wrapped function's signature
