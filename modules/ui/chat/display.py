"""A conversation as the Chatbot shows it: thinking apart and collapsed (with its
duration), each reply with its stats line and ‹ n/m › variants under it."""

from __future__ import annotations

from modules.tasks.chat.conversations import split_thinking, stats_line, variant_label


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
