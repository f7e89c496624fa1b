"""The sentiment tab: layout, handlers and wiring (the work is in modules.tasks.classification).

Two modes share one layout: a sequence-classification model, or zero-shot labels scored
by the chat model (which works offline on the embedded model). Offline without the
configured classifier on this machine, zero-shot is preselected.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import gradio as gr
import pandas as pd

from modules.app_context import AppContext
from modules.engine.gpu import gpu
from modules.engine.model_choice import available_locally
from modules.tasks import sentiment, zero_shot
from modules.tasks.classification import ClassificationRequest, Method, classify_texts
from modules.ui.errors import shows_user_errors
from modules.ui.i18n import _, in_reader_language, t

CLASSIFIER = "Classifier model"
ZERO_SHOT = "Zero-shot (chat model, your labels)"
METHODS = {CLASSIFIER: Method.CLASSIFIER, ZERO_SHOT: Method.ZERO_SHOT}
EXAMPLES = [
    "I loved every minute of this film; the cast is wonderful.",
    "The update made the app slow, and support never answered.",
    "The package arrived on Tuesday.",
    # The same three in Chinese: the default classifier and the embedded model were trained on
    # English, so these show where a small model's reach ends (the course's readers ask).
    "这部电影我每一分钟都很喜欢，演员们都很出色。",
    "更新以后应用变得很慢，客服也一直没有回复。",
    "包裹周二到了。",
]
ZERO_SHOT_NOTE = _("sentiment.zero_shot_note")  # the text: modules/locales


@dataclass
class Components:
    mode: gr.Radio
    model_ref: gr.Textbox
    labels: gr.Textbox
    calibrate: gr.Checkbox
    zero_shot_note: gr.Markdown
    text: gr.Textbox
    explain: gr.Checkbox
    analyse_button: gr.Button
    scores: gr.Label
    why: gr.HighlightedText
    notice: gr.Markdown
    lines: gr.Textbox
    csv_file: gr.File
    column: gr.Dropdown
    batch_button: gr.Button
    table: gr.Dataframe
    chart: gr.BarPlot
    download: gr.File


def build(context: AppContext) -> None:
    classifier_missing = context.settings.offline and not available_locally(
        context.settings.sentiment_model
    )
    components = _layout(context, ZERO_SHOT if classifier_missing else CLASSIFIER,
                         classifier_missing)
    _wire(components, _Handlers(context))


# --- layout ------------------------------------------------------------------------
def _layout(context: AppContext, start_mode: str, classifier_missing: bool) -> Components:
    zero = start_mode == ZERO_SHOT
    mode = gr.Radio([(_("sentiment.mode_classifier"), CLASSIFIER), (_("sentiment.mode_zero_shot"), ZERO_SHOT)],
                    value=start_mode, label=_("sentiment.mode"))
    gr.Markdown(lambda: _mode_note(context, classifier_missing),  # per page: its language
                elem_id="sentiment-mode-note")
    with gr.Row():
        model_ref = gr.Textbox(
            context.settings.sentiment_model, label=_("sentiment.classifier_hub_id_or_local"),
            visible=not zero, scale=3,
        )
        labels = gr.Textbox(
            ", ".join(zero_shot.DEFAULT_LABELS), label=_("sentiment.labels_comma_separated"),
            info=_("sentiment.e_g_positive_negative_neutral"),
            visible=zero, scale=3,
        )
        calibrate = gr.Checkbox(
            True, label=_("sentiment.calibrate_divide_out_the_model"),
            visible=zero, scale=1,
        )
    zero_shot_note = gr.Markdown(ZERO_SHOT_NOTE, visible=zero, elem_id="zero-shot-note")
    with gr.Tab(_("sentiment.one_text")):
        text = gr.Textbox(label=_("sentiment.text"), lines=4, max_lines=20, placeholder=_("sentiment.type_or_paste_text"))
        with gr.Row():
            # As switch_mode leaves it: word colouring is a classifier-mode feature.
            explain = gr.Checkbox(True, label=_("sentiment.explain_zero_shot" if zero else "sentiment.explain_classifier"),
                                  interactive=not zero)
            analyse_button = gr.Button(_("sentiment.analyse"), variant="primary")
        gr.Examples(EXAMPLES, inputs=[text], label=_("sentiment.try"))
        scores = gr.Label(label=_("sentiment.scores_all_labels"))
        why = gr.HighlightedText(
            label=_("sentiment.why_red_the_word_supports"),
            show_legend=False, show_inline_category=False, visible=not zero,
        )
        notice = gr.Markdown("", elem_id="sentiment-notice")
    with gr.Tab(_("sentiment.many_texts")):
        gr.Markdown(_("sentiment.one_text_per_line_or"))
        with gr.Row():
            lines = gr.Textbox(label=_("sentiment.texts_one_per_line"), lines=6)
            with gr.Column():
                csv_file = gr.File(label=_("sentiment.csv_file"), file_types=[".csv"], type="filepath")
                column = gr.Dropdown(
                    [], label=_("sentiment.text_column"), interactive=True, allow_custom_value=True,
                    info=_("sentiment.guessed_when_a_file_is"),
                )
        batch_button = gr.Button(_("sentiment.analyse_all"), variant="primary")
        table = gr.Dataframe(
            headers=list(sentiment.RESULT_COLUMNS), interactive=False, wrap=True,
            label=_("sentiment.results"),
        )
        chart = gr.BarPlot(x="label", y="count", title=_("sentiment.label_distribution"), sort="-y")
        download = gr.File(label=_("sentiment.download_results_csv"), interactive=False)
    return Components(mode, model_ref, labels, calibrate, zero_shot_note, text, explain,
                      analyse_button, scores, why, notice, lines, csv_file, column,
                      batch_button, table, chart, download)


# --- handlers ----------------------------------------------------------------------
class _Handlers:
    """What the tab's events do; each turns the widgets' values into a task call."""

    def __init__(self, context: AppContext):
        self.context = context

    def _classify(self, texts, request: ClassificationRequest, progress) -> list:
        return classify_texts(
            self.context.cache, self.context.chat_model.ref, texts, request,
            max_text_tokens=self.context.settings.max_input_tokens,
            on_status=lambda status: progress(None, desc=in_reader_language(status)),
            on_progress=lambda done, total: progress((done, total), desc=t("sentiment.scoring"), unit=t("sentiment.texts_unit")),
        )

    @staticmethod
    def _request(mode, model_ref, labels, calibrate) -> ClassificationRequest:
        return ClassificationRequest(METHODS.get(mode, Method.CLASSIFIER), model_ref or "",
                                     labels or "", bool(calibrate))

    def analyse(self, text, mode, model_ref, labels, calibrate, explain,
                progress=gr.Progress()):
        """Scores for every label of one text (classifier or zero-shot), the words that
        pushed a classifier's prediction, and notes (truncation, scores before calibration)."""
        text = sentiment.validated_text(text)
        request = self._request(mode, model_ref, labels, calibrate)
        result = self._classify([text], request, progress)[0]
        pieces, notes = None, [result.notice]
        if request.method is Method.ZERO_SHOT:
            notes.append(_raw_note(result) if request.calibrate else None)
        elif explain:
            classifier = sentiment.load_classifier(self.context.cache, request.classifier_ref)
            explanation = sentiment.explain(classifier, text)
            pieces, notes = explanation.pieces, notes + [explanation.notice]
        return result.scores, pieces, "\n\n".join(in_reader_language(n) for n in notes if n)

    def analyse_all(self, lines, csv_path, column, mode, model_ref, labels, calibrate,
                    progress=gr.Progress()):
        """Classify many texts (one per line, or a CSV column): a table, label counts, a CSV."""
        if csv_path:
            column, texts = sentiment.csv_texts(csv_path, column or None)
        else:
            texts = sentiment.split_lines(lines)
        request = self._request(mode, model_ref, labels, calibrate)
        results = self._classify(texts, request, progress)
        rows = sentiment.result_rows(texts, results)
        counts = sentiment.label_counts(results)
        chart_data = pd.DataFrame({"label": list(counts), "count": list(counts.values())})
        return rows, chart_data, _write_csv(rows)

    @staticmethod
    def pick_column(csv_path):
        if not csv_path:
            return gr.Dropdown(choices=[], value=None)
        header, rows = sentiment.read_csv(csv_path)
        return gr.Dropdown(choices=header, value=sentiment.guess_text_column(header, rows))

    @staticmethod
    def switch_mode(mode):
        zero = mode == ZERO_SHOT
        return (
            gr.Textbox(visible=not zero), gr.Textbox(visible=zero), gr.Checkbox(visible=zero),
            gr.Markdown(visible=zero),
            gr.Checkbox(interactive=not zero, label=_explain_label(zero)),
            gr.HighlightedText(visible=not zero),  # word colouring is classifier-only
        )


