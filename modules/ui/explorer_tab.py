"""The next-token explorer tab (layout and event wiring only).

Per-user state (token ids, the prefix's keys/values, the steps) lives in a
gr.State holding an `ExplorerSession`; the model itself is the chat tab's, shared
through the cache. Moving a sampling slider re-reads the stored scores: no model call.
"""

from __future__ import annotations

import functools
import html
import math
from collections.abc import Callable
from dataclasses import dataclass

import gradio as gr
import pandas as pd

from modules.tasks import next_token as nt
from modules.app_context import AppContext
from modules.ui.errors import user_error
from modules.errors import PlaygroundError
from modules.engine.gpu import gpu
from modules.engine.model_cache import LoadedModel, ModelKind

SESSION_TTL_S = 1800  # an idle session's cache is dropped after this
SURPRISE_FULL_BITS = 12.0  # a token this surprising (p ≤ 1/4096) is fully red
CHIP_COLOURS = ("#dbeafe", "#dcfce7", "#fef9c3", "#fce7f3", "#ede9fe", "#ffedd5")
STATUS_COLOURS = {"kept": "#4f46e5", "cut by top-p": "#f59e0b", "cut by top-k": "#9ca3af"}
TABLE_HEADERS = ["rank", "token", "id", "probability", "logit", "cumulative", "top-k", "top-p", "sampled p"]
HISTORY_HEADERS = ["step", "token", "id", "probability", "rank", "how"]
EXAMPLES = ["The capital of France is", "good morning", "i am good", "def fibonacci(n):"]

INTRO = """\
An LLM turns text into **tokens**, scores **every token of its vocabulary** as the next one,
reshapes those scores with **temperature, top-k and top-p**, then **picks one** and repeats.
Score a prompt, move the sliders to see what each knob does, and step the text forward.
"""


@dataclass
class ExplorerSession:
    """What one browser session explores: the prompt it came from, and the walk so far."""

    key: tuple[str, bool, str]  # (prompt, chat template?, model ref)
    explorer: nt.ExplorerState


