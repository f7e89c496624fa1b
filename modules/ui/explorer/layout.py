"""The explorer's components, laid out top to bottom. No handlers here."""

from __future__ import annotations

from dataclasses import dataclass

import gradio as gr

from modules.app_context import AppContext
from modules.tasks import next_token as nt
from modules.tasks.explorer import beam_search
from modules.ui.explorer import views
from modules.ui.explorer.handlers import ALL_HEADS

SESSION_TTL_S = 1800  # an idle session's cache is dropped after this
EXAMPLES = ["The capital of France is", "good morning", "i am good", "def fibonacci(n):"]

INTRO = """\
An LLM turns text into **tokens**, scores **every token of its vocabulary** as the next one,
reshapes those scores with **temperature, top-k, top-p and min-p**, then **picks one** and repeats.
Move the sliders to see what each knob does, step the text forward, click a candidate to branch,
and open the views below to look inside the model.
"""


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
        prompt = gr.Textbox(label="Prompt", value=EXAMPLES[0], lines=3, max_lines=12, scale=3)
        with gr.Column(scale=1):
            model = gr.Dropdown(context.chat_model_choices(), value=context.chat_model.ref, label="Model",
                                allow_custom_value=True)
            chat = gr.Checkbox(label="Wrap in the model's chat template", value=False)
            score = gr.Button("Score the next token", variant="primary")
    gr.Examples(EXAMPLES, inputs=[prompt], label="Try (compare 'good morning' with 'i am good')")
    gr.Markdown("### Tokens\nEach chip is one token, its id below; `␣` is a space, `↵` a newline.")
    return {"prompt": prompt, "model": model, "chat": chat, "score": score, "chips": gr.HTML()}


def _next_token() -> dict:
    gr.Markdown("### Next token")
    with gr.Row():
        knobs = [
            gr.Slider(1, nt.MAX_SHOWN, value=10, step=1, label="Candidates shown"),
            gr.Slider(0.05, 3.0, value=1.0, step=0.05, label="Temperature"),
            gr.Slider(0, 200, value=0, step=1, label="top-k (0 = off)"),
            gr.Slider(0.01, 1.0, value=1.0, step=0.01, label="top-p (1 = off)"),
            gr.Slider(0.0, 1.0, value=0.0, step=0.01, label="min-p (0 = off)"),
        ]
    summary = gr.Markdown()
    with gr.Row():
        chart = gr.BarPlot(x="token", y="probability", color="status", color_map=views.STATUS_COLOURS, sort="-y",
                           x_label_angle=-45, label="Probability after temperature (colour: which cut removes it)",
                           scale=1)
        table = gr.Dataframe(headers=views.TABLE_HEADERS, interactive=False, max_height=420, scale=1,
                             label="Candidates — click a row to branch with that token")
    with gr.Row():
        with gr.Column(scale=3):
            gr.Markdown("**The sampling pipeline, stage by stage** (transformers' warpers in generate's order; "
                        "greyed = removed, the rest renormalised)")
            stages = gr.HTML()
        sweep = gr.LinePlot(x="temperature", y="entropy (bits)", tooltip="all", scale=2,
                            label="Entropy of this step as temperature goes from 0.2 to 2")
    return {"knobs": knobs, "summary": summary, "chart": chart, "table": table, "stages": stages, "sweep": sweep}


def _stepping() -> dict:
    gr.Markdown("### Step the text forward")
    with gr.Row():
        greedy = gr.Button("Append the greedy token")
        sample = gr.Button("Sample one")
        undo = gr.Button("Undo a step")
        seed = gr.Number(value=0, precision=0, label="Seed", minimum=0)
    with gr.Row():
        steps = gr.Slider(1, nt.MAX_STEPS_AT_ONCE, value=10, step=1, label="Steps at once")
        how = gr.Radio(list(nt.STRATEGIES), value="greedy", label="Strategy")
        run_n = gr.Button("Generate N steps")
    text = gr.HighlightedText(label="Text so far", color_map={"generated": "#c7d2fe"}, show_legend=False)
    with gr.Row():
        with gr.Column(scale=2):
            history = gr.Dataframe(headers=views.HISTORY_HEADERS, interactive=False, max_height=300,
                                   label="Steps taken")
        with gr.Column(scale=1):
            gr.Markdown("**Branches** (a clicked candidate starts one)")
            branch = gr.Radio(["main"], value="main", label="Active branch", elem_id="explorer-branch")
            branches = gr.Markdown()
    gr.Markdown("### How surprising was the prompt?\nRedder = the model expected that token less.")
    surprise = gr.HighlightedText(show_inline_category=False, show_label=False)
    return {"greedy": greedy, "sample": sample, "undo": undo, "seed": seed, "steps": steps, "how": how,
            "run_n": run_n, "text": text, "history": history, "surprise": surprise, "perplexity": gr.Markdown(),
            "branches": branches, "branch": branch}


