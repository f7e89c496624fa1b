"""Conversations as plain values: variants, edits, thinking, stats, the saved store, the secret."""

from __future__ import annotations

import pytest

from modules.errors import InvalidInputError
from modules.tasks.chat.conversations import (
    BROWSER_SECRET_SETTING,
    add_variant,
    browser_secret,
    context_meter,
    delete_conversation,
    edit_message,
    find_conversation,
    model_messages,
    new_conversation,
    rename_conversation,
    reply_stats,
    save_conversation,
    search_conversations,
    split_thinking,
    stats_line,
    switch_variant,
    variant_label,
    with_reply,
)
from modules.tasks.chat.params import Usage
from tests.conftest import make_settings

STATS = {"finish": "stop", "model": "m"}


def chat(*turns: str) -> list[dict]:
    messages = []
    for n, text in enumerate(turns):
        if n % 2:
            messages = with_reply(messages, text, dict(STATS))
        else:
            messages.append({"role": "user", "content": text})
    return messages


def test_retry_keeps_variants_and_the_shown_one_continues():
    first = chat("hi", "hello A")
    second = add_variant(first, 1, "hello B", dict(STATS))
    assert second[1]["content"] == "hello B" and variant_label(second[1]) == "‹ 2/2 ›"
    continued = second + chat("more", "reply to B")[0:1]
    continued = with_reply(continued, "reply to B", dict(STATS))
    back = switch_variant(continued, 1, -1)
    assert [m["content"] for m in back] == ["hi", "hello A"]  # A had nothing after it
    again = switch_variant(back, 1, +1)
    assert [m["content"] for m in again] == ["hi", "hello B", "more", "reply to B"]
    assert variant_label(again[1]) == "‹ 2/2 ›" and variant_label(chat("x", "y")[1]) == ""


def test_edit_user_message_cuts_and_asks_for_a_reply_edit_reply_keeps_it():
    messages = chat("hi", "hello", "how are you", "fine")
    cut, regenerate = edit_message(messages, 2, "what is 2+2")
    assert regenerate and [m["content"] for m in cut] == ["hi", "hello", "what is 2+2"]
    kept, regenerate = edit_message(messages, 1, "Hello there!")
    assert not regenerate and len(kept) == 4 and kept[1]["content"] == "Hello there!"
    assert "edited" in stats_line(kept[1]["stats"])
    assert model_messages(kept)[1] == {"role": "assistant", "content": "Hello there!"}
    with pytest.raises(InvalidInputError, match="empty"):
        edit_message(messages, 1, "   ")
    with pytest.raises(InvalidInputError):
        edit_message(messages, 9, "x")


def test_thinking_is_split_and_left_out_of_the_next_turn():
    assert split_thinking("<think>2+2 is 4</think>\nIt is 4.") == ("2+2 is 4", "It is 4.")
    assert split_thinking("plain") == (None, "plain")
    assert split_thinking("<think>still going")[0] == "still going"
    messages = chat("q", "<think>secret steps</think>answer", "next")
    sent = model_messages(messages, "Be brief.")
    assert sent[0] == {"role": "system", "content": "Be brief."}
    assert sent[2]["content"] == "answer" and "secret" not in str(sent)


def test_stats_line_and_context_meter():
    stats = reply_stats(Usage(100, 20, 120, 0.25, 40.0), "length", "tiny", 1000)
    line = stats_line(stats)
    for part in ("20 tokens", "40.0 tok/s", "first token 0.25 s", "finish: length", "tiny"):
        assert part in line
    assert context_meter(with_reply([{"role": "user", "content": "q"}], "a", stats)) == \
        "Context: 120 / 1,000 tokens (12 %)"
    assert context_meter([]) == ""
    assert "finish: cancelled" in stats_line(reply_stats(None, None, "m", None))


def test_store_save_rename_search_delete():
    store = None  # what a first visit's browser gives back
    one = {**new_conversation({"temperature": 0.2}), "messages": chat("Capital of France?", "Paris")}
    two = {**new_conversation(), "messages": chat("Write a haiku", "Leaves fall")}
    store = save_conversation(save_conversation(store, one), two)
    assert [c["title"] for c in store["conversations"]] == ["Write a haiku", "Capital of France?"]
    assert search_conversations(store, "paris") == [("Capital of France?", one["id"])]
    assert len(search_conversations(store, "")) == 2
    store = rename_conversation(store, one["id"], "Geography")
    assert find_conversation(store, one["id"])["title"] == "Geography"
    assert find_conversation(store, one["id"])["settings"] == {"temperature": 0.2}
    with pytest.raises(InvalidInputError):
        rename_conversation(store, one["id"], "  ")
    store = delete_conversation(store, two["id"])
    assert [c["id"] for c in store["conversations"]] == [one["id"]]
    assert search_conversations({"garbage": True}) == []


def test_browser_secret_is_fixed_across_restarts(tmp_path):
    settings = make_settings(cache_dir=str(tmp_path))
    first = browser_secret(settings, env={})
    assert first == browser_secret(settings, env={}) and len(first) >= 32
    assert (tmp_path / "browser_secret.txt").stat().st_mode & 0o077 == 0
    assert browser_secret(settings, env={BROWSER_SECRET_SETTING: "from-setting"}) == "from-setting"
