"""The chat's streamer hands out each token's text at once, never a broken character."""

from __future__ import annotations

import asyncio
import threading

import torch
from transformers import TextIteratorStreamer

from modules.tasks.chat.token_streamer import AsyncTokenTextStreamer, TokenTextStreamer, settled_length


def pieces_per_token(streamer_class, tokenizer, text: str) -> list[str]:
    """The text the streamer hands out after each token of `text`, then after the end."""
    streamer = streamer_class(tokenizer, skip_prompt=False, skip_special_tokens=True)
    handed_out = streamer.text_queue

    def drain() -> str:
        got = []
        while not handed_out.empty():
            piece = handed_out.get()
            got.append("" if piece is streamer.stop_signal else piece)
        return "".join(got)

    out = []
    for token in tokenizer(text, add_special_tokens=False)["input_ids"]:
        streamer.put(torch.tensor([token]))
        out.append(drain())
    streamer.end()
    return out + [drain()]


def test_settled_length_holds_back_only_what_can_change():
    assert settled_length("Bonjour,") == len("Bonjour,")
    assert settled_length("Bonjour, ") == len("Bonjour,")
    assert settled_length("Hi \ufffd") == len("Hi")
    assert settled_length("\ufffd\ufffd") == 0


def test_each_token_shows_at_once_where_the_library_waits_for_the_word(embedded_chat_model):
    tokenizer = embedded_chat_model.tokenizer
    text = "Bonjour, comment allez-vous?\nTrès bien."
    ours = pieces_per_token(TokenTextStreamer, tokenizer, text)
    library = pieces_per_token(TextIteratorStreamer, tokenizer, text)
    assert "".join(ours) == "".join(library) == text
    assert ours[0] == tokenizer.decode(tokenizer(text, add_special_tokens=False)["input_ids"][:1])
    assert library[0] == ""  # "Bon…" waits for the word to end
    first_visible = lambda pieces: next(i for i, piece in enumerate(pieces) if piece)  # noqa: E731
    assert first_visible(ours) < first_visible(library)
    assert sum(bool(piece) for piece in ours) > sum(bool(piece) for piece in library)


def test_a_character_split_over_byte_tokens_comes_out_whole(embedded_chat_model):
    tokenizer = embedded_chat_model.tokenizer
    text = "Merci 🙂 et 你好"
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert any("\ufffd" in tokenizer.decode(ids[:end]) for end in range(1, len(ids)))  # it is split
    pieces = pieces_per_token(TokenTextStreamer, tokenizer, text)
    assert "".join(pieces) == text
    assert not any("\ufffd" in piece for piece in pieces)  # so each character came out whole


def test_the_async_streamer_hands_an_event_loop_the_same_pieces(embedded_chat_model):
    """Tokens put on another thread (the decode loop's) reach a coroutine as the same
    pieces, and a token that settles no text wakes no one."""
    tokenizer = embedded_chat_model.tokenizer
    text = "Merci 🙂 et 你好\nTrès bien, merci ."
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]

    async def read() -> list[str]:
        streamer = AsyncTokenTextStreamer(tokenizer, skip_prompt=False, skip_special_tokens=True,
                                          timeout=30)

        def decode_loop() -> None:
            for token in ids:
                streamer.put(torch.tensor([token]))
            streamer.end()

        thread = threading.Thread(target=decode_loop)
        thread.start()
        pieces = [piece async for piece in streamer]
        thread.join()
        return pieces

    pieces = asyncio.run(read())
    assert "".join(pieces) == text
    assert all(pieces[:-1])  # only the end's flush (the library's `end`) may be empty
    expected = pieces_per_token(TokenTextStreamer, tokenizer, text)
    assert [piece for piece in pieces if piece] == [piece for piece in expected if piece]
