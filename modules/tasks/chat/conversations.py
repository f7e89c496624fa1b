"""Conversations as plain values: messages with variants, the saved store, stats and thinking.

A conversation's messages are what the chat tab shows, as dicts:
``{"role": "user" | "assistant", "content": str}``, and on a reply also
``"stats"`` (how it was generated) and ``"variants"`` / ``"variant"`` (the
replies Retry or a branch wrote for the same place, and which one is shown).
The variant shown is the one the conversation continues from: switching
variants swaps in the messages that followed that variant.

The store is what the browser keeps (gr.BrowserState): every conversation with
its settings, plus the user's own presets. Nothing here knows about Gradio.

In the store each conversation's messages are one JSON string ("messages_json"), not
nested lists. The page's frontend deep-copies the value of every component an event
has touched, value by value, on each streaming update; with replies' tokens and their
alternatives kept for branching (~5,000 values a 256-token reply), ten saved
conversations made a reply 6.8x slower (benchmarks/page_history.py). A string is one
value to copy. `find_conversation` gives messages back as lists; stores saved with
lists (before) still read.
"""

from __future__ import annotations

import copy
import json
import os
import re
import secrets
import time
import uuid
from pathlib import Path

from modules.config import ENV_PREFIX, Settings
from modules.errors import InvalidInputError
from modules.messages import DEFAULT_LANGUAGE
from modules.messages import message as keyed
from modules.messages import text as message_text
from modules.tasks.chat.params import Usage

STORE_VERSION = 1
BROWSER_SECRET_SETTING = ENV_PREFIX + "BROWSER_SECRET"
SECRET_FILE = "browser_secret.txt"
DEFAULT_TITLE = "New chat"
TITLE_CHARS = 60
THINKING = re.compile(r"<think>(.*?)(?:</think>|$)", re.DOTALL)

Message = dict


# --- the browser secret ---------------------------------------------------------
def browser_secret(settings: Settings, env: dict | None = None) -> str:
    """The fixed key the browser's saved chats are encrypted with.

    A per-launch key (Gradio's default) makes every saved chat unreadable after a
    restart, so: the PLAYGROUND_BROWSER_SECRET setting, else one generated once and
    kept in the cache folder (readable only by this user).
    """
    env = os.environ if env is None else env
    configured = (env.get(BROWSER_SECRET_SETTING) or "").strip()
    if configured:
        return configured
    path = Path(settings.cache_dir) / SECRET_FILE
    try:
        kept = path.read_text().strip()
        if kept:
            return kept
    except OSError:
        pass
    secret = secrets.token_urlsafe(32)
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        handle.write(secret)
    return secret


# --- stats and thinking ---------------------------------------------------------
def reply_stats(usage: Usage | None, finish_reason: str | None, model: str,
                context_window: int | None) -> dict:
    """What a reply's stats line and the context meter need, as JSON-ready values."""
    stats = {"finish": finish_reason or "cancelled", "model": model, "context_window": context_window}
    if usage is not None:
        stats.update(prompt_tokens=usage.prompt_tokens, completion_tokens=usage.completion_tokens,
                     first_token_s=usage.time_to_first_token_s, tokens_per_s=usage.tokens_per_second,
                     cached_tokens=usage.cached_tokens)
    return stats


def stats_line(stats: dict, language: str = DEFAULT_LANGUAGE) -> str:
    """LM Studio's line under a reply: tokens, tok/s, first-token time, finish reason, model."""
    parts = []
    if stats.get("completion_tokens") is not None:
        parts.append(message_text("chat.stats_tokens", language, count=stats["completion_tokens"]))
    if stats.get("tokens_per_s") is not None:
        parts.append(message_text("chat.stats_speed", language, speed=stats["tokens_per_s"]))
    if stats.get("first_token_s") is not None:
        parts.append(message_text("chat.stats_first_token", language, seconds=stats["first_token_s"]))
    if stats.get("cached_tokens"):  # the prompt's start came from the prefix cache
        parts.append(message_text("chat.stats_cached", language, count=stats["cached_tokens"]))
    parts.append(message_text("chat.stats_finish", language,
                      reason=stats.get("finish") or message_text("chat.finish_unknown", language)))
    if stats.get("edited"):
        parts.append(message_text("chat.stats_edited", language))
    if stats.get("model"):
        parts.append(str(stats["model"]))
    return " · ".join(parts)


