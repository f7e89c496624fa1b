"""Chat: parameters (params.py), prompt fitting (prompt.py), local generation
(generation.py), and the one backend contract the tab and /v1 use (backends.py,
with the OpenAI-compatible remote client in remote.py)."""

from modules.tasks.chat.backends import ChatBackend, LocalChatBackend, chat_backend_for
from modules.tasks.chat.generation import (
    GENERATE_THREAD_PREFIX,
    CancelRegistry,
    live_generation_threads,
    stream_chat,
)
from modules.tasks.chat.params import (
    CHAT_TAB_REPETITION_PENALTY,
    FINISH_CANCELLED,
    FINISH_LENGTH,
    FINISH_STOP,
    MAX_SEED,
    MAX_STOP_STRINGS,
    RANDOM_SEED,
    ChatChunk,
    GenerationParams,
    Usage,
    format_usage,
    params_from_settings,
)
from modules.tasks.chat.prompt import (
    MAX_MESSAGE_CHARS,
    PLAIN_TRANSCRIPT_TEMPLATE,
    ROLES,
    PreparedPrompt,
    conversation_messages,
    prepare_prompt,
    render_prompt_ids,
    validate_messages,
)
from modules.tasks.chat.remote import RemoteChatBackend

__all__ = [
    "CHAT_TAB_REPETITION_PENALTY", "FINISH_CANCELLED", "FINISH_LENGTH", "FINISH_STOP",
    "GENERATE_THREAD_PREFIX", "MAX_MESSAGE_CHARS", "MAX_SEED", "MAX_STOP_STRINGS",
    "PLAIN_TRANSCRIPT_TEMPLATE", "RANDOM_SEED", "ROLES", "CancelRegistry", "ChatBackend",
    "ChatChunk", "GenerationParams", "LocalChatBackend", "PreparedPrompt", "RemoteChatBackend",
    "Usage", "chat_backend_for", "conversation_messages", "format_usage",
    "live_generation_threads", "params_from_settings", "prepare_prompt", "render_prompt_ids",
    "stream_chat", "validate_messages",
]
