"""Branch from any token: a reply's tokens with the model's top alternatives at each
position (recorded while generating, see Sequence.top_alternatives), and the text a
branch continues from.

A reply's tokens are stored as ``[text, probability, [[alternative text, probability], …]]``,
JSON-ready, so they travel with the conversation in the browser. Probabilities keep four
significant digits: the page shows them to a tenth of a percent, and full floats
("0.15585747361183167") made up about half of a saved reply.
"""

from __future__ import annotations

from modules.errors import InvalidInputError
from modules.messages import message as keyed

DEFAULT_ALTERNATIVES = 5
PROBABILITY_DIGITS = 4  # significant digits of a stored probability


def reply_tokens(tokenizer, token_ids: list[int], alternatives: list[list[tuple[int, float]]],
                 text_length: int) -> tuple:
    """The reply's tokens as text pieces with their alternatives ((): none recorded).
    Pieces are cut at `text_length` (a stop string may have cut the text shorter)."""
    if not alternatives:
        return ()
    pieces = []
    decoded = ""
    for position, (token_id, top) in enumerate(zip(token_ids, alternatives)):
        text = tokenizer.decode(token_ids[:position + 1], skip_special_tokens=True)
        piece = text[len(decoded):] if text.startswith(decoded) else tokenizer.decode([token_id])
        decoded = text
        if not piece:  # an end token, or a byte that is not a whole character yet
            continue
        chosen = dict(top).get(token_id)
        pieces.append([piece, _rounded(chosen), [[tokenizer.decode([i]), _rounded(p)] for i, p in top]])
        if len(decoded) >= text_length:
            break
    return tuple(pieces)


def _rounded(probability: float | None) -> float | None:
    return None if probability is None else float(f"{probability:.{PROBABILITY_DIGITS}g}")


def alternatives_at(tokens: list, position: int) -> list[tuple[str, float]]:
    """(text, probability) of the model's top choices at `position` of a reply."""
    if not tokens:
        raise InvalidInputError(keyed("chat.no_alternatives"))
    if not isinstance(position, int) or not 0 <= position < len(tokens):
        raise InvalidInputError(keyed("chat.choose_token_between", last=len(tokens) - 1))
    return [(text, probability) for text, probability in tokens[position][2]]


def branch_prefix(tokens: list, position: int, choice: str) -> str:
    """The reply cut before `position`, then `choice` (one of the alternatives there)."""
    options = [text for text, _ in alternatives_at(tokens, position)]
    if choice not in options:
        raise InvalidInputError(keyed("chat.not_an_alternative", choice=choice, position=position))
    return "".join(piece[0] for piece in tokens[:position]) + choice