def context_meter(messages: list[Message], language: str = DEFAULT_LANGUAGE) -> str:
    """Used tokens out of the window, from the last reply's stats ("" before any reply)."""
    for message in reversed(messages):
        stats = message.get("stats") or {}
        if message["role"] == "assistant" and stats.get("prompt_tokens") is not None:
            used = stats["prompt_tokens"] + (stats.get("completion_tokens") or 0)
            window = stats.get("context_window")
            if not window:
                return message_text("chat.context_used", language, used=used)
            return message_text("chat.context_meter", language, used=used, window=window,
                        percent=100 * used / window)
    return ""


def split_thinking(text: str) -> tuple[str | None, str]:
    """(thinking, answer): the `<think>…</think>` part (None without one) and the rest."""
    found = THINKING.search(text)
    if not found:
        return None, text
    return found.group(1).strip(), (text[:found.start()] + text[found.end():]).strip()


def model_messages(messages: list[Message], system_prompt: str = "") -> list[dict[str, str]]:
    """What the model reads: plain {role, content}, thinking left out of past replies
    (as reasoning models' templates expect)."""
    plain = [{"role": "system", "content": system_prompt}] if system_prompt and system_prompt.strip() else []
    for message in messages:
        content = message["content"]
        if message["role"] == "assistant":
            content = split_thinking(content)[1]
        plain.append({"role": message["role"], "content": content})
    return plain


# --- variants and edits ---------------------------------------------------------
def with_reply(messages: list[Message], content: str, stats: dict) -> list[Message]:
    """The conversation with a reply appended after its last message (a user turn)."""
    return [*messages, {"role": "assistant", "content": content, "stats": stats}]


def add_variant(messages: list[Message], index: int, content: str, stats: dict) -> list[Message]:
    """A new variant for the reply at `index`, shown from now on; the old one (and
    what followed it) is kept, one switch away."""
    reply = _reply_at(messages, index)
    variants = _variants_with_current(reply, messages[index + 1:])
    variants.append({"content": content, "stats": stats, "after": []})
    return [*messages[:index], _showing(reply, variants, len(variants) - 1)]


def replace_reply(messages: list[Message], index: int, content: str, stats: dict) -> list[Message]:
    """The reply at `index` rewritten in place (Continue extends it), its variant too."""
    reply = copy.deepcopy(_reply_at(messages, index))
    reply.update(content=content, stats=stats)
    if reply.get("variants"):
        reply["variants"][reply.get("variant", 0)].update(content=content, stats=stats)
    return [*messages[:index], reply, *messages[index + 1:]]


def switch_variant(messages: list[Message], index: int, step: int) -> list[Message]:
    """Show the previous (step -1) or next (+1) variant of the reply at `index`,
    with the conversation that followed it."""
    reply = _reply_at(messages, index)
    variants = _variants_with_current(reply, messages[index + 1:])
    chosen = (reply.get("variant", 0) + step) % len(variants)
    return [*messages[:index], _showing(reply, variants, chosen), *copy.deepcopy(variants[chosen]["after"])]


def variant_label(message: Message) -> str:
    """"‹ 2/3 ›" for a reply with variants, "" otherwise."""
    count = len(message.get("variants") or ())
    return f"‹ {message.get('variant', 0) + 1}/{count} ›" if count > 1 else ""


def last_reply_index(messages: list[Message]) -> int | None:
    return next((i for i in range(len(messages) - 1, -1, -1) if messages[i]["role"] == "assistant"), None)


def edit_message(messages: list[Message], index: int, text: str) -> tuple[list[Message], bool]:
    """(messages, regenerate): a user message edited cuts the conversation after it
    (the caller writes a new reply); a reply edited is kept as the model's own words."""
    if not isinstance(index, int) or not 0 <= index < len(messages):
        raise InvalidInputError(keyed("chat.no_message_to_edit", index=index))
    if not isinstance(text, str) or not text.strip():
        raise InvalidInputError(keyed("chat.edited_empty"))
    edited = copy.deepcopy(messages[index])
    edited["content"] = text
    if edited["role"] == "user":
        return [*messages[:index], edited], True
    stats = {k: v for k, v in (edited.get("stats") or {}).items() if k not in ("tokens", "tokens_offset")}
    edited["stats"] = {**stats, "edited": True}  # its recorded tokens no longer match
    if edited.get("variants"):
        edited["variants"][edited.get("variant", 0)].update(content=text, stats=edited["stats"])
    return [*messages[:index], edited, *messages[index + 1:]], False


