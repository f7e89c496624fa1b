"""Prompt fitting and rendering: a conversation in, the model's input token ids out.

Promises kept here rather than in every caller:
* Text a user types is text: special tokens in a message (`<|im_start|>`,
  `</s>` …) are split into ordinary tokens, never read as control tokens.
* A conversation that outgrows the context window loses its oldest turns (the
  system prompt stays) and says so; one message that cannot fit is an error.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from modules.engine.model_cache import LoadedModel
from modules.errors import InvalidInputError, ModelError, PromptTooLongError
from modules.messages import message as keyed

ROLES = ("system", "user", "assistant")
MAX_MESSAGE_CHARS = 200_000  # far beyond any context window; bounds tokenizer work
# Used when a model ships no chat template (a base model): a plain transcript.
PLAIN_TRANSCRIPT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ message['role'] | capitalize }}: {{ message['content'] }}\n\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}Assistant:{% endif %}"
)
Message = dict[str, str]


@dataclass(frozen=True)
class PreparedPrompt:
    """The model input for a conversation, after fitting it into the window."""

    input_ids: list[int]
    dropped_turns: int
    max_new_tokens: int  # the requested number, capped by what the window leaves

    @property
    def notice(self) -> str | None:
        if not self.dropped_turns:
            return None
        if self.dropped_turns == 1:
            return keyed("chat.dropped_oldest_turn").english()
        return keyed("chat.dropped_oldest_turns", count=self.dropped_turns).english()


def conversation_messages(past: list[dict], system_prompt: str, text: str) -> list[Message]:
    """The model's messages for a chat so far plus a new message: an optional system
    prompt, the past turns as plain {role, content} (extra keys such as a usage line
    dropped), and the new user message."""
    messages = [{"role": "system", "content": system_prompt}] if system_prompt and system_prompt.strip() else []
    messages += [{"role": m["role"], "content": m["content"]} for m in past]
    return messages + [{"role": "user", "content": text}]


def validate_messages(messages: list[dict[str, str]]) -> list[dict[str, str]]:
    """OpenAI-style messages, checked and copied to plain {role, content} dicts."""
    if not isinstance(messages, (list, tuple)) or not messages:
        raise InvalidInputError(keyed("chat.conversation_empty_send"))
    clean = []
    for number, message in enumerate(messages, 1):
        role = message.get("role") if isinstance(message, dict) else None
        content = message.get("content") if isinstance(message, dict) else None
        if role not in ROLES:
            raise InvalidInputError(keyed("chat.bad_role", number=number, role=role, known=", ".join(ROLES)))
        if not isinstance(content, str):
            raise InvalidInputError(keyed("chat.message_no_text", number=number))
        if len(content) > MAX_MESSAGE_CHARS:
            raise InvalidInputError(keyed("chat.message_too_long", number=number, count=len(content),
                                          limit=MAX_MESSAGE_CHARS))
        clean.append({"role": role, "content": content})
    if not any(m["role"] == "user" for m in clean):
        raise InvalidInputError(keyed("chat.no_user_message"))
    last_user = [m for m in clean if m["role"] == "user"][-1]
    if not last_user["content"].strip():
        raise InvalidInputError(keyed("chat.message_empty"))
    return clean


def prepare_prompt(
    loaded: LoadedModel, messages: list[dict[str, str]], max_new_tokens: int,
    max_input_tokens: int | None = None, template_options: dict | None = None,
) -> PreparedPrompt:
    """Token ids for `messages`, dropping the oldest turns until they fit.

    The window leaves room for the reply (up to half of it), and never more
    input than `max_input_tokens`. The reply is then capped at what is left.
    """
    messages = validate_messages(messages)
    window = loaded.context_window()
    budget = window - min(max_new_tokens, window // 2)
    if max_input_tokens:
        budget = min(budget, max_input_tokens)
    system, turns = _split_turns(messages)

    def ids_without(dropped: int) -> list[int]:
        kept = [m for turn in turns[dropped:] for m in turn]
        return render_prompt_ids(loaded.tokenizer, system + kept, template_options)

    ids = ids_without(0)
    dropped = 0
    if len(ids) > budget:
        dropped, ids = _fewest_drops(ids_without, len(turns), budget)
    if dropped is None:
        raise PromptTooLongError(keyed("chat.prompt_too_long", count=len(ids), budget=budget))
    return PreparedPrompt(ids, dropped, max(1, min(max_new_tokens, window - len(ids))))


def _split_turns(messages: list[dict[str, str]]) -> tuple[list[dict], list[list[dict]]]:
    """Leading system messages, then turns that each start at a user message."""
    lead = 0
    while messages[lead]["role"] == "system":
        lead += 1
    turns: list[list[dict]] = []
    for message in messages[lead:]:
        if message["role"] == "user" or not turns:
            turns.append([])
        turns[-1].append(message)
    return messages[:lead], turns


def _fewest_drops(ids_without, turn_count: int, budget: int):
    """Binary search for the fewest oldest turns to drop (the last turn always stays)."""
    low, high = 1, turn_count - 1
    best = None
    while low <= high:
        middle = (low + high) // 2
        ids = ids_without(middle)
        if len(ids) <= budget:
            best, high = (middle, ids), middle - 1
        else:
            low = middle + 1
    if best is None:
        return None, ids_without(turn_count - 1)
    return best


def render_prompt_ids(tokenizer, messages: list[dict[str, str]],
                      template_options: dict | None = None) -> list[int]:
    """The chat template's token ids, with every message's text tokenized as plain text.

    The template is rendered around unique markers; the template's own text is
    tokenized normally (its special tokens count), each message's content with
    `split_special_tokens=True` (so typed `<|im_start|>` is just characters).
    """
    tag = uuid.uuid4().hex
    markers = [f"@@{tag}:{n}@@" for n in range(len(messages))]
    placeholders = [{"role": m["role"], "content": k} for m, k in zip(messages, markers)]
    text = render_template(tokenizer, placeholders, template_options)
    ids: list[int] = []
    position = 0
    for marker, message in zip(markers, messages):
        found = text.find(marker, position)
        if found < 0:
            raise ModelError(keyed("chat.template_rewrites"))
        ids += _encode(tokenizer, text[position:found], plain=False)
        ids += _encode(tokenizer, message["content"], plain=True)
        position = found + len(marker)
    return ids + _encode(tokenizer, text[position:], plain=False)


def render_template(tokenizer, messages: list[dict[str, str]],
                    template_options: dict | None = None) -> str:
    """The chat template's text for `messages` (a plain transcript for a base model).
    With continue_final_message the last message is left open for the model to extend."""
    template = None if getattr(tokenizer, "chat_template", None) else PLAIN_TRANSCRIPT_TEMPLATE
    options = dict(template_options or {})
    options.setdefault("continue_final_message", False)
    if options["continue_final_message"] and messages[-1]["role"] != "assistant":
        raise InvalidInputError(keyed("chat.nothing_to_continue"))
    try:
        return tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=not options["continue_final_message"],
            chat_template=template, **options,
        )
    except Exception as error:  # e.g. "System role not supported": fold it into the first user turn
        if not any(m["role"] == "system" for m in messages):
            raise ModelError(keyed("chat.template_failed", problem=error)) from error
        return render_template(tokenizer, _fold_system(messages), template_options)


def _fold_system(messages: list[dict[str, str]]) -> list[dict[str, str]]:
    system = "\n\n".join(m["content"] for m in messages if m["role"] == "system")
    rest = [dict(m) for m in messages if m["role"] != "system"]
    first_user = next(m for m in rest if m["role"] == "user")
    first_user["content"] = f"{system}\n\n{first_user['content']}"
    return rest


def _encode(tokenizer, text: str, plain: bool) -> list[int]:
    if not text:
        return []
    return list(
        tokenizer(
            text, add_special_tokens=False, split_special_tokens=plain, verbose=False
        )["input_ids"]
    )
