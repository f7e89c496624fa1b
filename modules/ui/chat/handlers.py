"""The chat tab's handlers and wiring: each action is a named API endpoint with a
docstring (the public contract, for gradio_client and MCP); internal events are private.

Handlers only translate between components and `modules.tasks.chat`: variants,
edits, stats and the saved store are plain-value functions there.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import replace

import gradio as gr

from modules.app_context import AppContext
from modules.config import EMBEDDED_MODEL, Settings, default_page_updates
from modules.engine.compute import on_request_thread
from modules.engine.gpu import gpu
from modules.errors import PlaygroundError
from modules.tasks.chat import (
    CancelRegistry,
    ChatChunk,
    GenerationParams,
    live_generation_threads,
    params_from_settings,
)
from modules.tasks.chat.conversations import (
    add_variant,
    delete_conversation,
    edit_message,
    find_conversation,
    last_reply_index,
    latest_conversation,
    model_messages,
    new_conversation,
    rename_conversation,
    replace_reply,
    reply_stats,
    save_conversation,
    switch_variant,
    variant_label,
    with_reply,
)
from modules.tasks.chat.branching import DEFAULT_ALTERNATIVES, alternatives_at, branch_prefix
from modules.ui.chat import extras
from modules.ui.chat.display import SAVED_NAMES, context_meter, listing, opened_conversation, shown_messages
from modules.ui.errors import shows_user_errors, user_error
from modules.ui.i18n import in_reader_language, t
from modules.messages import Message

THINKING_CHOICES = ["template default", "on", "off"]


# --- wiring --------------------------------------------------------------------
def wire(context: AppContext, c, cancels: CancelRegistry) -> None:  # noqa: C901 - one place lists every event
    """Connect the components to the handlers; the API names are the public contract."""

    @shows_user_errors
    def respond(
        message: str, history: list[dict], system_prompt: str, model: str,
        max_new_tokens: float, temperature: float, top_p: float, top_k: float,
        repetition_penalty: float, do_sample: bool, seed: float | None = None,
        thinking: str = THINKING_CHOICES[0], prefill: str = "", request: gr.Request = None,
    ) -> Iterator[tuple]:
        """Send a message and stream the reply (optionally starting with `prefill`).
        The conversation so far is kept per session."""
        text = message if isinstance(message, str) else ""
        if not text.strip():
            raise user_error(Message("chat.type_a_message_first"))
        params = _params(context, max_new_tokens, temperature, top_p, top_k,
                         repetition_penalty, do_sample, seed, thinking)
        asked = [*(history or []), {"role": "user", "content": text}]
        prefix = prefill or ""
        read = model_messages(asked, system_prompt)
        if prefix:
            read.append({"role": "assistant", "content": prefix})
            params = replace(params, continue_final_message=True)
        yield from _generate(context, cancels, _session(request), history or [], asked, read,
                             model, params, prefix, lambda content, stats: with_reply(asked, content, stats),
                             restore_text=text)

    @shows_user_errors
    def regenerate(
        history: list[dict], system_prompt: str, model: str,
        max_new_tokens: float, temperature: float, top_p: float, top_k: float,
        repetition_penalty: float, do_sample: bool, seed: float | None = None,
        thinking: str = THINKING_CHOICES[0], request: gr.Request = None,
    ) -> Iterator[tuple]:
        """Write another reply to the last message; the earlier reply is kept as a variant."""
        history = history or []
        index = last_reply_index(history)
        if index is None:
            raise user_error(Message("chat.there_is_no_reply_to_retry_yet"))
        params = _params(context, max_new_tokens, temperature, top_p, top_k,
                         repetition_penalty, do_sample, seed, thinking)
        asked = history[:index]
        yield from _generate(context, cancels, _session(request), history, asked,
                             model_messages(asked, system_prompt), model, params, "",
                             lambda content, stats: add_variant(history, index, content, stats))

    @shows_user_errors
    def continue_reply(
        history: list[dict], system_prompt: str, model: str,
        max_new_tokens: float, temperature: float, top_p: float, top_k: float,
        repetition_penalty: float, do_sample: bool, seed: float | None = None,
        thinking: str = THINKING_CHOICES[0], request: gr.Request = None,
    ) -> Iterator[tuple]:
        """Extend the last reply in the same message (one cut off by the length limit or Stop)."""
        history = history or []
        if not history or history[-1]["role"] != "assistant":
            raise user_error(Message("chat.there_is_no_reply_to_continue_send_a"))
        params = replace(_params(context, max_new_tokens, temperature, top_p, top_k,
                                 repetition_penalty, do_sample, seed, thinking),
                         continue_final_message=True)
        index = len(history) - 1
        prefix = history[-1]["content"]
        read = model_messages(history[:-1], system_prompt) + [{"role": "assistant", "content": prefix}]
        yield from _generate(context, cancels, _session(request), history, history[:-1], read,
                             model, params, prefix,
                             lambda content, stats: replace_reply(history, index, content, stats))

    @shows_user_errors
    def edit(
        index: float, text: str, history: list[dict], system_prompt: str, model: str,
        max_new_tokens: float, temperature: float, top_p: float, top_k: float,
        repetition_penalty: float, do_sample: bool, seed: float | None = None,
        thinking: str = THINKING_CHOICES[0], request: gr.Request = None,
    ) -> Iterator[tuple]:
        """Edit message `index` (0 = first). A user message edited gets a new reply from
        there on; a reply edited is kept as the model's own words for the next turn."""
        knobs = (max_new_tokens, temperature, top_p, top_k, repetition_penalty, do_sample, seed, thinking)
        yield from _edit(int(index) if isinstance(index, (int, float)) else -1, text, history,
                         system_prompt, model, knobs, request)

    @shows_user_errors
    def edit_in_place(history, system_prompt, model, max_new_tokens, temperature, top_p, top_k,
                      repetition_penalty, do_sample, seed, thinking, event: gr.EditData,
                      request: gr.Request = None):
        shown_index = event.index[0] if isinstance(event.index, (list, tuple)) else event.index
        positions = shown_messages(history or [])[1]
        index = positions[shown_index] if 0 <= shown_index < len(positions) else -1
        knobs = (max_new_tokens, temperature, top_p, top_k, repetition_penalty, do_sample, seed, thinking)
        yield from _edit(index, _edited_text(event.value), history, system_prompt, model, knobs, request)

    def _edit(index, text, history, system_prompt, model, knobs, request):
        try:
            edited, regenerate_reply = edit_message(history or [], index, text)
        except PlaygroundError as error:  # nothing changes; the message says why
            yield *_view(history or []), gr.skip(), "", context_meter(history or [])
            raise user_error(error) from error
        if not regenerate_reply:
            yield *_view(edited), gr.skip(), "", context_meter(edited)
            return
        params = _params(context, *knobs)
        yield from _generate(context, cancels, _session(request), edited, edited,
                             model_messages(edited, system_prompt), model, params, "",
                             lambda content, stats: with_reply(edited, content, stats))

    def previous_variant(history: list[dict]) -> tuple:
        """Show the previous variant of the last reply that has several, with what followed it."""
        return _switch(history, -1)

    def next_variant(history: list[dict]) -> tuple:
        """Show the next variant of the last reply that has several, with what followed it."""
        return _switch(history, +1)

    def arm(request: gr.Request):
        cancels.arm(_session(request))
        return gr.update(visible=False), gr.update(visible=True)

    def stop_generation(request: gr.Request) -> None:
        """Stop the reply being written (it is kept, with finish: cancelled)."""
        cancels.stop(_session(request))

    def clear_chat(request: gr.Request):
        """Empty this conversation."""
        cancels.stop(_session(request))
        cancels.arm(_session(request))
        return [], [], "", "", ""

    def load_model(ref: str, progress=gr.Progress()) -> str:
        """Load a chat model (a configured name, the embedded one, or a local path)."""
        return _load_model(context, ref, progress)

    busy = [c.send, c.stop]
    reply_outputs = [c.chatbot, c.history, c.message, c.status, c.meter]
    settings = c.settings_inputs
    # As many replies at once as the model's batch holds (PLAYGROUND_BATCH_SIZE), so page
    # users share batches; the scheduler queues the rest and the status shows their place.
    streaming = dict(concurrency_id="chat", concurrency_limit=context.settings.batch_size,
                     show_progress="minimal")
    private = dict(queue=False, api_visibility="private")

    def started(triggers):
        return gr.on(triggers, arm, outputs=busy, **private)

    chat_event = started([c.message.submit, c.send.click]).then(
        respond, [c.message, c.history, *settings, c.prefill], reply_outputs, api_name="chat", **streaming)
    retry_event = started([c.retry.click]).then(
        regenerate, [c.history, *settings], reply_outputs, api_name="retry", **streaming)
    continue_event = started([c.continue_.click]).then(
        continue_reply, [c.history, *settings], reply_outputs, api_name="continue", **streaming)
    edit_index = gr.Number(visible=False, precision=0)
    edit_text = gr.Textbox(visible=False)
    edit_button = gr.Button(visible=False)
    edit_event = started([edit_button.click]).then(
        edit, [edit_index, edit_text, c.history, *settings], reply_outputs, api_name="edit", **streaming)
    # Not chained after `arm`: only the first handler of an .edit event gets its EditData.
    edit_in_place_event = c.chatbot.edit(
        edit_in_place, [c.history, *settings], reply_outputs, api_visibility="private", **streaming)
    def branch(
        position: float, choice: str, history: list[dict], system_prompt: str, model: str,
        max_new_tokens: float, temperature: float, top_p: float, top_k: float,
        repetition_penalty: float, do_sample: bool, seed: float | None = None,
        thinking: str = THINKING_CHOICES[0], request: gr.Request = None,
    ) -> Iterator[tuple]:
        """Cut the last reply before token `position`, put `choice` (one of the model's
        alternatives there, see /alternatives) in its place, and let the model go on from
        there. The result is a new variant of the reply."""
        history = history or []
        index = last_reply_index(history)
        if index is None:
            raise user_error(Message("chat.there_is_no_reply_to_branch_from_yet"))
        reply = history[index]
        stats = reply.get("stats") or {}
        try:
            prefix = reply["content"][:stats.get("tokens_offset", 0)] + branch_prefix(
                stats.get("tokens") or [], _whole(position), choice)
        except PlaygroundError as error:
            raise user_error(error) from error
        params = replace(_params(context, max_new_tokens, temperature, top_p, top_k,
                                 repetition_penalty, do_sample, seed, thinking),
                         continue_final_message=True)
        read = model_messages(history[:index], system_prompt) + [{"role": "assistant", "content": prefix}]
        yield from _generate(context, cancels, _session(request), history, history[:index], read,
                             model, params, prefix,
                             lambda content, stats: add_variant(history, index, content, stats))

    @shows_user_errors
    def alternatives(position: float, history: list[dict]) -> tuple:
        """The model's top alternatives at token `position` of the last reply, as
        [text, probability] pairs, recorded while it was written (no extra forward pass)."""
        found = alternatives_at(_last_reply_tokens(history), _whole(position))
        return _choices(found), [list(pair) for pair in found]

    branch_position = gr.Number(visible=False, precision=0)
    alternatives_button = gr.Button(visible=False)
    alternatives_found = gr.JSON(visible=False)
    alternatives_button.click(alternatives, [branch_position, c.history], [c.alternatives, alternatives_found],
                              api_name="alternatives", queue=False)
    branch_event = started([c.branch.click]).then(
        branch, [c.position, c.alternatives, c.history, *settings], reply_outputs,
        api_name="branch", **streaming)
    c.tokens_view.select(_select_token, [c.history], [c.position, c.alternatives], **private)
    generating = [chat_event, retry_event, continue_event, edit_event, edit_in_place_event, branch_event]
    variant_events = [
        c.previous_variant.click(previous_variant, [c.history], reply_outputs[:2] + reply_outputs[3:],
                                 api_name="previous_variant", queue=False, cancels=generating),
        c.next_variant.click(next_variant, [c.history], reply_outputs[:2] + reply_outputs[3:],
                             api_name="next_variant", queue=False, cancels=generating),
    ]
    # No output: the reply's own last update says "finish: cancelled".
    c.stop.click(stop_generation, queue=False, api_name="stop")
    # Undo and Clear rewrite the conversation, so a reply still streaming is dropped.
    undo_event = c.undo.click(_undo, [c.history], reply_outputs, queue=False, api_name="undo",
                              cancels=generating)
    clear_event = c.clear.click(clear_chat, outputs=reply_outputs, queue=False, api_name="clear",
                                cancels=generating)
    for event in [*generating, undo_event, clear_event]:
        event.then(_idle, outputs=busy, **private)
    changed = [*generating, undo_event, clear_event, *variant_events]
    changed += extras.wire(context, c, generating)
    opening = _wire_store(c, changed, generating)
    for event in [*changed, *opening, c.colour.change(lambda: None, **private)]:
        event.then(_token_view, [c.history, c.colour], [c.tokens_view], **private)
    if context.chat_backend.name == "local":
        c.model.change(load_model, [c.model], [c.model_status], api_name="load_chat_model",
                       concurrency_id="load")
        for event in generating:  # the first message loaded the model: say so
            event.then(lambda ref: _loaded_model_line(context, ref), [c.model], [c.model_status],
                       **private)