def _reply_at(messages: list[Message], index: int) -> Message:
    if not isinstance(index, int) or not 0 <= index < len(messages) or messages[index]["role"] != "assistant":
        raise InvalidInputError(keyed("chat.choose_a_reply"))
    return messages[index]


def _variants_with_current(reply: Message, after: list[Message]) -> list[dict]:
    variants = copy.deepcopy(reply.get("variants")) or [{"content": reply["content"], "stats": reply.get("stats")}]
    current = variants[reply.get("variant", 0)]
    current.update(content=reply["content"], stats=reply.get("stats"), after=copy.deepcopy(after))
    return variants


def _showing(reply: Message, variants: list[dict], chosen: int) -> Message:
    return {**reply, "content": variants[chosen]["content"], "stats": variants[chosen]["stats"],
            "variants": variants, "variant": chosen}


# --- the saved store ------------------------------------------------------------
def empty_store() -> dict:
    return {"version": STORE_VERSION, "conversations": [], "presets": {}}


def new_conversation(settings: dict | None = None) -> dict:
    now = time.time()
    return {"id": uuid.uuid4().hex[:12], "title": DEFAULT_TITLE, "created": now, "updated": now,
            "messages": [], "settings": dict(settings or {})}


def title_for(messages: list[Message]) -> str:
    """The first user message, shortened: what the sidebar lists."""
    first = next((m["content"] for m in messages if m["role"] == "user"), "")
    first = " ".join(first.split())
    return (first[:TITLE_CHARS] + "…" if len(first) > TITLE_CHARS else first) or DEFAULT_TITLE


def save_conversation(store: dict | None, conversation: dict) -> dict:
    """The store with `conversation` put first (most recent), titled if still untitled."""
    store = _valid_store(store)
    saved = {**conversation, "updated": time.time()}
    if saved.get("title", DEFAULT_TITLE) == DEFAULT_TITLE:
        saved["title"] = title_for(saved["messages"])
    rest = [_packed(c) for c in store["conversations"] if c["id"] != saved["id"]]
    return {**store, "conversations": _within_budget([_packed(saved), *rest])}


# The browser keeps the store in localStorage, encrypted (~1.4x the JSON's characters),
# where browsers give a site 5-10 MB, as little as 2.5 million characters. A write past
# that fails without a word in the page (Gradio logs it to the console), and on the next
# visit every conversation saved since is gone. Beyond this many characters of messages
# (~40 conversations of 256-token replies), the oldest conversations lose their replies'
# recorded tokens (branching from them), most of a saved reply's size; their text stays.
STORE_BUDGET_CHARS = 1_500_000


def _within_budget(conversations: list[dict]) -> list[dict]:
    """`conversations` (packed, newest first), the oldest stripped of recorded tokens until
    their messages fit STORE_BUDGET_CHARS; the newest one is kept whole."""
    kept = list(conversations)
    size = sum(len(c["messages_json"]) for c in kept)
    for index in range(len(kept) - 1, 0, -1):
        if size <= STORE_BUDGET_CHARS:
            break
        if '"tokens":' not in kept[index]["messages_json"]:  # a key; typed text has its quotes escaped
            continue
        conversation = _unpacked(kept[index])
        stripped = _packed({**conversation, "messages": _without_tokens(conversation["messages"])})
        size += len(stripped["messages_json"]) - len(kept[index]["messages_json"])
        kept[index] = stripped
    return kept


def _without_tokens(value):
    """Messages (or any part of them) with no reply's recorded tokens: in replies' stats,
    their variants, and what followed each variant."""
    if isinstance(value, list):
        return [_without_tokens(item) for item in value]
    if not isinstance(value, dict):
        return value
    return {key: ({k: v for k, v in item.items() if k not in ("tokens", "tokens_offset")}
                  if key == "stats" and isinstance(item, dict) else _without_tokens(item))
            for key, item in value.items()}


def find_conversation(store: dict | None, conversation_id: str | None) -> dict | None:
    """The conversation with this id, its messages as lists; None if there is none."""
    found = next((c for c in _valid_store(store)["conversations"] if c["id"] == conversation_id), None)
    return None if found is None else _unpacked(found)


