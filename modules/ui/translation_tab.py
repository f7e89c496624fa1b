"""The translation tab (layout and event wiring only; the work is in modules.tasks.translation)."""

from __future__ import annotations

from collections.abc import Iterator

import gradio as gr

from modules.app_context import AppContext
from modules.engine.compute import on_request_thread
from modules.engine.gpu import gpu
from modules.tasks import translation
from modules.ui.errors import shows_user_errors

BATCH_HEADERS = ["Source", "Translation"]


def build(context: AppContext) -> None:
    settings = context.settings
    choices = translation.direction_choices(settings)
    first = choices[0][1] if choices else None

    with gr.Row(equal_height=True):
        # Custom values reach the logic, whose error says how to add a direction.
        direction = gr.Dropdown(
            choices, value=first, label="Direction", scale=4, allow_custom_value=True
        )
        swap = gr.Button("⇄ Swap", scale=1, min_width=80)
    model_note = gr.Markdown(_model_note(settings, first) if first else "")
    with gr.Row():
        source = gr.Textbox(
            label="Text", lines=8, max_lines=30, placeholder="Paste text of any length…"
        )
        output = gr.Textbox(
            label="Translation", lines=8, max_lines=30, interactive=False, buttons=["copy"]
        )
    with gr.Row():
        translate_button = gr.Button("Translate", variant="primary")
        gr.ClearButton([source, output])

    with gr.Accordion("Many texts at once", open=False):
        gr.Markdown("One text per line, typed here or in an uploaded `.txt` file (UTF-8).")
        with gr.Row():
            batch_text = gr.Textbox(label="Texts, one per line", lines=6)
            batch_file = gr.File(label=".txt file", file_types=[".txt"], type="filepath")
        batch_button = gr.Button("Translate all")
        batch_table = gr.Dataframe(headers=BATCH_HEADERS, interactive=False, wrap=True)
        batch_download = gr.File(label="Download (CSV)", interactive=False)

    @gpu
    @on_request_thread
    @shows_user_errors
    def translate(text: str, direction: str, progress=gr.Progress()) -> Iterator[str]:
        yield from translation.load_and_stream_translation(
            context.cache, settings, text, direction,
            on_status=lambda status: progress(None, desc=status),
            on_progress=lambda done, total: progress(
                (done, total), desc="Translating", unit="sentences"
            ),
        )

    @gpu
    @on_request_thread
    @shows_user_errors
    def translate_all(lines: str, file_path: str | None, direction: str, progress=gr.Progress()):
        result = translation.translate_all(
            context.cache, settings, lines, file_path, direction,
            on_status=lambda status: progress(None, desc=status),
            on_progress=lambda done, total: progress(
                (done, total), desc="Translating", unit="sentences"
            ),
        )
        if not result.sources:
            return [], None
        return result.rows(), str(translation.write_results_csv(result, direction))

    def swap_direction(direction: str, text: str, translated: str):
        reverse = translation.reversed_direction(direction or "")
        if reverse not in settings.translation_models:
            gr.Warning(
                f"No model for {translation.direction_label(reverse)}: set "
                f"{translation.env_var_for(reverse)} to a Hub id or a local model folder."
            )
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
        lambda d: _model_note(settings, d), direction, model_note,
        api_visibility="private", queue=False,
    )


def _model_note(settings, direction: str | None) -> str:
    """Which model a direction uses, and how to change it."""
    if not direction or direction not in settings.translation_models:
        return ""
    return (
        f"Model: `{settings.translation_models[direction]}` (loads on first use; "
        f"change it with `{translation.env_var_for(direction)}`)."
    )