def _wire_store(c, changed: list, generating: list) -> list:
    """Every change is saved in the browser; the sidebar opens, renames, deletes, searches.
    Returns the events that show another conversation."""
    listing = [c.store, c.conversation_id, c.conversations]
    private = dict(queue=False, api_visibility="private")
    save_inputs = [c.store, c.conversation_id, c.history, c.search, *c.settings_inputs, c.preset]
    for event in changed:
        event.then(_save, save_inputs, listing, **private)
    opened = [c.conversation_id, c.history, c.chatbot, c.meter, c.status, *c.settings_inputs, c.preset]
    restored = gr.context.Context.root_block.load(_restore, [c.store], [c.conversations, *opened], **private)
    picked = c.conversations.input(_open, [c.store, c.conversations], opened, cancels=generating, **private)
    started_new = c.new_chat.click(_new_chat, [c.store, c.search], [c.conversations, *opened[:5]],
                                   cancels=generating, **private)
    c.search.change(_list, [c.store, c.search, c.conversation_id], [c.conversations], **private)
    c.rename.click(_rename, [c.store, c.conversation_id, c.new_title, c.search],
                   [c.store, c.conversations, c.new_title], **private)
    deleted = c.delete.click(_delete, [c.store, c.conversation_id, c.search],
                             [c.store, c.conversations, *opened[:5]], cancels=generating, **private)
    return [restored, picked, started_new, deleted]


