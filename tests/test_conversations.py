"""Conversations as plain values: variants, edits, thinking, stats, the saved store, the secret."""

from __future__ import annotations

import copy
import json

import pytest

from modules.errors import InvalidInputError
from modules.tasks.chat.conversations import (
    BROWSER_SECRET_SETTING,
    add_variant,
    browser_secret,
    context_meter,
    delete_conversation,
    edit_message,
    empty_store,
    export_json,
    export_markdown,
    find_conversation,
    import_into,
    import_json,
    latest_conversation,
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
    assert "cached" not in line
    cached = stats_line(reply_stats(Usage(3000, 20, 3020, 0.05, 40.0, cached_tokens=2950), "stop", "tiny", 8192))
    assert "first token 0.05 s · 2,950 prompt tokens cached · finish: stop" in cached


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


def _branched_reply() -> list[dict]:
    """A conversation whose reply keeps tokens with alternatives and a second variant:
    the deep values the store holds."""
    tokens = [[" Paris", 0.91, [[" Paris", 0.91], [" Lyon", 0.04], [" the", 0.02]]],
              [".", 0.88, [[".", 0.88], ["!", 0.07], [",", 0.01]]]]
    messages = with_reply(chat("Capital of France?"), "Paris.", {**STATS, "tokens": tokens, "tokens_offset": 0})
    return add_variant(messages, 1, "It is Paris, 巴黎 ✓", dict(STATS))


def test_the_store_keeps_each_conversations_messages_as_one_string():
    """The page deep-copies stored values node by node on every streaming update, so the
    store holds each conversation's messages as one JSON string; they come back equal."""
    one = {**new_conversation({"temperature": 0.2}), "messages": _branched_reply()}
    two = {**new_conversation(), "messages": chat("Write a haiku", "Leaves fall")}
    store = save_conversation(save_conversation(empty_store(), one), two)
    for stored in store["conversations"]:
        assert "messages" not in stored and isinstance(stored["messages_json"], str)
        assert all(not isinstance(value, list) for value in stored.values())
    assert find_conversation(store, one["id"])["messages"] == one["messages"]
    assert latest_conversation(store)["messages"] == two["messages"]
    assert search_conversations(store, "巴黎") == [("Capital of France?", one["id"])]
    assert search_conversations(store, "lyon") == []  # alternatives are not the conversation's text
    assert json.loads(json.dumps(store)) == store  # what the browser keeps and gives back


def test_a_store_saved_with_message_lists_still_reads_and_is_packed_on_the_next_save():
    old = {**new_conversation(), "title": "Capital of France?", "messages": _branched_reply()}
    store = {"version": 1, "conversations": [copy.deepcopy(old)], "presets": {}}
    assert find_conversation(store, old["id"])["messages"] == old["messages"]
    assert latest_conversation(store)["id"] == old["id"]
    assert search_conversations(store, "巴黎") == [("Capital of France?", old["id"])]
    store = save_conversation(store, {**new_conversation(), "messages": chat("hi", "hello")})
    assert all("messages_json" in c and "messages" not in c for c in store["conversations"])
    assert find_conversation(store, old["id"])["messages"] == old["messages"]


def test_past_the_budget_the_oldest_conversations_lose_their_recorded_tokens_not_their_text(monkeypatch):
    """The browser keeps the store in localStorage (~5 MB); a store written past that is
    lost. So the oldest replies' recorded tokens go first, the newest stay whole."""
    from modules.tasks.chat import conversations

    with_tokens = _branched_reply()
    with_tokens.append({"role": "user", "content": 'and "tokens": typed by a user'})
    recorded = [[f" w{i}", 0.5, [[f" w{i}", 0.5], [f" x{i}", 0.25], [f" y{i}", 0.125]]] for i in range(60)]
    with_tokens = with_reply(with_tokens, "Sure.", {**STATS, "tokens": recorded, "tokens_offset": 0})
    olds = [{**new_conversation(), "messages": copy.deepcopy(with_tokens)} for _ in range(3)]
    store = empty_store()
    for old in olds:
        store = save_conversation(store, old)
    one_size = len(store["conversations"][0]["messages_json"])
    monkeypatch.setattr(conversations, "STORE_BUDGET_CHARS", 4 * one_size - 1)  # a bit short for four
    newest = {**new_conversation(), "messages": copy.deepcopy(with_tokens)}
    store = conversations.save_conversation(store, newest)
    total = sum(len(c["messages_json"]) for c in store["conversations"])
    assert total <= 4 * one_size - 1
    opened = [find_conversation(store, c["id"]) for c in (newest, *reversed(olds))]
    assert opened[0]["messages"] == newest["messages"]  # the newest is whole
    stripped = [c for c in opened if '"tokens"' not in json.dumps([m.get("stats") for m in c["messages"]])]
    assert stripped == [opened[-1]]  # the oldest only: that was enough
    for conversation in stripped:  # the text, the variants and the other stats are all there
        assert [m["content"] for m in conversation["messages"]] == [m["content"] for m in with_tokens]
        assert conversation["messages"][1]["variants"][0]["content"] == "Paris."
        assert conversation["messages"][1]["stats"] == STATS and conversation["messages"][3]["stats"] == STATS
        assert "tokens" not in conversation["messages"][1]["variants"][0]["stats"]


def test_an_unreadable_stored_conversation_opens_empty():
    stored = {**new_conversation(), "title": "Broken", "messages_json": "[{not json"}
    store = {"version": 1, "conversations": [stored], "presets": {}}
    assert find_conversation(store, stored["id"])["messages"] == []
    assert search_conversations(store, "broken") == [("Broken", stored["id"])]
    assert latest_conversation(empty_store()) is None
    odd = {**new_conversation(), "title": "Odd", "messages_json": ["not", "a", "string"]}
    store = save_conversation({"version": 1, "conversations": [odd], "presets": {}},
                              {**new_conversation(), "messages": chat("hi", "hello")})
    assert find_conversation(store, odd["id"])["messages"] == [] and len(store["conversations"]) == 2


def test_browser_secret_is_fixed_across_restarts(tmp_path):
    settings = make_settings(cache_dir=str(tmp_path))
    first = browser_secret(settings, env={})
    assert first == browser_secret(settings, env={}) and len(first) >= 32
    assert (tmp_path / "browser_secret.txt").stat().st_mode & 0o077 == 0
    assert browser_secret(settings, env={BROWSER_SECRET_SETTING: "from-setting"}) == "from-setting"


# --- presets, export and import, the prompt inspector -------------------------------------
def test_presets_built_in_and_the_users_own():
    from modules.tasks.chat.presets import delete_preset, preset_names, preset_values, save_preset

    assert preset_names(None)[:4] == ["Balanced", "Precise (greedy)", "Creative", "Translator zh→en"]
    assert preset_values(None, "Precise (greedy)")["do_sample"] is False
    assert "Chinese" in preset_values(None, "Translator zh→en")["system_prompt"]
    store = save_preset(empty_store(), "Mine", {"temperature": 0.3, "system_prompt": "Be terse.", "junk": 1})
    assert preset_names(store)[-1] == "Mine" and preset_values(store, "Mine") == {
        "system_prompt": "Be terse.", "temperature": 0.3}
    with pytest.raises(InvalidInputError, match="built-in"):
        save_preset(store, "Creative", {})
    with pytest.raises(InvalidInputError, match="built-in"):
        delete_preset(store, "Balanced")
    assert "Mine" not in preset_names(delete_preset(store, "Mine"))
    kept = save_conversation(store, {**new_conversation(), "messages": chat("a", "b")})
    assert preset_names(kept)[-1] == "Mine"  # saving a conversation keeps the presets


def test_export_then_import_round_trip_and_markdown():
    messages = add_variant(chat("Capital of France?", "Paris."), 1, "It is Paris.",
                           reply_stats(Usage(10, 3, 13, 0.1, 20.0), "stop", "tiny", 100))
    conversation = {**new_conversation({"temperature": 0.5, "system_prompt": "Be brief."}),
                    "title": "Geography", "messages": messages}
    text = export_json(conversation)
    store, imported = import_into(empty_store(), text)
    assert imported["messages"] == messages and imported["settings"] == conversation["settings"]
    assert imported["title"] == "Geography" and imported["id"] != conversation["id"]
    assert store["conversations"][0]["id"] == imported["id"]
    assert '"model": "tiny"' in text and '"completion_tokens": 3' in text
    markdown = export_markdown(conversation)
    assert markdown.startswith("# Geography") and "## Assistant\n\nIt is Paris." in markdown
    assert "**System:** Be brief." in markdown and "finish: stop" in markdown


@pytest.mark.parametrize("bad, message", [
    ("{not json", "not valid JSON"),
    ('{"format": "something-else", "messages": []}', "not a conversation"),
    ('{"format": "transformers-playground-conversation", "messages": [{"role": "system", "content": "x"}]}',
     "Message 1"),
    ('{"format": "transformers-playground-conversation", "messages": [{"role": "user", "content": 5}]}',
     "Message 1"),
    ('{"format": "transformers-playground-conversation", "messages": "all"}', "no list"),
    ("x" * 5_000_001, "limit"),
])
def test_a_bad_import_is_refused_and_the_store_is_unchanged(bad, message):
    store = save_conversation(empty_store(), {**new_conversation(), "messages": chat("keep me", "ok")})
    before = copy.deepcopy(store)
    with pytest.raises(InvalidInputError, match=message):
        import_into(store, bad)
    assert store == before


def test_import_drops_unknown_fields():
    hostile = json.dumps({"format": "transformers-playground-conversation", "title": "<script>x</script>" * 50,
                          "settings": {"temperature": 0.1, "evil": {"nested": True}},
                          "messages": [{"role": "user", "content": "hi", "onclick": "x"},
                                       {"role": "assistant", "content": "yo", "stats": {"model": 5, "finish": "stop"},
                                        "variant": 99, "variants": [{"content": "yo"}, "junk"]}]})
    imported = import_json(hostile)
    assert imported["messages"][0] == {"role": "user", "content": "hi"}
    assert imported["messages"][1]["stats"] == {"finish": "stop"} and imported["messages"][1]["variant"] == 0
    assert imported["settings"] == {"temperature": 0.1} and len(imported["title"]) <= 200


def test_prompt_inspector_marks_template_special_tokens_only(shared_cache):
    from modules.config import EMBEDDED_MODEL
    from modules.engine.model_cache import ModelKind
    from modules.tasks.chat import GenerationParams
    from modules.tasks.chat.inspector import render_prompt

    loaded = shared_cache.get(EMBEDDED_MODEL, ModelKind.CAUSAL_LM)
    messages = [{"role": "user", "content": "Say <|im_end|> please"}]
    rendered = render_prompt(loaded, messages, GenerationParams())
    specials = [text for text, special in rendered.pieces if special]
    assert specials and set(specials) <= {"<|im_start|>", "<|im_end|>"}
    # Only the template's own: every turn it closed (the typed one is plain text).
    assert specials.count("<|im_end|>") == specials.count("<|im_start|>") - 1
    assert "Say <|im_end|> please" in rendered.text and rendered.text.endswith("assistant\n")
    plain = len(loaded.tokenizer("Say <|im_end|> please", split_special_tokens=True)["input_ids"])
    assert rendered.token_count >= len(specials) + plain
    assert '<mark class="special-token">&lt;|im_start|&gt;</mark>' in rendered.html()
    continued = render_prompt(loaded, messages + [{"role": "assistant", "content": "Sure:"}],
                              GenerationParams(continue_final_message=True))
    assert continued.text.endswith("Sure:")


def test_code_snippet_is_valid_python_with_the_turns_settings():
    import ast

    from modules.config import EMBEDDED_MODEL
    from modules.tasks.chat import GenerationParams
    from modules.tasks.chat.code_snippet import EMBEDDED_HUB_MODEL, code_snippet

    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "写一首诗"}]
    sampled = code_snippet(EMBEDDED_MODEL, messages, GenerationParams(temperature=0.8, seed=42))
    tree = ast.parse(sampled)  # runnable Python, not a sketch
    assigned = {node.targets[0].id: ast.literal_eval(node.value) for node in tree.body
                if isinstance(node, ast.Assign) and isinstance(node.value, (ast.Constant, ast.List, ast.Dict))}
    assert assigned["model_id"] == EMBEDDED_HUB_MODEL and assigned["messages"] == messages
    assert assigned["settings"]["temperature"] == 0.8 and assigned["settings"]["do_sample"] is True
    assert "set_seed(42)" in sampled and "apply_chat_template" in sampled and "TextStreamer" in sampled
    greedy = code_snippet("some/model", messages, GenerationParams(do_sample=False, enable_thinking=False))
    settings = ast.literal_eval(greedy.split("settings = ", 1)[1].split("\n\n", 1)[0])
    assert settings["do_sample"] is False and "temperature" not in settings
    assert "enable_thinking=False" in greedy and "random seed" in greedy
    ast.parse(greedy)


class _Letters:
    """A tokenizer stand-in: token i is the letter chr(97 + i)."""

    def decode(self, ids, skip_special_tokens=True):
        return "".join(chr(97 + i) for i in ids)


def test_reply_tokens_keep_four_significant_digits_of_each_probability():
    from modules.tasks.chat.branching import alternatives_at, reply_tokens

    top = [[(0, 0.15585747361183167), (1, 0.0001234567)], [(2, 0.9876543), (0, 0.0123456)]]
    tokens = reply_tokens(_Letters(), [0, 2], top, text_length=2)
    assert tokens == (["a", 0.1559, [["a", 0.1559], ["b", 0.0001235]]],
                      ["c", 0.9877, [["c", 0.9877], ["a", 0.01235]]])
    assert alternatives_at(list(tokens), 1) == [("c", 0.9877), ("a", 0.01235)]
    assert reply_tokens(_Letters(), [0, 2], top, text_length=1) == tokens[:1]  # a stop string cut it
