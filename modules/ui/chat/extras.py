"""The chat tab's tools around a conversation: presets, the prompt inspector, export
and import. Each public action is a named API endpoint with a docstring."""

from __future__ import annotations

import os
import re
import tempfile
from dataclasses import replace

import gradio as gr

from modules.app_context import AppContext
from modules.engine.compute import on_request_thread
from modules.engine.model_cache import ModelKind
from modules.tasks.chat import params_from_settings
from modules.tasks.chat.conversations import (
    MAX_IMPORT_BYTES,
    export_json,
    export_markdown,
    find_conversation,
    import_into,
    last_reply_index,
    model_messages,
    new_conversation,
    title_for,
)
from modules.tasks.chat.code_snippet import code_snippet
from modules.tasks.chat.inspector import render_prompt
from modules.tasks.chat.presets import delete_preset, preset_names, preset_values, save_preset
from modules.ui.chat.display import SAVED_NAMES, listing, opened_conversation
from modules.ui.errors import shows_user_errors, user_error
from modules.messages import Message

PRESET_TARGETS = ("system_prompt", "max_new_tokens", "temperature", "top_p", "top_k",
                  "repetition_penalty", "do_sample")


def wire(context: AppContext, c, generating: list) -> list:
    """Connect presets, inspector, export and import; returns the events that change the chat."""
    private = dict(queue=False, api_visibility="private")
    targets = [c.settings_inputs[SAVED_NAMES.index(name)] for name in PRESET_TARGETS]

    @shows_user_errors
    def apply_preset(store, name):
        values = preset_values(store, name)
        return [values.get(field, gr.skip()) for field in PRESET_TARGETS]

    @shows_user_errors
    def keep_preset(store, name, *settings):
        store = save_preset(store, name, dict(zip(SAVED_NAMES, settings)))
        return store, gr.update(choices=preset_names(store), value=name.strip()), ""

    @shows_user_errors
    def drop_preset(store, name):
        store = delete_preset(store, name)
        return store, gr.update(choices=preset_names(store), value=preset_names(store)[0])

    c.preset.input(apply_preset, [c.store, c.preset], targets, **private)
    c.save_preset.click(keep_preset, [c.store, c.preset_name, *c.settings_inputs],
                        [c.store, c.preset, c.preset_name], **private)
    c.delete_preset.click(drop_preset, [c.store, c.preset], [c.store, c.preset], **private)
    gr.context.Context.root_block.load(lambda store: gr.update(choices=preset_names(store)),
                                       [c.store], [c.preset], **private)

    def inspect_prompt(message: str, history: list[dict], system_prompt: str, model: str,
                       max_new_tokens: float, temperature: float, top_p: float, top_k: float,
                       repetition_penalty: float, do_sample: bool, seed: float | None = None,
                       thinking: str = "template default") -> tuple[str, str]:
        """The exact text the model gets for the next turn (the conversation plus the message
        being typed), special tokens marked, and its token count."""
        return _inspect(context, message, history, system_prompt, model,
                        (max_new_tokens, temperature, top_p, top_k, repetition_penalty, do_sample, seed),
                        thinking)

    c.inspect.click(inspect_prompt, [c.message, c.history, *c.settings_inputs],
                    [c.prompt_view, c.prompt_count], api_name="render_prompt", concurrency_id="chat",
                    concurrency_limit=context.settings.batch_size)  # the group's limit is its lowest

    @shows_user_errors
    def copy_as_code(history: list[dict], system_prompt: str, model: str,
                     max_new_tokens: float, temperature: float, top_p: float, top_k: float,
                     repetition_penalty: float, do_sample: bool, seed: float | None = None,
                     thinking: str = "template default") -> str:
        """A runnable Python script (transformers, the chat template, these settings and
        seed) that writes the last reply again outside the app."""
        index = last_reply_index(history or [])
        if index is None:
            raise user_error(Message("chat.there_is_no_reply_to_reproduce_yet_send"))
        params = params_from_settings(max_new_tokens, temperature, top_p, top_k, repetition_penalty,
                                      do_sample, seed, max_new_tokens_limit=context.settings.max_new_tokens)
        params = replace(params, enable_thinking={"on": True, "off": False}.get(thinking))
        model_ref = (model or "").strip() or context.chat_backend.default_model
        return code_snippet(model_ref, model_messages(history[:index], system_prompt), params)

    c.copy_code.click(copy_as_code, [c.history, *c.settings_inputs], [c.code], api_name="copy_as_code",
                      queue=False)

    @shows_user_errors
    def export_conversation(export_format: str, store: dict | None = None, conversation_id: str = "",
                            history: list[dict] | None = None, *settings) -> str:
        """The conversation on screen as a Markdown or JSON file (messages, model, settings, usage)."""
        saved = find_conversation(store, conversation_id) or new_conversation()
        conversation = {**saved, "messages": history or [], "settings": dict(zip(SAVED_NAMES, settings))}
        if not conversation["messages"]:
            raise user_error(Message("chat.there_is_nothing_to_export_yet_send_a"))
        as_json = export_format == "JSON"
        text = export_json(conversation) if as_json else export_markdown(conversation)
        return _write(conversation.get("title") or title_for(history), "json" if as_json else "md", text)

    c.export.click(export_conversation,
                   [c.export_format, c.store, c.conversation_id, c.history, *c.settings_inputs, c.preset],
                   [c.exported], api_name="export_conversation")

    opened = [c.conversation_id, c.history, c.chatbot, c.meter, c.status, *c.settings_inputs, c.preset]

    @shows_user_errors
    def import_conversation(file: str, store: dict | None = None) -> tuple:
        """Add a conversation from a JSON file exported here and open it. A bad file is
        refused with the reason; nothing saved is changed."""
        path = file if isinstance(file, str) else getattr(file, "name", "")
        if not path or not os.path.isfile(path):
            raise user_error(Message("chat.choose_a_json_file_exported_from_this_app"))
        if os.path.getsize(path) > MAX_IMPORT_BYTES:
            raise user_error(Message("chat.import_too_big", {"limit": MAX_IMPORT_BYTES}))
        with open(path, "rb") as handle:
            store, conversation = import_into(store, handle.read())
        return *opened_conversation(conversation), store, listing(store, "", conversation["id"])

    imported = c.import_file.upload(import_conversation, [c.import_file, c.store],
                                    [*opened, c.store, c.conversations], api_name="import_conversation",
                                    cancels=generating)
    return [imported]