# --- wiring ------------------------------------------------------------------------
def _wire(c: Components, handlers: _Handlers) -> None:
    settings = [c.mode, c.model_ref, c.labels, c.calibrate]
    analyse = gpu(shows_user_errors(handlers.analyse))
    analyse_event = dict(fn=analyse, inputs=[c.text, *settings, c.explain],
                         outputs=[c.scores, c.why, c.notice])
    c.analyse_button.click(**analyse_event, api_name="sentiment")
    c.text.submit(**analyse_event, api_visibility="private")
    c.batch_button.click(
        gpu(shows_user_errors(handlers.analyse_all)), [c.lines, c.csv_file, c.column, *settings],
        [c.table, c.chart, c.download], api_name="sentiment_batch",
    )
    c.csv_file.change(shows_user_errors(handlers.pick_column), c.csv_file, c.column,
                      api_visibility="private", queue=False)
    c.mode.change(
        handlers.switch_mode, c.mode,
        [c.model_ref, c.labels, c.calibrate, c.zero_shot_note, c.explain, c.why],
        api_visibility="private", queue=False,
    )


def _mode_note(context: AppContext, classifier_missing: bool) -> str:
    note = t("sentiment.mode_note", model=context.chat_model.ref)
    if classifier_missing:
        note += "\n\n" + t("sentiment.mode_note_offline", model=context.settings.sentiment_model)
    return note


def _explain_label(zero_shot_mode: bool) -> str:
    return t("sentiment.explain_zero_shot" if zero_shot_mode else "sentiment.explain_classifier")


def _raw_note(result: zero_shot.ZeroShotResult) -> str:
    raw = ", ".join(f"{label} {p:.0%}" for label, p in result.raw_scores.items())
    return t("sentiment.before_calibration", scores=raw)


def _write_csv(rows: list[list]) -> str:
    folder = Path(tempfile.mkdtemp(prefix="sentiment-"))
    return str(sentiment.write_results_csv(rows, folder / "sentiment.csv"))
