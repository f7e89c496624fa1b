"""The translation tab (layout and event wiring only; the work is in modules.tasks.translation)."""

from __future__ import annotations

from collections.abc import Iterator

import gradio as gr
import pandas as pd

from modules.app_context import AppContext
from modules.engine.compute import on_request_thread
from modules.engine.gpu import gpu
from modules.messages import text
from modules.tasks import translation
from modules.ui.errors import shows_user_errors
from modules.ui.i18n import LanguageSwitch, _, in_reader_language, t
from modules.ui.i18n import reader_language as i18n_language

BATCH_HEADER_KEYS = ["translation.header_source", "translation.header_translation"]
# The course notes' first lesson, both ways; the Chinese one splits into three sentences.
EXAMPLES = [
    ("早上好！我很好，谢谢。今天我们学习大语言模型怎样生成文字。", "zh-en"),
    ("Good morning! I am good, thank you. Today we learn how a language model writes.", "en-zh"),
]


def build(context: AppContext, switch: LanguageSwitch) -> None:
    settings = context.settings
    choices = translation.direction_choices(settings)
    first = choices[0][1] if choices else None

    with gr.Row(equal_height=True):
        # Custom values reach the logic, whose error says how to add a direction.
        direction = gr.Dropdown(
            choices, value=first, label=_("translation.direction"), scale=4,
            allow_custom_value=True, elem_id="translation-direction",
        )
        swap = gr.Button(_("translation.swap"), scale=1, min_width=80)
    model_note = gr.Markdown(_model_note(settings, first) if first else "")
    with gr.Row():
        source = gr.Textbox(label=_("translation.text"), lines=8, max_lines=30,
                            placeholder=_("translation.placeholder"))
        output = gr.Textbox(label=_("translation.output"), lines=8, max_lines=30,
                            interactive=False, buttons=["copy"])
    with gr.Row():
        translate_button = gr.Button(_("translation.translate"), variant="primary")
        gr.ClearButton([source, output], value=_("common.clear"))

    examples = [[text, d] for text, d in EXAMPLES if d in settings.translation_models]
    if examples:  # examples run nothing: a click fills the text and direction
        gr.Examples(examples, [source, direction], label=_("translation.examples"),
                    example_labels=[f"{d} · {text}" for text, d in examples])  # no column headers

    with gr.Accordion(_("translation.batch"), open=False):
        gr.Markdown(_("translation.batch_help"))
        with gr.Row():
            batch_text = gr.Textbox(label=_("translation.batch_lines"), lines=6)
            batch_file = gr.File(label=_("translation.batch_file"), file_types=[".txt"],
                                 type="filepath")
        batch_button = gr.Button(_("translation.translate_all"))
        batch_table = gr.Dataframe(headers=_batch_headers("en"), interactive=False, wrap=True)
        batch_download = gr.File(label=_("translation.download"), interactive=False)

    def localize(language: str, chosen: str | None) -> tuple[gr.Dropdown, str, gr.Dataframe]:
        """The texts the server writes, in the reader's language."""
        return (gr.Dropdown(choices=translation.direction_choices(settings, language)),
                _model_note(settings, chosen, language),
                gr.Dataframe(headers=_batch_headers(language)))

    switch.on_language_change(localize, [direction, model_note, batch_table], [direction])

    @gpu
    @on_request_thread
    @shows_user_errors
    def translate(text: str, direction: str, progress=gr.Progress()) -> Iterator[str]:
        yield from translation.load_and_stream_translation(
            context.cache, settings, text, direction,
            on_status=lambda status: progress(None, desc=in_reader_language(status)),
            on_progress=_progress_reporter(progress),
        )

    @gpu
    @on_request_thread
    @shows_user_errors
    def translate_all(lines: str, file_path: str | None, direction: str, progress=gr.Progress()):
        result = translation.translate_all(
            context.cache, settings, lines, file_path, direction,
            on_status=lambda status: progress(None, desc=in_reader_language(status)),
            on_progress=_progress_reporter(progress),
        )
        if not result.sources:
            return [], None
        table = pd.DataFrame(result.rows(), columns=_batch_headers())  # headers in the reader's language
        return table, str(translation.write_results_csv(result, direction, file_path))

    def swap_direction(direction: str, text: str, translated: str):
        reverse = translation.reversed_direction(direction or "")
        if reverse not in settings.translation_models:
            gr.Warning(t("translation.no_model_for_swap",
                         direction=translation.DirectionNames((reverse,)),
                         variable=translation.env_var_for(reverse)))
            return gr.skip(), gr.skip(), gr.skip()
        if not (translated or "").strip():
            return reverse, gr.skip(), gr.skip()
        return reverse, translated, text  # the old text is the new text's translation

    translate_button.click(
        translate, [source, direction], output, api_name="translate", show_progress_on=output
    )
    batch_button.click(
        translate_all, [batch_text, batch_file, direction], [batch_table, batch_download],
        api_name="translate_batch",
    )
    swap.click(
        swap_direction, [direction, source, output], [direction, source, output],
        api_visibility="private", queue=False,
    )
    direction.change(
        lambda d: _model_note(settings, d, i18n_language()), direction, model_note,
        api_visibility="private", queue=False,
    )


def _batch_headers(language: str | None = None) -> list[str]:
    return [text(key, language or i18n_language()) for key in BATCH_HEADER_KEYS]


def _progress_reporter(progress: gr.Progress):
    """Progress in sentences, worded for the reader (read once, on the request's thread)."""
    desc, unit = t("translation.progress"), t("translation.progress_unit")
    return lambda done, total: progress((done, total), desc=desc, unit=unit)


def _model_note(settings, direction: str | None, language: str = "en") -> str:
    """Which model a direction uses, and how to change it."""
    if not direction or direction not in settings.translation_models:
        return ""
    return text("translation.model_note", language, model=settings.translation_models[direction],
                variable=translation.env_var_for(direction))
