"""The chat tab: layout, handlers and wiring. The work happens in `modules.tasks.chat`.

The conversation lives in a gr.State as OpenAI-style messages (plus each
reply's usage line); the Chatbot shows it with the usage line under each reply.
Replies come from `context.chat_backend` (a local model or a remote server,
chosen at start-up), the same backend /v1 uses. Send is the `chat` API endpoint;
Stop reaches the running generation through a per-session cancel event, and a
closed tab or client closes the generator, which stops generation too.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass

import gradio as gr

from modules.app_context import AppContext
from modules.config import EMBEDDED_MODEL
from modules.engine.compute import on_request_thread
from modules.engine.gpu import gpu
from modules.errors import PlaygroundError
from modules.tasks.chat import (
    CHAT_TAB_REPETITION_PENALTY,
    RANDOM_SEED,
    CancelRegistry,
    ChatChunk,
    GenerationParams,
    conversation_messages,
    format_usage,
    params_from_settings,
)
from modules.ui.errors import shows_user_errors, user_error

DEFAULT_SYSTEM_PROMPT = "You are a helpful assistant."
DEFAULTS = GenerationParams()  # the one source of defaults, shared with /v1
# The page gets the growing reply at most this often: every update costs the server
# (and the browser) work that competes with generation for the CPU, and 20 updates a
# second look as smooth as one per token (benchmarks/decode_speed.py measures both).
UI_UPDATE_INTERVAL_S = 0.05
EXAMPLES = [
    "请写一首赞美秋天的五言绝句",
    "What is the capital of France?",
    "Explain recursion to a ten-year-old, then show a short Python example.",
]


@dataclass
class ChatControls:
    """The tab's components, as the layout made them."""

    history: gr.State
    model: gr.Dropdown
    model_status: gr.Markdown
    chatbot: gr.Chatbot
    message: gr.Textbox
    send: gr.Button
    stop: gr.Button
    retry: gr.Button
    undo: gr.Button
    clear: gr.Button
    status: gr.Markdown
    settings_inputs: list  # system prompt, model, then the generation knobs in call order


def build(context: AppContext) -> None:
    controls = _layout(context)
    _wire(context, controls, CancelRegistry())


# --- layout --------------------------------------------------------------------
def _layout(context: AppContext) -> ChatControls:
    settings = context.settings
    backend = context.chat_backend
    local = backend.name == "local"
    history = gr.State([])
    with gr.Row(equal_height=True):
        model = gr.Dropdown(
            choices=context.chat_model_choices() if local else [backend.default_model or "remote"],
            value=context.chat_model.ref if local else (backend.default_model or "remote"),
            label="Chat model", allow_custom_value=local, interactive=local,
            info="A configured model, the embedded one, or a local folder / .gguf path.",
            scale=2,
        )
        model_status = gr.Markdown(_model_line(context, None), elem_id="chat-model-status")
    chatbot = gr.Chatbot(
        label="Conversation", height=520, buttons=["copy", "copy_all"],
        placeholder="Ask anything. Replies stream as they are written; **Stop** ends them.",
        feedback_options=None,
    )
    with gr.Row(equal_height=True):
        message = gr.Textbox(
            placeholder="Type a message (Enter sends, Shift+Enter starts a new line)",
            label="Message", show_label=False, lines=1, max_lines=8, scale=8, autofocus=True,
        )
        send = gr.Button("Send", variant="primary", scale=1, min_width=80)
        stop = gr.Button("Stop", variant="stop", scale=1, min_width=80, visible=False)
    with gr.Row():
        retry = gr.Button("🔄 Retry", size="sm")
        undo = gr.Button("↩️ Undo", size="sm")
        clear = gr.Button("🗑️ Clear", size="sm")
    status = gr.Markdown("", elem_id="chat-status")
    gr.Examples(EXAMPLES, inputs=[message], label="Try")

    with gr.Accordion("System prompt and generation settings", open=False):
        system_prompt = gr.Textbox(DEFAULT_SYSTEM_PROMPT, label="System prompt", lines=2)
        with gr.Row():
            max_new_tokens = gr.Slider(
                1, settings.max_new_tokens, step=1, label="Max new tokens",
                value=min(DEFAULTS.max_new_tokens, settings.max_new_tokens),
            )
            temperature = gr.Slider(0.0, 2.0, value=DEFAULTS.temperature, step=0.05, label="Temperature")
            top_p = gr.Slider(0.05, 1.0, value=DEFAULTS.top_p, step=0.05, label="Top-p")
        with gr.Row():
            top_k = gr.Slider(0, 200, value=DEFAULTS.top_k, step=1, label="Top-k (0 = off)")
            repetition_penalty = gr.Slider(
                0.5, 2.0, value=CHAT_TAB_REPETITION_PENALTY, step=0.05, label="Repetition penalty"
            )
            do_sample = gr.Checkbox(DEFAULTS.do_sample, label="Sample (off = greedy)")
            seed = gr.Number(  # Gradio turns a blank number box into 0, so -1 means random
                RANDOM_SEED, label="Seed (-1 = random)", precision=0, minimum=RANDOM_SEED,
                info="Same seed and settings give the same reply.",
            )
    settings_inputs = [system_prompt, model, max_new_tokens, temperature, top_p, top_k,
                       repetition_penalty, do_sample, seed]
    return ChatControls(history, model, model_status, chatbot, message, send, stop, retry,
                        undo, clear, status, settings_inputs)


