"""Exceptions whose message is meant for the person using the app.

Logic modules raise these with a `Message` (a key and parameters, modules/messages.py)
or, for now, a plain English string. `str(error)` is the English text, which the HTTP
API returns in its error body; the UI shows `error.text(language)`, the reader's
language. Anything else is a bug and is logged.
"""

from modules.messages import Message, message


class PlaygroundError(Exception):
    """An error the user can act on; its message is safe to show."""

    def __init__(self, problem: "str | Message" = "", *args: object) -> None:
        super().__init__(str(problem), *args)
        self.message = problem if isinstance(problem, Message) else None

    def text(self, language: str) -> str:
        """The message in `language` when it was built from a key; else as raised."""
        return self.message.text(language) if self.message else str(self)


class InvalidInputError(PlaygroundError, ValueError):
    """Bad text or an out-of-range parameter."""


class InvalidParameterError(InvalidInputError):
    """One named setting is out of range or of the wrong type.

    `param` is the setting's name in the code (e.g. "max_new_tokens"), so an API
    can name its own field without reading the message."""

    def __init__(self, param: str, problem: "str | Message") -> None:
        super().__init__(problem)
        self.param = param


class PromptTooLongError(InvalidInputError):
    """The conversation cannot fit the model's context window."""


class ModelError(PlaygroundError):
    """A model could not be loaded or used."""


class InvalidModelError(ModelError):
    """The model reference is malformed, or names something that is not a model."""


class ModelNotFoundError(ModelError):
    """No such model on the Hub, or no such file or folder."""


class ModelOfflineError(ModelError):
    """The model is not on this machine and the Hub cannot be reached."""


class GatedModelError(ModelError):
    """The model needs an accepted licence and an HF_TOKEN."""


class ModelOutOfMemoryError(ModelError):
    """Not enough memory to load or run the model."""


def require_text(value: object, what: str) -> str:
    """`value` if it is a string (None counts as empty); a clear error for any other type.

    API clients can send anything: a list or a number where text belongs is a user error.
    """
    if value is None:
        return ""
    if not isinstance(value, str):
        raise InvalidInputError(message("errors.not_text", what=what, type=type(value).__name__))
    return value