# --- generation ------------------------------------------------------------------
@gpu
@on_request_thread
@shows_user_errors
def _generate(context: AppContext, cancels: CancelRegistry, session: str, original: list[dict],
              shown: list[dict], read: list[dict], model_ref: str, params: GenerationParams,
              prefix: str, finish: Callable[[str, dict], list[dict]],
              restore_text: str | None = None) -> Iterator[tuple]:
    """Yield (chatbot, history, message box, status, meter) as a reply grows.

    `shown` is the conversation on screen while the reply streams after it, `read`
    what the model reads, `prefix` the text the reply already has (Continue, prefill),
    and `finish(content, stats)` the conversation with the finished reply. On an
    error the conversation goes back to `original`.
    """
    backend = context.chat_backend
    model_name = model_ref if backend.name == "local" else (backend.default_model or "remote")
    yield *_view(shown + [{"role": "assistant", "content": prefix or "…"}], original), "", "", gr.skip()
    if not backend.is_ready(model_ref):
        yield gr.skip(), gr.skip(), gr.skip(), t("chat.loading_first_use", model=model_ref), gr.skip()
    cancel = cancels.begin(session)
    meter = context_meter(original)  # what the meter shows until the reply is done
    reply: ChatChunk | None = None
    chunks = None
    timer = _ThinkingTimer()
    try:
        # A remote backend serves the model it was configured with; the dropdown only shows it.
        chunks = backend.stream(read, params, cancel, model=model_ref if backend.name == "local" else None)
        shown_at = 0.0
        for chunk in chunks:
            if chunk.ahead is not None:  # waiting for a place in the model's batch
                yield gr.skip(), gr.skip(), gr.skip(), t("chat.waiting_in_line", ahead=chunk.ahead), gr.skip()
                continue
            reply = chunk
            timer.saw(prefix + chunk.text)
            if chunk.finish_reason is None and time.monotonic() - shown_at >= _update_interval(context.settings):
                shown_at = time.monotonic()
                partial = shown + [{"role": "assistant", "content": prefix + chunk.text,
                                    "stats": {"thinking_s": timer.seconds}}]
                # Values, not gr.skip(): Gradio rebuilds a component for every skip, and an
                # unchanged value costs nothing on the wire. Only the message box is skipped
                # (the user may be typing the next message).
                yield *_view(partial, original), gr.skip(), "", meter

        stats = reply_stats(reply.usage if reply else None, reply.finish_reason if reply else None,
                            model_name, backend.context_window(model_ref if backend.name == "local" else None))
        if timer.seconds is not None:
            stats["thinking_s"] = timer.seconds
        if reply and reply.tokens:  # for branching: the tokens after `prefix`, with alternatives
            stats.update(tokens=list(reply.tokens), tokens_offset=len(prefix))
        finished = finish(prefix + (reply.text if reply else ""), stats)
        notice = f"⚠️ {in_reader_language(reply.notice)}" if reply and reply.notice else ""
        yield *_view(finished), gr.skip(), notice, context_meter(finished)
    except PlaygroundError as error:
        restored = restore_text if restore_text is not None else gr.skip()
        yield *_view(original), restored, f"⚠️ {in_reader_language(error)}", context_meter(original)
        raise
    finally:
        if chunks is not None:
            chunks.close()  # a client that went away: stop generating now
        cancels.end(session, cancel)