# --- wiring --------------------------------------------------------------------
def _wire(context: AppContext, c: ChatControls, cancels: CancelRegistry) -> None:
    """Connect the components to the handlers; the API names are the public contract."""

    def respond(
        message: str, history: list[dict], system_prompt: str, model: str,
        max_new_tokens: float, temperature: float, top_p: float, top_k: float,
        repetition_penalty: float, do_sample: bool, seed: float | None = None,
        request: gr.Request = None,
    ) -> Iterator[tuple]:
        """Send a message and stream the reply. The conversation so far is kept per session."""
        knobs = (max_new_tokens, temperature, top_p, top_k, repetition_penalty, do_sample, seed)
        yield from _stream_reply(context, cancels, _session(request), history, message,
                                 system_prompt, model, knobs)

    def regenerate(
        history: list[dict], system_prompt: str, model: str,
        max_new_tokens: float, temperature: float, top_p: float, top_k: float,
        repetition_penalty: float, do_sample: bool, seed: float | None = None,
        request: gr.Request = None,
    ) -> Iterator[tuple]:
        """Drop the last reply and write a new one for the same message."""
        if not history or history[-1]["role"] != "assistant":
            raise user_error("There is no reply to retry yet.")
        knobs = (max_new_tokens, temperature, top_p, top_k, repetition_penalty, do_sample, seed)
        yield from _stream_reply(context, cancels, _session(request), history[:-2],
                                 history[-2]["content"], system_prompt, model, knobs)

    def arm(request: gr.Request):
        cancels.arm(_session(request))
        return gr.update(visible=False), gr.update(visible=True)

    def stop_generation(request: gr.Request) -> None:
        cancels.stop(_session(request))

    def clear_chat(request: gr.Request):
        cancels.stop(_session(request))
        cancels.arm(_session(request))
        return [], [], "", ""

    def load_model(ref: str, progress=gr.Progress()) -> str:
        return _load_model(context, ref, progress)

    busy = [c.send, c.stop]
    reply_outputs = [c.chatbot, c.history, c.message, c.status]
    sent = gr.on([c.message.submit, c.send.click], arm, outputs=busy, queue=False,
                 api_visibility="private")
    chat_event = sent.then(
        respond, [c.message, c.history, *c.settings_inputs], reply_outputs,
        api_name="chat", concurrency_id="chat", show_progress="minimal",
    )
    chat_event.then(_idle, outputs=busy, queue=False, api_visibility="private")
    retry_event = c.retry.click(arm, outputs=busy, queue=False, api_visibility="private").then(
        regenerate, [c.history, *c.settings_inputs], reply_outputs,
        api_name="retry", concurrency_id="chat", show_progress="minimal",
    )
    retry_event.then(_idle, outputs=busy, queue=False, api_visibility="private")
    # No output: the reply's own last update says "finish: cancelled" (a "Stopping…"
    # written here could land after it and stay).
    c.stop.click(stop_generation, queue=False, api_name="stop")
    # Undo and Clear rewrite the conversation, so a reply still streaming is dropped.
    c.undo.click(_undo, [c.history], reply_outputs, queue=False,
                 api_name="undo", cancels=[chat_event, retry_event]).then(
        _idle, outputs=busy, queue=False, api_visibility="private")
    c.clear.click(clear_chat, outputs=reply_outputs, queue=False,
                  api_name="clear", cancels=[chat_event, retry_event]).then(
        _idle, outputs=busy, queue=False, api_visibility="private")
    if context.chat_backend.name == "local":
        c.model.change(load_model, [c.model], [c.model_status], api_name="load_chat_model",
                       concurrency_id="load")
        for event in (chat_event, retry_event):  # the first message loaded the model: say so
            event.then(lambda ref: _loaded_model_line(context, ref), [c.model], [c.model_status],
                       queue=False, api_visibility="private")


# --- handlers (plain functions; no layout) -----------------------------------
def _session(request: gr.Request | None) -> str:
    return getattr(request, "session_hash", None) or "anonymous"


