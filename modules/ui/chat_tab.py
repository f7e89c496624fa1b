"""The chat tab: layout and wiring. The work happens in `modules.tasks.chat`; the
handlers are in modules/ui/chat/handlers.py.

The conversation lives in a gr.State as messages with their stats and variants
(modules/tasks/chat/conversations.py); every saved conversation lives in the
browser (gr.BrowserState, encrypted with a fixed secret so a server restart does
not lose it) and is listed in the sidebar. Replies come from
`context.chat_backend` (a local model or a remote server), the same backend /v1 uses.
"""

from __future__ import annotations

from dataclasses import dataclass

import gradio as gr

from modules.app_context import AppContext
from modules.tasks.chat import CHAT_TAB_REPETITION_PENALTY, RANDOM_SEED, CancelRegistry, GenerationParams
from modules.tasks.chat.conversations import browser_secret, empty_store
from modules.tasks.chat.presets import DEFAULT_PRESET, preset_names
from modules.ui.chat import handlers
from modules.ui.chat.handlers import THINKING_CHOICES, model_line

DEFAULT_SYSTEM_PROMPT = "You are a helpful assistant."
DEFAULTS = GenerationParams()  # the one source of defaults, shared with /v1
STORE_KEY = "transformers-playground-chats"
EXAMPLES = [
    "请写一首赞美秋天的五言绝句",
    "What is the capital of France?",
    "Explain recursion to a ten-year-old, then show a short Python example.",
]


@dataclass
class ChatControls:
    """The tab's components, as the layout made them."""

    store: gr.BrowserState
    conversation_id: gr.State
    history: gr.State
    model: gr.Dropdown
    model_status: gr.Markdown
    chatbot: gr.Chatbot
    message: gr.Textbox
    send: gr.Button
    stop: gr.Button
    retry: gr.Button
    continue_: gr.Button
    previous_variant: gr.Button
    next_variant: gr.Button
    undo: gr.Button
    clear: gr.Button
    prefill: gr.Textbox
    status: gr.Markdown
    meter: gr.Markdown
    search: gr.Textbox
    conversations: gr.Radio
    new_chat: gr.Button
    new_title: gr.Textbox
    rename: gr.Button
    delete: gr.Button
    settings_inputs: list  # system prompt, model, the generation knobs, thinking (call order)
    preset: gr.Dropdown
    preset_name: gr.Textbox
    save_preset: gr.Button
    delete_preset: gr.Button
    inspect: gr.Button
    prompt_view: gr.HTML
    prompt_count: gr.Markdown
    export_format: gr.Radio
    export: gr.Button
    exported: gr.File
    import_file: gr.UploadButton
    copy_code: gr.Button
    code: gr.Code
    tokens_view: gr.HighlightedText
    colour: gr.Checkbox
    position: gr.Number
    alternatives: gr.Radio
    branch: gr.Button


def build(context: AppContext) -> None:
    controls = _layout(context)
    handlers.wire(context, controls, CancelRegistry())