def _update_interval(settings: Settings) -> float:
    """Seconds between a streaming reply's page updates: every update costs the server
    a few ms of Python that the model's step then waits for, so while several replies
    stream, they share the rate (PLAYGROUND_PAGE_UPDATES_PER_S, config.default_page_updates)."""
    per_second = settings.page_updates_per_s or default_page_updates()
    return max(1, live_generation_threads()) / per_second


class _ThinkingTimer:
    """How long the model spent between <think> and </think> (shown on the thinking part)."""

    def __init__(self) -> None:
        self.started: float | None = None
        self.seconds: float | None = None

    def saw(self, text: str) -> None:
        if self.started is None and "<think>" in text:
            self.started = time.monotonic()
        if self.started is not None and self.seconds is None and "</think>" in text:
            self.seconds = round(time.monotonic() - self.started, 1)


def _params(context: AppContext, max_new_tokens, temperature, top_p, top_k, repetition_penalty,
            do_sample, seed, thinking) -> GenerationParams:
    params = params_from_settings(max_new_tokens, temperature, top_p, top_k, repetition_penalty,
                                  do_sample, seed, max_new_tokens_limit=context.settings.max_new_tokens)
    return replace(params, enable_thinking={"on": True, "off": False}.get(thinking),
                   alternatives=DEFAULT_ALTERNATIVES, report_waiting=True)