def _lens_and_attention() -> dict:
    with gr.Accordion("Logit lens: the prediction forming layer by layer", open=False) as lens_open:
        with gr.Row():
            lens_follow = gr.Textbox(label="Token to follow (empty: the model's top token)", scale=2)
            lens_top = gr.Slider(1, 20, value=8, step=1, label="Candidates", scale=1)
            lens_run = gr.Button("Run the lens", scale=1)
        lens_summary = gr.Markdown()
        with gr.Row():
            lens_heatmap = gr.HTML()
            lens_line = gr.LinePlot(x="layer", y="probability", tooltip="all", label="The followed token by layer")
    with gr.Accordion("Attention: what the last token looks at", open=False) as attention_open:
        with gr.Row():
            attention_head = gr.Dropdown([ALL_HEADS], value=ALL_HEADS, label="Head", allow_custom_value=True)
            attention_run = gr.Button("Show attention")
        attention_summary = gr.Markdown()
        attention_heatmap = gr.HTML()
    return {"lens_open": lens_open, "lens_follow": lens_follow, "lens_top": lens_top, "lens_run": lens_run,
            "lens_summary": lens_summary, "lens_heatmap": lens_heatmap, "lens_line": lens_line,
            "attention_open": attention_open, "attention_head": attention_head, "attention_run": attention_run,
            "attention_summary": attention_summary, "attention_heatmap": attention_heatmap}


def _beams_scoring_compare(context: AppContext) -> dict:
    with gr.Accordion("Beam search, beside greedy and sampling", open=False) as beams_open:
        with gr.Row():
            num_beams = gr.Slider(1, beam_search.MAX_BEAMS, value=4, step=1, label="Beams")
            beam_length = gr.Slider(1, beam_search.MAX_BEAM_TOKENS, value=8, step=1, label="New tokens")
            length_penalty = gr.Number(value=1.0, label="Length penalty")
            beams_run = gr.Button("Search")
        beam_summary = gr.Markdown()
        with gr.Row():
            beam_tree = gr.HTML(label="Tree: kept tokens bold, dropped ones grey (log-probabilities)")
            beam_table = gr.Dataframe(headers=views.BEAM_HEADERS, interactive=False, label="Continuations")
    with gr.Accordion("Score your own continuation, or any text", open=False):
        with gr.Row():
            continuation = gr.Textbox(label="Continuation of the text so far", placeholder=" Paris", scale=3)
            score_run = gr.Button("How likely?", scale=1)
        with gr.Row():
            pasted = gr.Textbox(label="Or paste any text: surprise of each token", lines=2, scale=3)
            pasted_run = gr.Button("Surprise per token", scale=1)
        score_summary = gr.Markdown()
        score_tokens = gr.HighlightedText(show_inline_category=False, show_label=False)
        score_table = gr.Dataframe(headers=views.SCORE_HEADERS, interactive=False, max_height=300)
    with gr.Accordion("Compare two prompts or two models", open=False):
        with gr.Row():
            second_prompt = gr.Textbox(label="Second prompt (empty: the same prompt)", value="i am good ", scale=2)
            second_model = gr.Dropdown(["", *context.chat_model_choices()], value="", allow_custom_value=True,
                                       label="Second model (empty: the same model)", scale=1)
            compare_run = gr.Button("Compare", scale=1)
        compare_summary = gr.Markdown()
        with gr.Row():
            compare_left = gr.Dataframe(headers=views.COMPARE_HEADERS, interactive=False, label="First")
            compare_right = gr.Dataframe(headers=views.COMPARE_HEADERS, interactive=False, label="Second")
    with gr.Accordion("Export or replay the session (JSON)", open=False):
        with gr.Row():
            export = gr.Button("Export")
            replay = gr.Button("Replay the JSON below")
        session_json = gr.Code(language="json", interactive=True, label="Session")
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