@on_request_thread
@shows_user_errors
def _inspect(context: AppContext, message, history, system_prompt, model, knobs, thinking):
    if context.chat_backend.name != "local":
        raise user_error(Message("chat.the_prompt_inspector_needs_the_model_s_tokenizer"))
    messages = model_messages(history or [], system_prompt)
    if isinstance(message, str) and message.strip():
        messages.append({"role": "user", "content": message})
    elif not messages or messages[-1]["role"] != "user":
        raise user_error(Message("chat.type_the_next_message_first_the_prompt_shown"))
    params = params_from_settings(*knobs, max_new_tokens_limit=context.settings.max_new_tokens)
    params = replace(params, enable_thinking={"on": True, "off": False}.get(thinking))
    loaded = context.cache.get((model or "").strip() or context.chat_model.ref, ModelKind.CAUSAL_LM)
    rendered = render_prompt(loaded, messages, params, context.settings.max_input_tokens)
    count = f"**{rendered.token_count:,} tokens** of {loaded.context_window():,}; special tokens marked."
    if rendered.dropped_turns:
        count += f" {rendered.dropped_turns} oldest turn(s) dropped to fit."
    return rendered.html(), count


def _write(title: str, extension: str, text: str) -> str:
    name = re.sub(r"[^\w\-]+", "-", title, flags=re.UNICODE).strip("-")[:60] or "conversation"
    path = os.path.join(tempfile.mkdtemp(prefix="chat-export-"), f"{name}.{extension}")
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(text)
    return path
