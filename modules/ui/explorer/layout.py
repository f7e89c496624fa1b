"""The explorer's components, laid out top to bottom. No handlers here."""

from __future__ import annotations

from dataclasses import dataclass

import gradio as gr

from modules.app_context import AppContext
from modules.tasks import next_token as nt
from modules.tasks.explorer import beam_search
from modules.ui.explorer import views
from modules.ui.explorer.handlers import ALL_HEADS
from modules.ui.i18n import _

SESSION_TTL_S = 1800  # an idle session's cache is dropped after this
# The course's first lesson: 'good' and ' good' are two tokens; SmolLM2's byte-level BPE
# keeps '大' whole but splits '家' and '好' into byte pieces.
EXAMPLES = ["The capital of France is", "good morning", "i am good", "大家好，早上好！", "def fibonacci(n):"]

INTRO = _("explorer.intro")  # the text: modules/locales


@dataclass
class ExplorerLayout:
    """Every component the handlers read or write (gr.Blocks holds them; this names them)."""

    session: gr.State
    prompt: gr.Textbox
    model: gr.Dropdown
    chat: gr.Checkbox
    score: gr.Button
    chips: gr.HTML
    knobs: list[gr.Slider]  # shown, temperature, top-k, top-p, min-p
    summary: gr.Markdown
    chart: gr.BarPlot
    table: gr.Dataframe
    stages: gr.HTML
    sweep: gr.LinePlot
    greedy: gr.Button
    sample: gr.Button
    undo: gr.Button
    seed: gr.Number
    steps: gr.Slider
    how: gr.Radio
    run_n: gr.Button
    text: gr.HighlightedText
    history: gr.Dataframe
    surprise: gr.HighlightedText
    perplexity: gr.Markdown
    branches: gr.Markdown
    branch: gr.Radio
    lens_open: gr.Accordion
    lens_follow: gr.Textbox
    lens_top: gr.Slider
    lens_run: gr.Button
    lens_summary: gr.Markdown
    lens_heatmap: gr.HTML
    lens_line: gr.LinePlot
    attention_open: gr.Accordion
    attention_head: gr.Dropdown
    attention_run: gr.Button
    attention_summary: gr.Markdown
    attention_heatmap: gr.HTML
    beams_open: gr.Accordion
    num_beams: gr.Slider
    beam_length: gr.Slider
    length_penalty: gr.Number
    beams_run: gr.Button
    beam_summary: gr.Markdown
    beam_tree: gr.HTML
    beam_table: gr.Dataframe
    continuation: gr.Textbox
    score_run: gr.Button
    pasted: gr.Textbox
    pasted_run: gr.Button
    score_summary: gr.Markdown
    score_tokens: gr.HighlightedText
    score_table: gr.Dataframe
    second_prompt: gr.Textbox
    second_model: gr.Dropdown
    compare_run: gr.Button
    compare_summary: gr.Markdown
    compare_left: gr.Dataframe
    compare_right: gr.Dataframe
    export: gr.Button
    replay: gr.Button
    session_json: gr.Code


def _prompt_and_model(context: AppContext) -> dict:
    with gr.Row():
        prompt = gr.Textbox(label=_("explorer.prompt"), value=EXAMPLES[0], lines=3, max_lines=12, scale=3)
        with gr.Column(scale=1):
            model = gr.Dropdown(context.chat_model_choices(), value=context.chat_model.ref, label=_("explorer.model"),
                                allow_custom_value=True)
            chat = gr.Checkbox(label=_("explorer.wrap_in_the_model_s"), value=False)
            score = gr.Button(_("explorer.score_the_next_token"), variant="primary")
    gr.Examples(EXAMPLES, inputs=[prompt], label=_("explorer.try_compare_good_morning_with"))
    gr.Markdown(_("explorer.tokens_each_chip_is_one"))
    return {"prompt": prompt, "model": model, "chat": chat, "score": score, "chips": gr.HTML()}


