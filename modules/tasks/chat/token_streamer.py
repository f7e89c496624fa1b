"""A `TextIteratorStreamer` that hands out each token's text as soon as it is settled.

transformers' streamers hold text back until a word ends (a space), so a reply that
starts "Bonjour," shows nothing for two or three decode steps: 0.08-0.14 s of a first
token here, and words that appear whole rather than as they are written. llama.cpp and
vLLM stream every token. This one holds back only what the next token can still
change, as vLLM's incremental detokenizer does:
- a trailing U+FFFD: the first bytes of a character split over byte-level tokens;
- trailing whitespace: decoding may clean it up with what follows (" ." -> ".").
A new line still flushes everything, as in the library.

`AsyncTokenTextStreamer` does the same for a reader on an asyncio event loop (the
/v1 server's): the decode thread hands each piece straight to the loop
(transformers' `AsyncTextIteratorStreamer`), so no pool thread wakes for every token.
"""

from __future__ import annotations

from typing import cast

from transformers import AsyncTextIteratorStreamer, TextIteratorStreamer

UNFINISHED_CHARACTER = "\ufffd"


def settled_length(text: str) -> int:
    """How much of a growing decoded text no later token can change."""
    return len(text.rstrip().rstrip(UNFINISHED_CHARACTER).rstrip())


class _SettledText:
    """The `put` of both streamers below: each step's settled text, none held for a word end."""

    def put(self, value) -> None:
        if value.dim() > 1:
            if value.shape[0] > 1:
                raise ValueError("TokenTextStreamer only supports batch size 1")
            value = value[0]
        if self.skip_prompt and self.next_tokens_are_prompt:
            self.next_tokens_are_prompt = False
            return
        self.token_cache.extend(value.tolist())
        text = cast(str, self.tokenizer.decode(self.token_cache, **self.decode_kwargs))
        if text.endswith("\n"):
            printable, self.token_cache, self.print_len = text[self.print_len:], [], 0
        else:
            printable = text[self.print_len:settled_length(text)]
            self.print_len += len(printable)
        if printable:  # nothing new: wake no reader
            self.on_finalized_text(printable)


class TokenTextStreamer(_SettledText, TextIteratorStreamer):
    """`TextIteratorStreamer`, but each step's settled text comes out at once (see above)."""


class AsyncTokenTextStreamer(_SettledText, AsyncTextIteratorStreamer):
    """`AsyncTextIteratorStreamer`, each step's settled text at once; made on the reader's loop."""
