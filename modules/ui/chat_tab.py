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
from modules.ui.i18n import _

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
    with gr.Sidebar(label=_("chat.conversations"), open=True, elem_id="chat-sidebar"):
        new_chat = gr.Button(_("chat.new_chat"), size="sm", elem_id="chat-new")
        search = gr.Textbox(placeholder=_("chat.search_conversations"), show_label=False, elem_id="chat-search")
        conversations = gr.Radio([], label=_("chat.saved_in_this_browser"), elem_id="chat-conversations")
        with gr.Row():
            new_title = gr.Textbox(placeholder=_("chat.new_name"), show_label=False, scale=3, elem_id="chat-title")
            rename = gr.Button(_("chat.rename"), size="sm", scale=1, min_width=60)
        delete = gr.Button(_("chat.delete_this_conversation"), size="sm", variant="stop")
    with gr.Row(equal_height=True):
        model = gr.Dropdown(
            choices=context.chat_model_choices() if local else [backend.default_model or "remote"],
            value=context.chat_model.ref if local else (backend.default_model or "remote"),
            label=_("chat.chat_model"), allow_custom_value=local, interactive=local,
            info=_("chat.a_configured_model_the_embedded"),
            scale=2,
        )
        model_status = gr.Markdown(lambda: model_line(context, None),  # per page: its language
                                   elem_id="chat-model-status")
    chatbot = gr.Chatbot(
        label=_("chat.conversation"), height=520, buttons=["copy", "copy_all"], editable="all",
        placeholder=_("chat.ask_anything_replies_stream_as"),
        feedback_options=None, elem_id="chat-conversation",
    )
    meter = gr.Markdown("", elem_id="chat-context-meter")
    with gr.Row(equal_height=True):
        message = gr.Textbox(
            placeholder=_("chat.type_a_message_enter_sends"),
            label=_("chat.message"), show_label=False, lines=1, max_lines=8, scale=8, autofocus=True,
        )
        send = gr.Button(_("chat.send"), variant="primary", scale=1, min_width=80)
        stop = gr.Button(_("chat.stop"), variant="stop", scale=1, min_width=80, visible=False)
    with gr.Row():
        retry = gr.Button(_("chat.retry"), size="sm")
        continue_ = gr.Button(_("chat.continue"), size="sm")
        previous_variant = gr.Button(_("chat.previous_reply"), size="sm", elem_id="chat-variant-previous")
        next_variant = gr.Button(_("chat.next_reply"), size="sm", elem_id="chat-variant-next")
        undo = gr.Button(_("chat.undo"), size="sm")
        clear = gr.Button(_("chat.clear"), size="sm")
    prefill = gr.Textbox("", label=_("chat.start_the_reply_with"), lines=1, max_lines=3,
                         placeholder=_("chat.optional_the_model_s_reply"))
    status = gr.Markdown("", elem_id="chat-status")
    gr.Examples(EXAMPLES, inputs=[message], label=_("chat.try"))

    with gr.Accordion(_("chat.branch_from_a_token"), open=False, elem_id="chat-branching"):
        colour = gr.Checkbox(False, label=_("chat.colour_tokens_by_probability"))
        tokens_view = gr.HighlightedText(
            label=_("chat.the_last_reply_token_by"),
            combine_adjacent=False, show_legend=True, elem_id="chat-tokens",
            color_map={"≥ 90 %": "#c8e6c9", "50–90 %": "#fff59d", "10–50 %": "#ffcc80", "< 10 %": "#ef9a9a"},
        )
        with gr.Row(equal_height=True):
            position = gr.Number(-1, label=_("chat.token"), precision=0, minimum=-1, scale=1)
            alternatives = gr.Radio([], label=_("chat.the_model_s_top_alternatives"), scale=4,
                                    elem_id="chat-alternatives")
            branch = gr.Button(_("chat.branch_from_here"), size="sm", scale=1)
    with gr.Accordion(_("chat.inspect_the_prompt_export_import"), open=False):
        with gr.Row():
            inspect = gr.Button(_("chat.show_the_prompt_the_model"), size="sm")
            export_format = gr.Radio(["Markdown", "JSON"], value="Markdown", label=_("chat.export_as"),
                                     show_label=False)
            export = gr.Button(_("chat.export_this_conversation"), size="sm")
            import_file = gr.UploadButton(_("chat.import_a_json_conversation"), file_types=[".json"],
                                          size="sm")
            copy_code = gr.Button(_("chat.copy_the_last_turn_as"), size="sm")
        code = gr.Code(language="python", label=_("chat.python_that_reproduces_the_last"),
                       elem_id="chat-code", visible=True)
        prompt_count = gr.Markdown("", elem_id="chat-prompt-count")
        prompt_view = gr.HTML("", elem_id="chat-prompt-view")
        exported = gr.File(label=_("chat.exported"), visible=True, interactive=False, elem_id="chat-exported")
    with gr.Accordion(_("chat.system_prompt_and_generation_settings"), open=False):
        with gr.Row(equal_height=True):
            preset = gr.Dropdown(preset_names(None), value=DEFAULT_PRESET, label=_("chat.preset"), scale=2,
                                 info=_("chat.a_system_prompt_and_sampling"))
            preset_name = gr.Textbox(label=_("chat.save_the_settings_as"), placeholder=_("chat.preset_name"), scale=2)
            save_preset = gr.Button(_("chat.save_preset"), size="sm", scale=1)
            delete_preset = gr.Button(_("chat.delete_preset"), size="sm", scale=1)
        system_prompt = gr.Textbox(DEFAULT_SYSTEM_PROMPT, label=_("chat.system_prompt"), lines=2)
        with gr.Row():
            max_new_tokens = gr.Slider(
                1, settings.max_new_tokens, step=1, label=_("chat.max_new_tokens"),
                value=min(DEFAULTS.max_new_tokens, settings.max_new_tokens),
            )
            temperature = gr.Slider(0.0, 2.0, value=DEFAULTS.temperature, step=0.05, label=_("chat.temperature"))
            top_p = gr.Slider(0.05, 1.0, value=DEFAULTS.top_p, step=0.05, label=_("chat.top_p"))
        with gr.Row():
            top_k = gr.Slider(0, 200, value=DEFAULTS.top_k, step=1, label=_("chat.top_k_0_off"))
            repetition_penalty = gr.Slider(
                0.5, 2.0, value=CHAT_TAB_REPETITION_PENALTY, step=0.05, label=_("chat.repetition_penalty")
            )
            do_sample = gr.Checkbox(DEFAULTS.do_sample, label=_("chat.sample_off_greedy"))
            seed = gr.Number(  # Gradio turns a blank number box into 0, so -1 means random
                RANDOM_SEED, label=_("chat.seed_1_random"), precision=0, minimum=RANDOM_SEED,
                info=_("chat.same_seed_and_settings_give"),
            )
            thinking = gr.Radio(
                [(_(f"chat.thinking_{choice.split()[-1]}"), choice) for choice in THINKING_CHOICES],
                value=THINKING_CHOICES[0], label=_("chat.thinking"),
                info=_("chat.for_templates_that_read_enable"),
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