def _next_token() -> dict:
    gr.Markdown(_("explorer.next_token"))
    with gr.Row():
        knobs = [
            gr.Slider(1, nt.MAX_SHOWN, value=10, step=1, label=_("explorer.candidates_shown")),
            gr.Slider(0.05, 3.0, value=1.0, step=0.05, label=_("explorer.temperature")),
            gr.Slider(0, 200, value=0, step=1, label=_("explorer.top_k_0_off")),
            gr.Slider(0.01, 1.0, value=1.0, step=0.01, label=_("explorer.top_p_1_off")),
            gr.Slider(0.0, 1.0, value=0.0, step=0.01, label=_("explorer.min_p_0_off")),
        ]
    summary = gr.Markdown()
    with gr.Row():
        chart = gr.BarPlot(x="token", y="probability", color="status", color_map=views.STATUS_COLOURS, sort="-y",
                           x_label_angle=-45, label=_("explorer.probability_after_temperature_colour_which"),
                           scale=1)
        table = gr.Dataframe(headers=views.TABLE_HEADERS, interactive=False, max_height=420, scale=1,
                             label=_("explorer.candidates_click_a_row_to"))
    with gr.Row():
        with gr.Column(scale=3):
            gr.Markdown(_("explorer.the_sampling_pipeline_stage_by"))
            stages = gr.HTML()
        sweep = gr.LinePlot(x="temperature", y="entropy (bits)", tooltip="all", scale=2,
                            label=_("explorer.entropy_of_this_step_as"))
    return {"knobs": knobs, "summary": summary, "chart": chart, "table": table, "stages": stages, "sweep": sweep}


def _stepping() -> dict:
    gr.Markdown(_("explorer.step_the_text_forward"))
    with gr.Row():
        greedy = gr.Button(_("explorer.append_the_greedy_token"))
        sample = gr.Button(_("explorer.sample_one"))
        undo = gr.Button(_("explorer.undo_a_step"))
        seed = gr.Number(value=0, precision=0, label=_("explorer.seed"), minimum=0)
    with gr.Row():
        steps = gr.Slider(1, nt.MAX_STEPS_AT_ONCE, value=10, step=1, label=_("explorer.steps_at_once"))
        how = gr.Radio(list(nt.STRATEGIES), value="greedy", label=_("explorer.strategy"))
        run_n = gr.Button(_("explorer.generate_n_steps"))
    text = gr.HighlightedText(label=_("explorer.text_so_far"), color_map={"generated": "#c7d2fe"}, show_legend=False)
    with gr.Row():
        with gr.Column(scale=2):
            history = gr.Dataframe(headers=views.HISTORY_HEADERS, interactive=False, max_height=300,
                                   label=_("explorer.steps_taken"))
        with gr.Column(scale=1):
            gr.Markdown(_("explorer.branches_a_clicked_candidate_starts"))
            branch = gr.Radio(["main"], value="main", label=_("explorer.active_branch"), elem_id="explorer-branch")
            branches = gr.Markdown()
    gr.Markdown(_("explorer.how_surprising_was_the_prompt"))
    surprise = gr.HighlightedText(show_inline_category=False, show_label=False)
    return {"greedy": greedy, "sample": sample, "undo": undo, "seed": seed, "steps": steps, "how": how,
            "run_n": run_n, "text": text, "history": history, "surprise": surprise, "perplexity": gr.Markdown(),
            "branches": branches, "branch": branch}


def _lens_and_attention() -> dict:
    with gr.Accordion(_("explorer.logit_lens_the_prediction_forming"), open=False) as lens_open:
        with gr.Row():
            lens_follow = gr.Textbox(label=_("explorer.token_to_follow_empty_the"), scale=2)
            lens_top = gr.Slider(1, 20, value=8, step=1, label=_("explorer.candidates"), scale=1)
            lens_run = gr.Button(_("explorer.run_the_lens"), scale=1)
        lens_summary = gr.Markdown()
        with gr.Row():
            lens_heatmap = gr.HTML()
            lens_line = gr.LinePlot(x="layer", y="probability", tooltip="all", label=_("explorer.the_followed_token_by_layer"))
    with gr.Accordion(_("explorer.attention_what_the_last_token"), open=False) as attention_open:
        with gr.Row():
            attention_head = gr.Dropdown([(_("explorer.mean_of_heads"), ALL_HEADS)], value=ALL_HEADS, label=_("explorer.head"),
                                         allow_custom_value=True)
            attention_run = gr.Button(_("explorer.show_attention"))
        attention_summary = gr.Markdown()
        attention_heatmap = gr.HTML()
    return {"lens_open": lens_open, "lens_follow": lens_follow, "lens_top": lens_top, "lens_run": lens_run,
            "lens_summary": lens_summary, "lens_heatmap": lens_heatmap, "lens_line": lens_line,
            "attention_open": attention_open, "attention_head": attention_head, "attention_run": attention_run,
            "attention_summary": attention_summary, "attention_heatmap": attention_heatmap}