def latest_conversation(store: dict | None) -> dict | None:
    """The most recently saved conversation, its messages as lists."""
    conversations = _valid_store(store)["conversations"]
    return _unpacked(conversations[0]) if conversations else None


def _packed(conversation: dict) -> dict:
    """A conversation as the store keeps it: its messages as one JSON string."""
    if isinstance(conversation.get("messages_json"), str):
        return conversation
    messages = conversation.get("messages")
    packed = {k: v for k, v in conversation.items() if k not in ("messages", "messages_json")}
    packed["messages_json"] = json.dumps(messages if isinstance(messages, list) else [], ensure_ascii=False,
                                         separators=(",", ":"))
    return packed


def _unpacked(stored: dict) -> dict:
    """A stored conversation with its messages as lists (an unreadable string: none)."""
    if "messages_json" not in stored:  # saved before messages were packed
        return copy.deepcopy({**stored, "messages": stored.get("messages") or []})
    conversation = {k: v for k, v in stored.items() if k != "messages_json"}
    try:
        messages = json.loads(stored["messages_json"])
    except (TypeError, ValueError):
        messages = []
    conversation["messages"] = messages if isinstance(messages, list) else []
    return conversation


def rename_conversation(store: dict | None, conversation_id: str, title: str) -> dict:
    title = " ".join((title or "").split())[:200]
    if not title:
        raise InvalidInputError(keyed("chat.rename_missing"))
    store = _valid_store(store)
    if find_conversation(store, conversation_id) is None:
        raise InvalidInputError(keyed("chat.choose_to_rename"))
    return {**store, "conversations": [{**c, "title": title} if c["id"] == conversation_id else c
                                       for c in store["conversations"]]}


def delete_conversation(store: dict | None, conversation_id: str) -> dict:
    store = _valid_store(store)
    return {**store, "conversations": [c for c in store["conversations"] if c["id"] != conversation_id]}


def search_conversations(store: dict | None, query: str = "") -> list[tuple[str, str]]:
    """(title, id) of conversations whose title or any message contains `query` (any case)."""
    words = (query or "").casefold().split()
    found = []
    for stored in _valid_store(store)["conversations"]:
        messages = _unpacked(stored)["messages"] if words else []  # no words: every one is listed
        text = " ".join([stored["title"], *(m["content"] for m in messages)]).casefold()
        if all(word in text for word in words):
            found.append((stored["title"], stored["id"]))
    return found


def _valid_store(store: dict | None) -> dict:
    """A store as the browser gave it back; anything unreadable starts a fresh one."""
    if not isinstance(store, dict) or not isinstance(store.get("conversations"), list):
        return empty_store()
    return {"version": STORE_VERSION, "conversations": store["conversations"],
            "presets": store.get("presets") if isinstance(store.get("presets"), dict) else {}}


# --- export and import ------------------------------------------------------------
EXPORT_FORMAT = "transformers-playground-conversation"
MAX_EXPORT_CHARS = 20_000_000  # beyond this an export is refused, not written
MAX_IMPORT_BYTES = 5_000_000
MAX_IMPORT_MESSAGES = 2_000
MAX_VARIANT_DEPTH = 8
STAT_KEYS = {"prompt_tokens": int, "completion_tokens": int, "first_token_s": float,
             "tokens_per_s": float, "finish": str, "model": str, "context_window": int,
             "thinking_s": float, "edited": bool, "cached_tokens": int}


def export_json(conversation: dict) -> str:
    """Messages, model, settings and usage as JSON that `import_json` reads back."""
    import json

    messages = conversation.get("messages") or []
    replies = [m.get("stats") or {} for m in messages if m["role"] == "assistant"]
    document = {
        "format": EXPORT_FORMAT, "version": STORE_VERSION,
        "title": conversation.get("title") or title_for(messages),
        "model": next((s["model"] for s in reversed(replies) if s.get("model")), None),
        "settings": conversation.get("settings") or {},
        "usage": {"prompt_tokens": sum(s.get("prompt_tokens") or 0 for s in replies),
                  "completion_tokens": sum(s.get("completion_tokens") or 0 for s in replies)},
        "messages": messages,
    }
    return _bounded(json.dumps(document, ensure_ascii=False, indent=2))