def _idle():
    return gr.update(visible=True), gr.update(visible=False)


def _undo(past: list[dict]):
    """Remove the last exchange and put its message back in the box to edit."""
    if not past:
        return [], [], gr.skip(), "Nothing to undo."
    cut = max((i for i, m in enumerate(past) if m["role"] == "user"), default=0)
    text = past[cut]["content"] if past[cut]["role"] == "user" else ""
    kept = past[:cut]
    return _display(kept), kept, text, ""


def _model_line(context: AppContext, loaded_description: str | None) -> str:
    backend = context.chat_backend
    if backend.name != "local":
        return f"Active: **{backend.default_model or 'remote model'}** via a remote server."
    name = loaded_description or context.chat_model.ref
    line = f"Active: **{name}**"
    if context.chat_model.ref == EMBEDDED_MODEL or context.chat_model.reason.startswith("offline"):
        line += f" — {context.chat_model.reason}"
    return line + ("" if loaded_description else " (loads on first message)")


def _loaded_model_line(context: AppContext, ref: str | None):
    """The status line for `ref` if it is loaded now (no loading here), else unchanged."""
    backend = context.chat_backend
    if not backend.is_ready(ref):
        return gr.skip()
    return _model_line(context, backend.prepare(ref))


@on_request_thread
@shows_user_errors
def _load_model(context: AppContext, ref: str, progress: gr.Progress) -> str:
    ref = (ref or "").strip()
    if not ref:
        raise user_error("Choose a model or type a local folder / .gguf path.")
    progress(0, desc=f"Loading {ref[:200]}…")
    description = context.chat_backend.prepare(ref, on_status=lambda s: progress(0, desc=s))
    line = f"Active: **{description}**"
    if ref == context.chat_model.ref and ref == EMBEDDED_MODEL:
        line += f" — {context.chat_model.reason}"
    return line


def _display(past: list[dict]) -> list[dict]:
    """Chatbot messages: each reply with its usage line as a second, quieter part."""
    shown = []
    for m in past:
        if m["role"] == "assistant" and m.get("usage"):
            shown.append({"role": "assistant", "content": [m["content"], f"<sub>{m['usage']}</sub>"]})
        else:
            shown.append({"role": m["role"], "content": m["content"]})
    return shown


@gpu
@on_request_thread
@shows_user_errors
def _stream_reply(context: AppContext, cancels: CancelRegistry, session: str, past: list[dict],
                  text: str, system: str, model_ref: str, knobs: tuple) -> Iterator[tuple]:
    """Yield (chatbot, history, textbox, status) as the reply grows."""
    text = text if isinstance(text, str) else ""
    past = list(past or [])
    if not text.strip():
        raise user_error("Type a message first.")
    params = params_from_settings(*knobs, max_new_tokens_limit=context.settings.max_new_tokens)
    messages = conversation_messages(past, system, text)
    asked = past + [{"role": "user", "content": text}]
    yield _display(asked) + [{"role": "assistant", "content": "…"}], past, "", ""
    backend = context.chat_backend
    loading = not backend.is_ready(model_ref)
    if loading:
        yield gr.skip(), gr.skip(), gr.skip(), f"Loading {model_ref}… (first use)"
    cancel = cancels.begin(session)
    reply = None
    chunks = None
    try:
        # A remote backend serves the model it was configured with; the dropdown only shows it.
        chunks = backend.stream(messages, params, cancel,
                                model=model_ref if backend.name == "local" else None)
        shown_at = 0.0
        for chunk in chunks:
            reply = chunk
            if chunk.finish_reason is None and time.monotonic() - shown_at >= UI_UPDATE_INTERVAL_S:
                shown_at = time.monotonic()
                answer = {"role": "assistant", "content": chunk.text}
                # Text means the model has loaded: clear the "Loading…" line.
                status = "" if loading else gr.skip()
                loading = False
                yield _display(asked) + [answer], asked + [answer], gr.skip(), status
        answer = _final_answer(reply)
        notice = reply.notice if reply else None
        line = (f"⚠️ {notice} " if notice else "") + answer["usage"]
        yield _display(asked + [answer]), asked + [answer], gr.skip(), line
    except PlaygroundError as error:
        yield _display(past), past, text, f"⚠️ {error}"
        raise
    finally:
        if chunks is not None:
            chunks.close()  # a client that went away: stop generating now
        cancels.end(session, cancel)


def _final_answer(reply: ChatChunk | None) -> dict:
    if reply is None or reply.usage is None:
        return {"role": "assistant", "content": reply.text if reply else "", "usage": "finish: cancelled"}
    return {"role": "assistant", "content": reply.text,
            "usage": format_usage(reply.usage, reply.finish_reason)}