# --- small handlers ----------------------------------------------------------------
def _view(history: list[dict], state: list[dict] | None = None) -> tuple[list[dict], list[dict]]:
    """(chatbot, history) for a conversation; `state` keeps the stored one while streaming."""
    return shown_messages(history)[0], history if state is None else state


def _edited_text(value) -> str:
    if isinstance(value, list):
        value = next((v for v in value if isinstance(v, str) or isinstance(v, dict)), "")
    if isinstance(value, dict):
        value = value.get("text") or value.get("content") or ""
    return value if isinstance(value, str) else ""


def _switch(history: list[dict], step: int) -> tuple:
    history = history or []
    index = next((i for i in range(len(history) - 1, -1, -1) if variant_label(history[i])), None)
    if index is None:
        raise user_error(Message("chat.this_conversation_has_no_reply_with_variants_use"))
    switched = switch_variant(history, index, step)
    return *_view(switched), "", context_meter(switched)


def _whole(number) -> int:
    return int(number) if isinstance(number, (int, float)) and number == number else -1


def _last_reply_tokens(history: list[dict]) -> list:
    index = last_reply_index(history or [])
    return ((history[index].get("stats") or {}).get("tokens") or []) if index is not None else []


def _choices(found: list[tuple[str, float]]):
    return gr.update(choices=[(f"{text!r} {100 * p:.1f} %", text) for text, p in found], value=None)


@shows_user_errors
def _select_token(history: list[dict], event: gr.SelectData):
    position = event.index if isinstance(event.index, int) else -1
    return position, _choices(alternatives_at(_last_reply_tokens(history), position))


PROBABILITY_BANDS = ((0.9, "≥ 90 %"), (0.5, "50–90 %"), (0.1, "10–50 %"), (0.0, "< 10 %"))