def export_markdown(conversation: dict) -> str:
    """A readable transcript: title, settings, then each message (replies with their stats)."""
    messages = conversation.get("messages") or []
    lines = [f"# {conversation.get('title') or title_for(messages)}", ""]
    settings = conversation.get("settings") or {}
    if settings.get("system_prompt"):
        lines += [f"**System:** {settings['system_prompt']}", ""]
    for message in messages:
        lines += [f"## {message['role'].capitalize()}", "", message["content"], ""]
        if message.get("stats"):
            lines += [f"*{stats_line(message['stats'])}*", ""]
    return _bounded("\n".join(lines))


def import_json(text: str | bytes) -> dict:
    """A conversation from an exported JSON file, checked field by field; anything
    else in the file is dropped. A bad file raises InvalidInputError and changes nothing."""
    import json

    if len(text) > MAX_IMPORT_BYTES:
        raise InvalidInputError(keyed("chat.import_bytes", count=len(text), limit=MAX_IMPORT_BYTES))
    try:
        document = json.loads(text)
    except (ValueError, UnicodeDecodeError) as error:
        raise InvalidInputError(keyed("chat.import_not_json", problem=str(error)[:120])) from error
    if not isinstance(document, dict) or document.get("format") != EXPORT_FORMAT:
        raise InvalidInputError(keyed("chat.import_wrong_format"))
    messages = _clean_messages(document.get("messages"), depth=0)
    settings = document.get("settings") if isinstance(document.get("settings"), dict) else {}
    settings = {k: v for k, v in settings.items() if isinstance(k, str) and isinstance(v, (str, int, float, bool))}
    title = document.get("title") if isinstance(document.get("title"), str) else ""
    conversation = {**new_conversation(settings), "messages": messages}
    conversation["title"] = " ".join(title.split())[:200] or title_for(messages)
    return conversation


def import_into(store: dict | None, text: str | bytes) -> tuple[dict, dict]:
    """(store with the imported conversation first, the conversation)."""
    conversation = import_json(text)
    store = _valid_store(store)
    conversations = _within_budget([_packed(conversation), *map(_packed, store["conversations"])])
    return {**store, "conversations": conversations}, conversation


def _bounded(text: str) -> str:
    if len(text) > MAX_EXPORT_CHARS:
        raise InvalidInputError(keyed("chat.export_too_large", count=len(text), limit=MAX_EXPORT_CHARS))
    return text


def _clean_messages(messages, depth: int) -> list[Message]:
    from modules.tasks.chat.prompt import MAX_MESSAGE_CHARS

    if not isinstance(messages, list):
        raise InvalidInputError(keyed("chat.import_no_messages"))
    if len(messages) > MAX_IMPORT_MESSAGES:
        raise InvalidInputError(keyed("chat.import_too_many_messages", count=len(messages), limit=MAX_IMPORT_MESSAGES))
    if depth > MAX_VARIANT_DEPTH:
        raise InvalidInputError(keyed("chat.import_too_deep"))
    clean = []
    for number, message in enumerate(messages, 1):
        if not isinstance(message, dict) or message.get("role") not in ("user", "assistant") \
                or not isinstance(message.get("content"), str) or len(message["content"]) > MAX_MESSAGE_CHARS:
            raise InvalidInputError(keyed("chat.import_bad_message", number=number))
        kept = {"role": message["role"], "content": message["content"]}
        if message["role"] == "assistant":
            kept["stats"] = _clean_stats(message.get("stats"))
            variants = message.get("variants")
            if isinstance(variants, list) and variants:
                kept["variants"] = [{"content": v["content"], "stats": _clean_stats(v.get("stats")),
                                     "after": _clean_messages(v.get("after") or [], depth + 1)}
                                    for v in variants if isinstance(v, dict) and isinstance(v.get("content"), str)]
                chosen = message.get("variant")
                kept["variant"] = chosen if isinstance(chosen, int) and 0 <= chosen < len(kept["variants"]) else 0
                if not kept["variants"]:
                    del kept["variants"], kept["variant"]
        clean.append(kept)
    return clean


def _clean_stats(stats) -> dict:
    if not isinstance(stats, dict):
        return {}
    kept = {}
    for key, kind in STAT_KEYS.items():
        value = stats.get(key)
        if isinstance(value, bool) != (kind is bool):
            continue
        if isinstance(value, kind) or (kind is float and isinstance(value, int)):
            kept[key] = value[:200] if isinstance(value, str) else value
    return kept