def _layout(context: AppContext) -> ChatControls:
    settings = context.settings
    backend = context.chat_backend
    local = backend.name == "local"
    store = gr.BrowserState(empty_store(), storage_key=STORE_KEY, secret=browser_secret(settings))
    conversation_id, history = gr.State(""), gr.State([])
    with gr.Sidebar(label="Conversations", open=True, elem_id="chat-sidebar"):
        new_chat = gr.Button("➕ New chat", size="sm", elem_id="chat-new")
        search = gr.Textbox(placeholder="Search conversations", show_label=False, elem_id="chat-search")
        conversations = gr.Radio([], label="Saved in this browser", elem_id="chat-conversations")
        with gr.Row():
            new_title = gr.Textbox(placeholder="New name", show_label=False, scale=3, elem_id="chat-title")
            rename = gr.Button("Rename", size="sm", scale=1, min_width=60)
        delete = gr.Button("🗑️ Delete this conversation", size="sm", variant="stop")
    with gr.Row(equal_height=True):
        model = gr.Dropdown(
            choices=context.chat_model_choices() if local else [backend.default_model or "remote"],
            value=context.chat_model.ref if local else (backend.default_model or "remote"),
            label="Chat model", allow_custom_value=local, interactive=local,
            info="A configured model, the embedded one, or a local folder / .gguf path.",
            scale=2,
        )
        model_status = gr.Markdown(model_line(context, None), elem_id="chat-model-status")
    chatbot = gr.Chatbot(
        label="Conversation", height=520, buttons=["copy", "copy_all"], editable="all",
        placeholder="Ask anything. Replies stream as they are written; **Stop** ends them. "
                    "Click ✏️ on any message to edit it.",
        feedback_options=None, elem_id="chat-conversation",
    )
    meter = gr.Markdown("", elem_id="chat-context-meter")
    with gr.Row(equal_height=True):
        message = gr.Textbox(
            placeholder="Type a message (Enter sends, Shift+Enter starts a new line)",
            label="Message", show_label=False, lines=1, max_lines=8, scale=8, autofocus=True,
        )
        send = gr.Button("Send", variant="primary", scale=1, min_width=80)
        stop = gr.Button("Stop", variant="stop", scale=1, min_width=80, visible=False)
    with gr.Row():
        retry = gr.Button("🔄 Retry", size="sm")
        continue_ = gr.Button("⏩ Continue", size="sm")
        previous_variant = gr.Button("‹ Previous reply", size="sm", elem_id="chat-variant-previous")
        next_variant = gr.Button("Next reply ›", size="sm", elem_id="chat-variant-next")
        undo = gr.Button("↩️ Undo", size="sm")
        clear = gr.Button("🗑️ Clear", size="sm")
    prefill = gr.Textbox("", label="Start the reply with", lines=1, max_lines=3,
                         placeholder="Optional: the model's reply begins with this text")
    status = gr.Markdown("", elem_id="chat-status")
    gr.Examples(EXAMPLES, inputs=[message], label="Try")

    with gr.Accordion("Branch from a token", open=False, elem_id="chat-branching"):
        colour = gr.Checkbox(False, label="Colour tokens by probability")
        tokens_view = gr.HighlightedText(
            label="The last reply, token by token: click one to see the model's alternatives",
            combine_adjacent=False, show_legend=True, elem_id="chat-tokens",
            color_map={"≥ 90 %": "#c8e6c9", "50–90 %": "#fff59d", "10–50 %": "#ffcc80", "< 10 %": "#ef9a9a"},
        )
        with gr.Row(equal_height=True):
            position = gr.Number(-1, label="Token", precision=0, minimum=-1, scale=1)
            alternatives = gr.Radio([], label="The model's top alternatives there", scale=4,
                                    elem_id="chat-alternatives")
            branch = gr.Button("🌿 Branch from here", size="sm", scale=1)
    with gr.Accordion("Inspect the prompt, export, import", open=False):
        with gr.Row():
            inspect = gr.Button("🔍 Show the prompt the model gets next", size="sm")
            export_format = gr.Radio(["Markdown", "JSON"], value="Markdown", label="Export as",
                                     show_label=False)
            export = gr.Button("⬇️ Export this conversation", size="sm")
            import_file = gr.UploadButton("⬆️ Import a JSON conversation", file_types=[".json"],
                                          size="sm")
            copy_code = gr.Button("📋 Copy the last turn as code", size="sm")
        code = gr.Code(language="python", label="Python that reproduces the last turn",
                       elem_id="chat-code", visible=True)
        prompt_count = gr.Markdown("", elem_id="chat-prompt-count")
        prompt_view = gr.HTML("", elem_id="chat-prompt-view")
        exported = gr.File(label="Exported", visible=True, interactive=False, elem_id="chat-exported")
    with gr.Accordion("System prompt and generation settings", open=False):
        with gr.Row(equal_height=True):
            preset = gr.Dropdown(preset_names(None), value=DEFAULT_PRESET, label="Preset", scale=2,
                                 info="A system prompt and sampling settings; yours are saved with the chats.")
            preset_name = gr.Textbox(label="Save the settings as", placeholder="Preset name", scale=2)
            save_preset = gr.Button("Save preset", size="sm", scale=1)
            delete_preset = gr.Button("Delete preset", size="sm", scale=1)
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
            thinking = gr.Radio(
                THINKING_CHOICES, value=THINKING_CHOICES[0], label="Thinking",
                info="For templates that read enable_thinking (Qwen3, SmolLM3); others ignore it.",
            )
    settings_inputs = [system_prompt, model, max_new_tokens, temperature, top_p, top_k,
                       repetition_penalty, do_sample, seed, thinking]
    return ChatControls(
        store, conversation_id, history, model, model_status, chatbot, message, send, stop,
        retry, continue_, previous_variant, next_variant, undo, clear, prefill, status, meter,
        search, conversations, new_chat, new_title, rename, delete, settings_inputs,
        preset, preset_name, save_preset, delete_preset, inspect, prompt_view, prompt_count,
        export_format, export, exported, import_file, copy_code, code, tokens_view, colour, position, alternatives,
        branch,
    )