def _token_view(history: list[dict], colour: bool):
    """The last reply token by token, each labelled with its probability band when colouring."""
    pieces = []
    for text, probability, _ in _last_reply_tokens(history):
        band = next(label for floor, label in PROBABILITY_BANDS if (probability or 0.0) >= floor)
        pieces.append((text, band if colour else None))
    return pieces


def _session(request: gr.Request | None) -> str:
    return getattr(request, "session_hash", None) or "anonymous"


def _idle():
    return gr.update(visible=True), gr.update(visible=False)


def _undo(past: list[dict]):
    """Remove the last exchange and put its message back in the box to edit."""
    past = past or []
    if not past:
        return [], [], gr.skip(), t("chat.nothing_to_undo"), ""
    cut = max((i for i, m in enumerate(past) if m["role"] == "user"), default=0)
    text = past[cut]["content"] if past[cut]["role"] == "user" else ""
    kept = past[:cut]
    return *_view(kept), text, "", context_meter(kept)


# --- the saved store -------------------------------------------------------------
def _settings_dict(values) -> dict:
    return dict(zip(SAVED_NAMES, values))


def _save(store, conversation_id, history, query, *settings):
    """Keep the conversation (and the settings it ran with) in the browser's store."""
    if not history and not conversation_id:
        return gr.skip(), gr.skip(), gr.skip()
    conversation = find_conversation(store, conversation_id) or new_conversation()
    conversation = {**conversation, "messages": history, "settings": _settings_dict(settings)}
    store = save_conversation(store, conversation)
    return store, conversation["id"], listing(store, query, conversation["id"])


def _list(store, query, conversation_id):
    return listing(store, query, conversation_id)


def _restore(store):
    """On page load: list the saved conversations and reopen the most recent one."""
    latest = latest_conversation(store)
    return listing(store, "", latest["id"] if latest else None), *opened_conversation(latest)


def _open(store, conversation_id):
    return opened_conversation(find_conversation(store, conversation_id))


def _new_chat(store, query):
    return listing(store, query, None), "", [], [], "", ""


@shows_user_errors
def _rename(store, conversation_id, title, query):
    store = rename_conversation(store, conversation_id, title)
    return store, listing(store, query, conversation_id), ""


def _delete(store, conversation_id, query):
    if not conversation_id:
        raise user_error(Message("chat.choose_a_saved_conversation_to_delete"))
    store = delete_conversation(store, conversation_id)
    return store, listing(store, query, None), "", [], [], "", t("chat.conversation_deleted")


# --- the model ------------------------------------------------------------------
def model_line(context: AppContext, loaded_description: str | None) -> str:
    backend = context.chat_backend
    if backend.name != "local":
        return t("chat.active_remote", model=backend.default_model or t("chat.remote_model"))
    name = loaded_description or context.chat_model.ref
    line = t("chat.active", model=name)
    if context.chat_model.ref == EMBEDDED_MODEL or context.chat_model.reason.startswith("offline"):
        line += f" — {in_reader_language(chat_model_reason(context))}"
    return line + ("" if loaded_description else t("chat.loads_on_first_message"))


def chat_model_reason(context: AppContext) -> Message:
    """Why this chat model is active, as a message (engine/model_choice.py words it in English)."""
    if context.chat_model.ref != context.settings.chat_model:
        return Message("app.reason_offline", {"model": context.settings.chat_model})
    return Message("app.reason_configured")



def _loaded_model_line(context: AppContext, ref: str | None):
    """The status line for `ref` if it is loaded now (no loading here), else unchanged."""
    if not context.chat_backend.is_ready(ref):
        return gr.skip()
    return model_line(context, context.chat_backend.prepare(ref))


@on_request_thread
@shows_user_errors
def _load_model(context: AppContext, ref: str, progress: gr.Progress) -> str:
    ref = (ref or "").strip()
    if not ref:
        raise user_error(Message("chat.choose_a_model_or_type_a_local_folder"))
    progress(0, desc=t("chat.loading_model", model=ref[:200]))
    description = context.chat_backend.prepare(ref, on_status=lambda s: progress(0, desc=in_reader_language(s)))
    line = t("chat.active", model=description)
    if ref == context.chat_model.ref and ref == EMBEDDED_MODEL:
        line += f" — {in_reader_language(chat_model_reason(context))}"
    return line

