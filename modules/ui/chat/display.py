"""A conversation as the Chatbot shows it: thinking apart and collapsed (with its
duration), each reply with its stats line and ‹ n/m › variants under it."""

from __future__ import annotations

import gradio as gr

from modules.tasks.chat import conversations
from modules.tasks.chat.conversations import search_conversations, split_thinking, variant_label
from modules.ui.i18n import reader_language

SETTING_NAMES = ("system_prompt", "model", "max_new_tokens", "temperature", "top_p", "top_k",
                 "repetition_penalty", "do_sample", "seed", "thinking")
SAVED_NAMES = (*SETTING_NAMES, "preset")  # what each conversation remembers


def context_meter(messages: list[dict]) -> str:
    """The context meter in the reader's language."""
    return conversations.context_meter(messages, reader_language())


def stats_line(stats: dict) -> str:
    """A reply's stats line in the reader's language."""
    return conversations.stats_line(stats, reader_language())


def shown_messages(history: list[dict]) -> tuple[list[dict], list[int]]:
    """(Chatbot messages, the history index each one shows): an edit event names a
    shown message, and a reply with thinking is shown as two."""
    shown: list[dict] = []
    positions: list[int] = []
    for index, message in enumerate(history):
        if message["role"] != "assistant":
            shown.append({"role": message["role"], "content": message["content"]})
            positions.append(index)
            continue
        stats = message.get("stats") or {}
        thinking, answer = split_thinking(message["content"])
        if thinking is not None:
            metadata = {"title": "Thinking", "status": "done" if stats.get("thinking_s") is not None else "pending"}
            if stats.get("thinking_s") is not None:
                metadata["duration"] = stats["thinking_s"]
            shown.append({"role": "assistant", "content": thinking or "…", "metadata": metadata})
            positions.append(index)
        footer = " · ".join(part for part in (variant_label(message), stats_line(stats) if "finish" in stats else "") if part)
        content = [answer, f"<sub>{footer}</sub>"] if footer else answer
        if answer or footer:
            shown.append({"role": "assistant", "content": content})
            positions.append(index)
    return shown, positions


def listing(store, query: str, selected: str | None):
    """The sidebar's list: conversations matching `query`, `selected` ticked if listed."""
    choices = search_conversations(store, query)
    value = selected if any(selected == c for _, c in choices) else None
    return gr.update(choices=choices, value=value)


def opened_conversation(conversation: dict | None) -> tuple:
    """(id, history, chatbot, meter, status, *saved settings) showing `conversation`."""
    if conversation is None:
        return "", [], [], "", "", *[gr.skip()] * len(SAVED_NAMES)
    saved = conversation.get("settings") or {}
    # The model is not switched back: that would load it. Its name is in each reply's stats.
    values = [gr.skip() if name == "model" or name not in saved else saved[name] for name in SAVED_NAMES]
    history = conversation["messages"]
    return conversation["id"], history, shown_messages(history)[0], context_meter(history), "", *values