def _beams_scoring_compare(context: AppContext) -> dict:
    with gr.Accordion(_("explorer.beam_search_beside_greedy_and"), open=False) as beams_open:
        with gr.Row():
            num_beams = gr.Slider(1, beam_search.MAX_BEAMS, value=4, step=1, label=_("explorer.beams"))
            beam_length = gr.Slider(1, beam_search.MAX_BEAM_TOKENS, value=8, step=1, label=_("explorer.new_tokens"))
            length_penalty = gr.Number(value=1.0, label=_("explorer.length_penalty"))
            beams_run = gr.Button(_("explorer.search"))
        beam_summary = gr.Markdown()
        with gr.Row():
            beam_tree = gr.HTML(label=_("explorer.tree_kept_tokens_bold_dropped"))
            beam_table = gr.Dataframe(headers=views.BEAM_HEADERS, interactive=False, label=_("explorer.continuations"))
    with gr.Accordion(_("explorer.score_your_own_continuation_or"), open=False):
        with gr.Row():
            continuation = gr.Textbox(label=_("explorer.continuation_of_the_text_so"), placeholder=" Paris", scale=3)
            score_run = gr.Button(_("explorer.how_likely"), scale=1)
        with gr.Row():
            pasted = gr.Textbox(label=_("explorer.or_paste_any_text_surprise"), lines=2, scale=3)
            pasted_run = gr.Button(_("explorer.surprise_per_token"), scale=1)
        score_summary = gr.Markdown()
        score_tokens = gr.HighlightedText(show_inline_category=False, show_label=False)
        score_table = gr.Dataframe(headers=views.SCORE_HEADERS, interactive=False, max_height=300)
    with gr.Accordion(_("explorer.compare_two_prompts_or_two"), open=False):
        with gr.Row():
            second_prompt = gr.Textbox(label=_("explorer.second_prompt_empty_the_same"), value="i am good ", scale=2)
            second_model = gr.Dropdown(["", *context.chat_model_choices()], value="", allow_custom_value=True,
                                       label=_("explorer.second_model_empty_the_same"), scale=1)
            compare_run = gr.Button(_("explorer.compare"), scale=1)
        compare_summary = gr.Markdown()
        with gr.Row():
            compare_left = gr.Dataframe(headers=views.COMPARE_HEADERS, interactive=False, label=_("explorer.first"))
            compare_right = gr.Dataframe(headers=views.COMPARE_HEADERS, interactive=False, label=_("explorer.second"))
    with gr.Accordion(_("explorer.export_or_replay_the_session"), open=False):
        with gr.Row():
            export = gr.Button(_("explorer.export"))
            replay = gr.Button(_("explorer.replay_the_json_below"))
        session_json = gr.Code(language="json", interactive=True, label=_("explorer.session"))
    return {"beams_open": beams_open, "num_beams": num_beams, "beam_length": beam_length,
            "length_penalty": length_penalty, "beams_run": beams_run, "beam_summary": beam_summary,
            "beam_tree": beam_tree, "beam_table": beam_table,
            "continuation": continuation, "score_run": score_run, "pasted": pasted, "pasted_run": pasted_run,
            "score_summary": score_summary, "score_tokens": score_tokens, "score_table": score_table,
            "second_prompt": second_prompt, "second_model": second_model, "compare_run": compare_run,
            "compare_summary": compare_summary, "compare_left": compare_left, "compare_right": compare_right,
            "export": export, "replay": replay, "session_json": session_json}


def build_layout(context: AppContext) -> ExplorerLayout:
    session = gr.State(None, time_to_live=SESSION_TTL_S)
    gr.Markdown(INTRO)
    return ExplorerLayout(session=session, **_prompt_and_model(context), **_next_token(), **_stepping(),
                          **_lens_and_attention(), **_beams_scoring_compare(context))