def _user_errors(fn: Callable) -> Callable:
    """Show PlaygroundErrors as one clear line; the server keeps serving."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except PlaygroundError as error:
            raise user_error(error) from error

    return wrapper


# --- presentation (plain values -> what the components show) ------------------
def chips_html(explorer: nt.ExplorerState, tokenizer) -> str:
    """The text as coloured token chips, id under each; generated tokens outlined."""
    pieces = nt.token_pieces(tokenizer, explorer.ids)
    prompt_length = len(explorer.prompt_ids)
    chips = []
    for index, piece in enumerate(pieces):
        border = "2px solid #4f46e5" if index >= prompt_length else "1px solid #0001"
        if piece.special:
            border = "1px dashed #6b7280"
        chips.append(
            f'<span title="token {index} · id {piece.id}" style="display:inline-flex;flex-direction:column;'
            f"align-items:center;margin:2px;padding:2px 5px;border-radius:6px;border:{border};"
            f'background:{"#e5e7eb" if piece.special else CHIP_COLOURS[index % len(CHIP_COLOURS)]};color:#111">'
            f'<span style="font-family:monospace;white-space:pre">{html.escape(piece.label)}</span>'
            f'<span style="font-size:0.7em;color:#555">{piece.id}</span></span>'
        )
    return f'<div style="line-height:1.1">{"".join(chips)}</div>'


def percent(p: float) -> str:
    return f"{p:.2%}" if p >= 1e-4 else f"{p * 100:.1e}%"


def summary_markdown(explorer: nt.ExplorerState, dist: nt.Distribution) -> str:
    top = dist.candidates[0]
    return (
        f"**{len(explorer.ids)} tokens** in the text ({len(explorer.prompt_ids)} from the prompt, "
        f"context window {explorer.window}) · the model scores **{dist.vocab_size:,}** possible next tokens.  \n"
        f"Entropy **{dist.entropy_bits:.2f} bits** at temperature {dist.settings.temperature:g} → "
        f"**{dist.filtered_entropy_bits:.2f} bits** over the **{dist.kept:,}** token(s) left after "
        f"top-k / top-p. Greedy pick: `{top.token}` ({percent(top.probability)})."
        + _tie_note(dist)
    )


def model_note(loaded: LoadedModel) -> str:
    """Which model scored, and in what precision: quantized weights shift probabilities a little."""
    note = f"  \nScored by {loaded.description}."
    if loaded.quantization:
        note += " Its weights are quantized: probabilities differ slightly from the float model's."
    return note


def _tie_note(dist: nt.Distribution) -> str:
    k = dist.settings.top_k
    if not k or dist.kept_by_top_k <= k:
        return ""
    return (
        f"  \ntop-k kept {dist.kept_by_top_k} tokens, not {k}: "
        f"tokens tied with the {k}th score stay, as in transformers."
    )


def chart_frame(dist: nt.Distribution) -> pd.DataFrame:
    rows = [
        {
            "token": f"{c.rank}. {c.token}",
            "probability": c.probability,
            "status": "kept" if c.in_top_p else ("cut by top-p" if c.in_top_k else "cut by top-k"),
        }
        for c in dist.candidates
    ]
    return pd.DataFrame(rows, columns=["token", "probability", "status"])


def table_frame(dist: nt.Distribution) -> pd.DataFrame:
    rows = [
        [c.rank, c.token, c.id, round(c.probability, 5), round(c.logit, 3), round(c.cumulative, 5),
         "✓" if c.in_top_k else "✗", "✓" if c.in_top_p else "✗", round(c.final_probability, 5)]
        for c in dist.candidates
    ]
    return pd.DataFrame(rows, columns=TABLE_HEADERS)


def history_frame(explorer: nt.ExplorerState) -> pd.DataFrame:
    rows = [
        [number, s.token, s.token_id, round(s.probability, 5), s.rank, s.how]
        for number, s in enumerate(explorer.steps, start=1)
    ]
    return pd.DataFrame(rows, columns=HISTORY_HEADERS)


def text_so_far(explorer: nt.ExplorerState, tokenizer) -> list[tuple[str, str | None]]:
    prompt = tokenizer.decode(explorer.prompt_ids, skip_special_tokens=False)
    added = tokenizer.decode(explorer.ids[len(explorer.prompt_ids):], skip_special_tokens=False)
    return [(prompt, None), (added, "generated")] if added else [(prompt, None)]


def surprise_views(explorer: nt.ExplorerState, tokenizer) -> tuple[list[tuple[str, float]], str]:
    """Prompt tokens scored by surprisal (redder = less expected), and the perplexity line."""
    surprise = nt.prompt_surprise(tokenizer, explorer)
    scored = [
        (label, 0.0 if p is None else min(1.0, -math.log2(max(p, 1e-30)) / SURPRISE_FULL_BITS))
        for label, p in surprise.pieces
    ]
    if surprise.perplexity is None:
        return scored, "One token: nothing to predict yet, so no perplexity."
    worst = ", ".join(f"`{label}` ({percent(p)})" for label, p in surprise.most_surprising)
    return scored, (
        f"Perplexity **{surprise.perplexity:.2f}** (as unsure as choosing among that many tokens, on average). "
        f"Least expected: {worst}. The first token has nothing before it to predict it from."
    )


# --- handlers ---------------------------------------------------------------
def build(context: AppContext) -> None:
    max_input_tokens = context.settings.max_input_tokens

    def load(ref: str, progress: gr.Progress | None = None) -> LoadedModel:
        status = (lambda message: progress(0, desc=message)) if progress else None
        return context.cache.get(ref, ModelKind.CAUSAL_LM, on_status=status)

    def session_for(session, prompt, chat, ref, progress=None) -> tuple[ExplorerSession, LoadedModel]:
        """The current session, or a fresh one (old cache dropped) if the prompt or model changed."""
        loaded = load(ref, progress)
        key = (prompt, bool(chat), ref)
        if session is None or session.key != key:
            session = ExplorerSession(key, nt.start(loaded, prompt, bool(chat), max_input_tokens))
        return session, loaded

    def distribution_views(session, loaded, shown, temperature, top_k, top_p):
        settings = nt.SamplingSettings(temperature, top_k, top_p)
        dist = nt.distribution_from_logits(session.explorer.logits, loaded.tokenizer, settings, shown)
        summary = summary_markdown(session.explorer, dist) + model_note(loaded)
        return summary, chart_frame(dist), table_frame(dist)

    def all_views(session, loaded, shown, temperature, top_k, top_p):
        explorer, tokenizer = session.explorer, loaded.tokenizer
        surprise, perplexity = surprise_views(explorer, tokenizer)
        return (
            session, chips_html(explorer, tokenizer),
            *distribution_views(session, loaded, shown, temperature, top_k, top_p),
            text_so_far(explorer, tokenizer), history_frame(explorer), surprise, perplexity,
        )

    @_user_errors
    @gpu
    def analyse(prompt, chat, ref, shown, temperature, top_k, top_p, progress=gr.Progress()):
        session, loaded = session_for(None, prompt, chat, ref, progress)
        return all_views(session, loaded, shown, temperature, top_k, top_p)

    @_user_errors
    def redraw(session, shown, temperature, top_k, top_p):
        if session is None:
            return gr.skip(), gr.skip(), gr.skip()
        loaded = load(session.key[2])
        return distribution_views(session, loaded, shown, temperature, top_k, top_p)

    def stepper(action: Callable[..., None]):
        @_user_errors
        @gpu
        def handler(session, prompt, chat, ref, shown, temperature, top_k, top_p, seed, steps, how,
                    progress=gr.Progress()):
            session, loaded = session_for(session, prompt, chat, ref, progress)
            settings = nt.SamplingSettings(temperature, top_k, top_p).validated()
            with session.explorer.lock:
                action(session.explorer, loaded, settings, _whole(seed), steps, how)
            return all_views(session, loaded, shown, temperature, top_k, top_p)

        return handler

    def step_n(explorer, loaded, settings, seed, steps, how):
        eos = loaded.tokenizer.eos_token_id
        nt.take_steps(loaded, explorer, _whole(steps), how, settings, seed, [] if eos is None else [eos])

    def step_one(strategy: str):
        def action(explorer, loaded, settings, seed, steps, how):
            nt.take_steps(loaded, explorer, 1, strategy, settings, seed)

        return action

    def undo_step(explorer, loaded, settings, seed, steps, how):
        nt.undo(loaded, explorer)

    @_user_errors
    @gpu
    def pick(session, prompt, chat, ref, shown, temperature, top_k, top_p, evt: gr.SelectData):
        session, loaded = session_for(session, prompt, chat, ref)
        row = evt.row_value or []
        if len(row) < len(TABLE_HEADERS):
            raise user_error("Click a row of the candidates table.")
        settings = nt.SamplingSettings(temperature, top_k, top_p).validated()
        with session.explorer.lock:
            nt.append_token(loaded, session.explorer, _whole(row[TABLE_HEADERS.index("id")]), "picked", settings)
        return all_views(session, loaded, shown, temperature, top_k, top_p)

    default_ref = context.chat_model.ref

    @_user_errors
    @gpu
    def next_token(
        prompt: str,
        model: str = default_ref,
        chat_template: bool = False,
        temperature: float = 1.0,
        top_k: int = 0,
        top_p: float = 1.0,
        candidates: int = 10,
    ) -> dict:
        """Next-token candidates (id, token, probability, logit, rank, ...) for a prompt."""
        loaded = load(model)
        dist = nt.next_token_distribution(
            loaded, prompt, temperature, top_k, top_p, candidates, chat_template, max_input_tokens
        )
        return {"model": loaded.ref.text, **dist.as_dict()}

    # --- layout -------------------------------------------------------------
    session = gr.State(None, time_to_live=SESSION_TTL_S)
    gr.Markdown(INTRO)
    with gr.Row():
        prompt = gr.Textbox(label="Prompt", value=EXAMPLES[0], lines=3, max_lines=12, scale=3)
        with gr.Column(scale=1):
            model = gr.Dropdown(
                context.chat_model_choices(), value=default_ref, label="Model", allow_custom_value=True
            )
            chat = gr.Checkbox(label="Wrap in the model's chat template", value=False)
            score = gr.Button("Score the next token", variant="primary")
    gr.Examples(EXAMPLES, inputs=[prompt], label="Try (compare 'good morning' with 'i am good')")
    gr.Markdown("### Tokens\nEach chip is one token, its id below; `␣` is a space, `↵` a newline.")
    chips = gr.HTML()
    gr.Markdown("### Next token")
    with gr.Row():
        shown = gr.Slider(1, nt.MAX_SHOWN, value=10, step=1, label="Candidates shown")
        temperature = gr.Slider(0.05, 3.0, value=1.0, step=0.05, label="Temperature")
        top_k = gr.Slider(0, 200, value=0, step=1, label="top-k (0 = off)")
        top_p = gr.Slider(0.01, 1.0, value=1.0, step=0.01, label="top-p (1 = off)")
    summary = gr.Markdown()
    with gr.Row():
        chart = gr.BarPlot(
            x="token", y="probability", color="status", color_map=STATUS_COLOURS, sort="-y",
            x_label_angle=-45, label="Probability after temperature (colour: survives top-k / top-p?)",
            scale=1,
        )
        table = gr.Dataframe(
            headers=TABLE_HEADERS, interactive=False, max_height=420, scale=1,
            label="Candidates — click a row to append that token",
        )
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
    history = gr.Dataframe(headers=HISTORY_HEADERS, interactive=False, max_height=300, label="Steps taken")
    gr.Markdown("### How surprising was the prompt?\nRedder = the model expected that token less.")
    surprise = gr.HighlightedText(show_inline_category=False, show_label=False)
    perplexity = gr.Markdown()

    # --- events -------------------------------------------------------------
    knobs = [shown, temperature, top_k, top_p]
    everything = [session, chips, summary, chart, table, text, history, surprise, perplexity]
    step_inputs = [session, prompt, chat, model, *knobs, seed, steps, how]
    gr.on(
        [score.click, prompt.submit, chat.change, model.change], analyse,
        inputs=[prompt, chat, model, *knobs], outputs=everything,
        api_name="explorer_score", api_visibility="private",
    )
    gr.on(
        [knob.change for knob in knobs], redraw, inputs=[session, *knobs],
        outputs=[summary, chart, table], show_progress="hidden", trigger_mode="always_last",
        api_name="explorer_redraw", api_visibility="private",
    )
    for button, action, name in [
        (greedy, step_one("greedy"), "explorer_greedy"), (sample, step_one("sample"), "explorer_sample"),
        (run_n, step_n, "explorer_steps"), (undo, undo_step, "explorer_undo"),
    ]:
        button.click(stepper(action), inputs=step_inputs, outputs=everything,
                     api_name=name, api_visibility="private")
    table.select(pick, inputs=[session, prompt, chat, model, *knobs], outputs=everything,
                 api_name="explorer_pick", api_visibility="private")
    gr.api(next_token, api_name="next_token")


def _whole(value) -> int:
    """A whole number from a component (a table cell may arrive as text)."""
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        value = int(value)
    if value is None or not nt.is_whole(value):
        raise user_error(f"Expected a whole number, got {value!r}.")
    return int(value)
