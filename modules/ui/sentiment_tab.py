"""The sentiment tab (layout and event wiring; the work is in modules.tasks.sentiment and
modules.tasks.zero_shot).

Two modes share one layout: a sequence-classification model, or zero-shot labels scored
by the chat model (which works offline on the embedded model). Offline without the
configured classifier on this machine, zero-shot is preselected.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import gradio as gr
import pandas as pd

from modules.tasks import sentiment
from modules.tasks import zero_shot
from modules.app_context import AppContext
from modules.ui.errors import user_error
from modules.errors import PlaygroundError
from modules.engine.gpu import gpu
from modules.engine.model_cache import ModelKind
from modules.engine.model_choice import available_locally
from modules.tasks.sentiment import Classification

CLASSIFIER = "Classifier model"
ZERO_SHOT = "Zero-shot (chat model, your labels)"
EXAMPLES = [
    "I loved every minute of this film; the cast is wonderful.",
    "The update made the app slow, and support never answered.",
    "The package arrived on Tuesday.",
]


def build(context: AppContext) -> None:
    settings = context.settings
    classifier_missing = settings.offline and not available_locally(settings.sentiment_model)
    start_mode = ZERO_SHOT if classifier_missing else CLASSIFIER

    mode = gr.Radio([CLASSIFIER, ZERO_SHOT], value=start_mode, label="Mode")
    gr.Markdown(_mode_note(context, classifier_missing), elem_id="sentiment-mode-note")
    with gr.Row():
        model_ref = gr.Textbox(
            settings.sentiment_model, label="Classifier (Hub id or local folder)",
            visible=start_mode == CLASSIFIER, scale=3,
        )
        labels = gr.Textbox(
            ", ".join(zero_shot.DEFAULT_LABELS), label="Labels, comma-separated",
            info="e.g. positive, negative, neutral — or bug report, feature request, praise",
            visible=start_mode == ZERO_SHOT, scale=3,
        )
        calibrate = gr.Checkbox(
            True, label="Calibrate (divide out the model's bias toward some labels)",
            visible=start_mode == ZERO_SHOT, scale=1,
        )

    with gr.Tab("One text"):
        text = gr.Textbox(label="Text", lines=4, max_lines=20, placeholder="Type or paste text…")
        with gr.Row():
            # As switch_mode leaves it: word colouring is a classifier-mode feature.
            explain = gr.Checkbox(
                True, label=_explain_label(start_mode == ZERO_SHOT),
                interactive=start_mode == CLASSIFIER,
            )
            analyse_button = gr.Button("Analyse", variant="primary")
        gr.Examples(EXAMPLES, inputs=[text], label="Try")
        scores = gr.Label(label="Scores (all labels)")
        why = gr.HighlightedText(
            label="Why (red: the word supports the top label, purple: it argues against it)",
            show_legend=False, show_inline_category=False, visible=start_mode == CLASSIFIER,
        )
        notice = gr.Markdown("", elem_id="sentiment-notice")

    with gr.Tab("Many texts"):
        gr.Markdown("One text per line, or a UTF-8 CSV file (pick the column holding the texts).")
        with gr.Row():
            lines = gr.Textbox(label="Texts, one per line", lines=6)
            with gr.Column():
                csv_file = gr.File(label="CSV file", file_types=[".csv"], type="filepath")
                column = gr.Dropdown(
                    [], label="Text column", interactive=True, allow_custom_value=True,
                    info="Guessed when a file is chosen; change it if needed.",
                )
        batch_button = gr.Button("Analyse all", variant="primary")
        table = gr.Dataframe(
            headers=list(sentiment.RESULT_COLUMNS), interactive=False, wrap=True,
            label="Results",
        )
        chart = gr.BarPlot(x="label", y="count", title="Label distribution", sort="-y")
        download = gr.File(label="Download results (CSV)", interactive=False)

    def classify_texts(texts, mode, model_ref, labels, calibrate, progress) -> list[Classification]:
        def on_status(status: str) -> None:
            progress(None, desc=status)

        def on_progress(done: int, total: int) -> None:
            progress((done, total), desc="Scoring", unit="texts")

        if mode == ZERO_SHOT:
            chat_model = context.cache.get(context.chat_model.ref, ModelKind.CAUSAL_LM, on_status)
            return zero_shot.zero_shot(
                chat_model, texts, labels, calibrate=bool(calibrate),
                max_text_tokens=min(zero_shot.MAX_TEXT_TOKENS, settings.max_input_tokens),
                on_progress=on_progress,
            )
        classifier = sentiment.load_classifier(context.cache, model_ref, on_status)
        return sentiment.classify(classifier, texts, on_progress=on_progress)

    @gpu
    def analyse(text, mode, model_ref, labels, calibrate, explain, progress=gr.Progress()):
        try:
            text = sentiment.clean_text(text)
            if mode == ZERO_SHOT:
                zero_shot.parse_labels(labels)  # bad labels fail before any model loads
            result = classify_texts([text], mode, model_ref, labels, calibrate, progress)[0]
            pieces, notes = None, [result.notice]
            if mode == ZERO_SHOT:
                notes.append(_raw_note(result) if calibrate else None)
            elif explain:
                classifier = sentiment.load_classifier(context.cache, model_ref)
                explanation = sentiment.explain(classifier, text)
                pieces, notes = explanation.pieces, notes + [explanation.notice]
        except PlaygroundError as error:
            raise user_error(error) from error
        return result.scores, pieces, "\n\n".join(n for n in notes if n)

    @gpu
    def analyse_all(lines, csv_path, column, mode, model_ref, labels, calibrate,
                    progress=gr.Progress()):
        try:
            if csv_path:
                column, texts = sentiment.csv_texts(csv_path, column or None)
            else:
                texts = sentiment.split_lines(lines)
            if mode == ZERO_SHOT:
                zero_shot.parse_labels(labels)
            results = classify_texts(texts, mode, model_ref, labels, calibrate, progress)
        except PlaygroundError as error:
            raise user_error(error) from error
        rows = sentiment.result_rows(texts, results)
        counts = sentiment.label_counts(results)
        chart_data = pd.DataFrame({"label": list(counts), "count": list(counts.values())})
        return rows, chart_data, _write_csv(rows)

    def pick_column(csv_path):
        if not csv_path:
            return gr.Dropdown(choices=[], value=None)
        try:
            header, rows = sentiment.read_csv(csv_path)
            guess = sentiment.guess_text_column(header, rows)
        except PlaygroundError as error:
            raise user_error(error) from error
        return gr.Dropdown(choices=header, value=guess)

    def switch_mode(mode):
        zero = mode == ZERO_SHOT
        return (
            gr.Textbox(visible=not zero), gr.Textbox(visible=zero), gr.Checkbox(visible=zero),
            gr.Checkbox(interactive=not zero, label=_explain_label(zero)),
            gr.HighlightedText(visible=not zero),  # word colouring is classifier-only
        )

    inputs = [mode, model_ref, labels, calibrate]
    analyse_event = dict(fn=analyse, inputs=[text, *inputs, explain], outputs=[scores, why, notice])
    analyse_button.click(**analyse_event, api_name="sentiment")
    text.submit(**analyse_event, api_visibility="private")
    batch_button.click(
        analyse_all, [lines, csv_file, column, *inputs], [table, chart, download],
        api_name="sentiment_batch",
    )
    csv_file.change(pick_column, csv_file, column, api_visibility="private", queue=False)
    mode.change(
        switch_mode, mode, [model_ref, labels, calibrate, explain, why],
        api_visibility="private", queue=False,
    )


def _mode_note(context: AppContext, classifier_missing: bool) -> str:
    note = (
        "**Classifier**: a model trained for the task, fast and accurate on its own labels. "
        f"**Zero-shot**: any labels you type, scored by the chat model (`{context.chat_model.ref}`)."
    )
    if classifier_missing:
        note += (
            f"\n\nOffline, and the classifier `{context.settings.sentiment_model}` is not on "
            "this machine, so **zero-shot** is selected: it works with no Hub at all. "
            "To use a classifier, type the path of a local model folder."
        )
    return note


def _explain_label(zero_shot_mode: bool) -> str:
    if zero_shot_mode:
        return "Explain (classifier mode only)"
    return "Explain: colour the words that pushed the prediction"


def _raw_note(result) -> str:
    raw = ", ".join(f"{label} {p:.0%}" for label, p in result.raw_scores.items())
    return f"Before calibration: {raw}."


def _write_csv(rows: list[list]) -> str:
    folder = Path(tempfile.mkdtemp(prefix="sentiment-"))
    return str(sentiment.write_results_csv(rows, folder / "sentiment.csv"))
