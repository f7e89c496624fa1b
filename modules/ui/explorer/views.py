"""What the explorer's components show, from the tasks' plain values. No model calls.
Sentences are in the reader's language (`t`); table headers stay English (column names)."""

from __future__ import annotations

import html
import math

import pandas as pd

from modules.engine.model_cache import LoadedModel
from modules.tasks import next_token as nt
from modules.tasks.explorer import attention, beam_search, compare, logit_lens, sampling_stages, scoring, session
from modules.ui.i18n import t

SURPRISE_FULL_BITS = 12.0  # a token this surprising (p ≤ 1/4096) is fully red
CHIP_COLOURS = ("#dbeafe", "#dcfce7", "#fef9c3", "#fce7f3", "#ede9fe", "#ffedd5")
STATUS_COLOURS = {"kept": "#4f46e5", "cut by min-p": "#ef4444", "cut by top-p": "#f59e0b", "cut by top-k": "#9ca3af"}
TABLE_HEADERS = ["rank", "token", "id", "probability", "logit", "cumulative", "top-k", "top-p", "min-p", "sampled p"]
HISTORY_HEADERS = ["step", "token", "id", "probability", "rank", "how"]
SCORE_HEADERS = ["token", "id", "probability", "rank", "surprise (bits)"]
BEAM_HEADERS = ["beam", "text", "score"]
COMPARE_HEADERS = ["rank", "token", "id", "probability"]
CELL = "padding:2px 6px;border:1px solid #0001;font-family:monospace;white-space:pre;text-align:right"


def percent(p: float) -> str:
    return f"{p:.2%}" if p >= 1e-4 else f"{p * 100:.1e}%"


def _chip(label: str, title: str, background: str, border: str = "1px solid #0001", under: str = "") -> str:
    return (
        f'<span title="{html.escape(title)}" style="display:inline-flex;flex-direction:column;'
        f"align-items:center;margin:2px;padding:2px 5px;border-radius:6px;border:{border};"
        f'background:{background};color:#111">'
        f'<span style="font-family:monospace;white-space:pre">{html.escape(label)}</span>'
        f'<span style="font-size:0.7em;color:#555">{html.escape(under)}</span></span>'
    )


def chips_html(explorer: nt.ExplorerState, tokenizer) -> str:
    """The text as coloured token chips, id under each; generated tokens outlined."""
    prompt_length = len(explorer.prompt_ids)
    chips = []
    for index, piece in enumerate(nt.token_pieces(tokenizer, explorer.ids)):
        border = "1px dashed #6b7280" if piece.special else (
            "2px solid #4f46e5" if index >= prompt_length else "1px solid #0001")
        background = "#e5e7eb" if piece.special else CHIP_COLOURS[index % len(CHIP_COLOURS)]
        chips.append(_chip(piece.label, t("explorer.token_title", index=index, id=piece.id), background, border, str(piece.id)))
    return f'<div style="line-height:1.1">{"".join(chips)}</div>'


def model_note(loaded: LoadedModel) -> str:
    """Which model scored, and in what precision: quantized weights shift probabilities a little."""
    note = "  \n" + t("explorer.scored_by", model=loaded.description)
    if loaded.quantization:
        note += t("explorer.quantized_note")
    return note


def summary_markdown(explorer: nt.ExplorerState, dist: nt.Distribution) -> str:
    top = dist.candidates[0]
    return t("explorer.summary", tokens=len(explorer.ids), prompt_tokens=len(explorer.prompt_ids),
             window=explorer.window, vocab=dist.vocab_size, entropy=dist.entropy_bits,
             choices=2 ** dist.entropy_bits, temperature=dist.settings.temperature,
             filtered_entropy=dist.filtered_entropy_bits, kept=dist.kept, greedy=top.token,
             probability=percent(top.probability)) + _tie_note(dist)


def _tie_note(dist: nt.Distribution) -> str:
    k = dist.settings.top_k
    if not k or dist.kept_by_top_k <= k:
        return ""
    return "  \n" + t("explorer.top_k_ties", kept=dist.kept_by_top_k, k=k)


def _status(c: nt.Candidate) -> str:
    if not c.in_top_k:
        return "cut by top-k"
    if not c.in_top_p:
        return "cut by top-p"
    return "kept" if c.in_min_p else "cut by min-p"


def chart_frame(dist: nt.Distribution) -> pd.DataFrame:
    rows = [{"token": f"{c.rank}. {c.token}", "probability": c.probability, "status": _status(c)}
            for c in dist.candidates]
    return pd.DataFrame(rows, columns=["token", "probability", "status"])


def table_frame(dist: nt.Distribution) -> pd.DataFrame:
    tick = lambda ok: "✓" if ok else "✗"  # noqa: E731
    rows = [
        [c.rank, c.token, c.id, round(c.probability, 5), round(c.logit, 3), round(c.cumulative, 5),
         tick(c.in_top_k), tick(c.in_top_p), tick(c.in_min_p), round(c.final_probability, 5)]
        for c in dist.candidates
    ]
    return pd.DataFrame(rows, columns=TABLE_HEADERS)


def history_frame(explorer: nt.ExplorerState) -> pd.DataFrame:
    rows = [[number, s.token, s.token_id, round(s.probability, 5), s.rank, s.how]
            for number, s in enumerate(explorer.steps, start=1)]
    return pd.DataFrame(rows, columns=HISTORY_HEADERS)


def text_so_far(explorer: nt.ExplorerState, tokenizer) -> list[tuple[str, str | None]]:
    prompt = tokenizer.decode(explorer.prompt_ids, skip_special_tokens=False)
    added = tokenizer.decode(explorer.ids[len(explorer.prompt_ids):], skip_special_tokens=False)
    return [(prompt, None), (added, "generated")] if added else [(prompt, None)]


def surprise_views(explorer: nt.ExplorerState, tokenizer) -> tuple[list[tuple[str, float]], str]:
    """Prompt tokens scored by surprisal (redder = less expected), and the perplexity line."""
    surprise = nt.prompt_surprise(tokenizer, explorer)
    scored = [(label, 0.0 if p is None else min(1.0, -math.log2(max(p, 1e-30)) / SURPRISE_FULL_BITS))
              for label, p in surprise.pieces]
    if surprise.perplexity is None:
        return scored, t("explorer.one_token_no_perplexity")
    worst = ", ".join(f"`{label}` ({percent(p)})" for label, p in surprise.most_surprising)
    return scored, t("explorer.perplexity", perplexity=surprise.perplexity, worst=worst)


# --- sampling stages and the temperature sweep ----------------------------------------------
def stages_html(stages: sampling_stages.SamplingStages) -> str:
    """One row per candidate, one column per stage; a removed token is greyed and struck out."""
    head = "".join(f'<th style="{CELL}">{html.escape(name)}</th>' for name in ["rank", "token", *stages.stages])
    kept = "".join(f'<td style="{CELL};color:#555">{t("explorer.left_count", count=n)}</td>' for n in stages.kept_per_stage)
    rows = []
    for row in stages.rows:
        removed = row.removed_by is not None
        style = "color:#9ca3af;text-decoration:line-through" if removed else ""
        cells = "".join(
            f'<td style="{CELL};{style}">{t("explorer.cut") if p is None else percent(p)}</td>' for p in row.probabilities)
        title = t("explorer.removed_by", stage=row.removed_by) if removed else t("explorer.sampling_can_pick")
        rows.append(f'<tr title="{title}" class="{"removed" if removed else "kept"}"><td style="{CELL}">{row.rank}</td>'
                    f'<td style="{CELL};{style}">{html.escape(row.token)}</td>{cells}</tr>')
    return (f'<table class="sampling-stages" style="border-collapse:collapse"><tr>{head}</tr>'
            f'<tr><td style="{CELL}"></td><td style="{CELL}"></td>{kept}</tr>{"".join(rows)}</table>')


def sweep_frame(points: list[sampling_stages.SweepPoint]) -> pd.DataFrame:
    return pd.DataFrame(
        [{"temperature": p.temperature, "entropy (bits)": p.entropy_bits,
          "effective choices (2^H)": p.effective_choices}
         for p in points])


# --- logit lens -------------------------------------------------------------------------------
def _heat(p: float) -> str:
    """White to indigo by probability (square-root scale, so small ones still show)."""
    strength = math.sqrt(max(0.0, min(1.0, p)))
    red, green = int(255 - 176 * strength), int(255 - 185 * strength)
    return f"rgb({red},{green},{int(255 - 26 * strength)})"


def lens_html(lens: logit_lens.LogitLens) -> str:
    """Layers down, the final layer's top tokens across, cells shaded by probability."""
    names = ["layer", *lens.candidate_tokens, "chosen rank"]
    head = "".join(f'<th style="{CELL}">{html.escape(t)}</th>' for t in names)
    rows = []
    for layer, probabilities in zip(lens.layers, lens.probabilities, strict=True):
        cells = "".join(f'<td style="{CELL};background:{_heat(p)};color:{"#fff" if p > 0.5 else "#111"}" '
                        f'title="{percent(p)}">{percent(p)}</td>' for p in probabilities)
        name = "embeddings" if layer.layer == 0 else str(layer.layer)
        rows.append(f'<tr><td style="{CELL}">{name}</td>{cells}<td style="{CELL}">{layer.chosen_rank:,}</td></tr>')
    body = "".join(reversed(rows))  # the last layer on top, next to the header
    return f'<table class="logit-lens" style="border-collapse:collapse"><tr>{head}</tr>{body}</table>'


def lens_frame(lens: logit_lens.LogitLens) -> pd.DataFrame:
    return pd.DataFrame([{"layer": layer.layer, "probability": layer.chosen_probability,
                          "rank": layer.chosen_rank} for layer in lens.layers])


def lens_markdown(lens: logit_lens.LogitLens, loaded: LoadedModel) -> str:
    final = lens.layers[-1]
    first_top3 = next((layer.layer for layer in lens.layers if layer.chosen_rank <= 3), None)
    found = {"token": lens.chosen_token, "id": lens.chosen_id, "rank": final.chosen_rank,
             "probability": percent(final.chosen_probability)}
    line = (t("explorer.lens_summary", **found) if first_top3 is None
            else t("explorer.lens_summary_top3", **found, layer=first_top3))
    return line + model_note(loaded)


# --- attention --------------------------------------------------------------------------------
def attention_html(attended: attention.AttentionMap) -> str:
    """Layers down, the text's tokens across: how much the last position attends to each."""
    head = "".join(f'<th style="{CELL}">{html.escape(t)}</th>' for t in ["layer", *attended.tokens])
    rows = []
    for index, weights in enumerate(attended.weights, start=1):
        cells = "".join(f'<td style="{CELL};background:{_heat(w)};color:{"#fff" if w > 0.5 else "#111"}" '
                        f'title="{w:.3f}">{w:.2f}</td>' for w in weights)
        rows.append(f'<tr><td style="{CELL}">{index}</td>{cells}</tr>')
    return f'<table class="attention" style="border-collapse:collapse"><tr>{head}</tr>{"".join(rows)}</table>'


def attention_markdown(attended: attention.AttentionMap, loaded: LoadedModel) -> str:
    shape = {"layers": attended.layers, "heads": attended.heads}
    line = (t("explorer.attention_summary_mean", **shape) if attended.head is None
            else t("explorer.attention_summary_head", **shape, head=attended.head))
    return line + model_note(loaded)


# --- beam search ------------------------------------------------------------------------------
def beam_tree_html(result: beam_search.BeamSearch) -> str:
    """The search as nested lists: kept tokens bold, dropped ones greyed, with log-probabilities."""
    children: dict[int | None, list[beam_search.BeamNode]] = {}
    for node in result.nodes:
        children.setdefault(node.parent, []).append(node)

    def branch(parent: int | None) -> str:
        items = []
        for node in sorted(children.get(parent, []), key=lambda n: (not n.kept, -n.path_logprob)):
            style = "font-weight:600" if node.kept else "color:#9ca3af"
            items.append(f'<li class="{"kept" if node.kept else "dropped"}" style="{style}">'
                         f'<code>{html.escape(node.token)}</code> {node.logprob:.2f} (path {node.path_logprob:.2f})'
                         + (branch(node.index) if node.kept else "") + "</li>")
        return f'<ul style="margin:0 0 0 1em;padding:0">{"".join(items)}</ul>' if items else ""

    return f'<div class="beam-tree">{branch(None)}</div>'


def beams_markdown(result: beam_search.BeamSearch, loaded: LoadedModel) -> str:
    settings = result.settings
    return t("explorer.beams_summary", beams=settings["num_beams"], length=settings["length"],
             penalty=settings["length_penalty"], seed=settings["seed"]) + model_note(loaded)


def beams_frame(result: beam_search.BeamSearch) -> pd.DataFrame:
    rows = [[f"beam {i}", nt.visible_text(b.text), round(b.score, 4) if b.score is not None else None]
            for i, b in enumerate(result.beams, start=1)]
    rows.append(["greedy", nt.visible_text(result.greedy.text), None])
    rows.append(["sampled", nt.visible_text(result.sampled.text), None])
    return pd.DataFrame(rows, columns=BEAM_HEADERS)


# --- scoring ------------------------------------------------------------------------------------
def score_views(
    result: scoring.ContinuationScore, loaded: LoadedModel
) -> tuple[str, list[tuple[str, float]], pd.DataFrame]:
    summary = t("explorer.score_summary", probability=result.probability, bits=result.surprise_bits,
                tokens=len(result.tokens), perplexity=result.perplexity) + model_note(loaded)
    surprise = [(t.token, min(1.0, t.surprise_bits / SURPRISE_FULL_BITS)) for t in result.tokens]
    table = pd.DataFrame([[t.token, t.id, round(t.probability, 6), t.rank, round(t.surprise_bits, 2)]
                          for t in result.tokens], columns=SCORE_HEADERS)
    return summary, surprise, table


# --- compare ------------------------------------------------------------------------------------
def compare_views(
    result: compare.Comparison, left: LoadedModel, right: LoadedModel
) -> tuple[str, pd.DataFrame, pd.DataFrame]:
    def frame(dist: nt.Distribution) -> pd.DataFrame:
        return pd.DataFrame([[c.rank, c.token, c.id, round(c.probability, 5)] for c in dist.candidates],
                            columns=COMPARE_HEADERS)

    left_name, right_name = ((t("explorer.prompt_a"), t("explorer.prompt_b")) if left is right
                             else (left.name, right.name))
    summary = (t("explorer.compare_summary", left=left_name, right=right_name,
                 left_right=result.kl_left_right_bits, right_left=result.kl_right_left_bits)
               + model_note(left) + ("" if left is right else model_note(right)))
    return summary, frame(result.left), frame(result.right)


# --- branches -------------------------------------------------------------------------------------
def branches_markdown(walk: session.ExplorerSession, loaded: LoadedModel) -> str:
    lines = []

    def add(name: str, depth: int) -> None:
        branch = walk.branches[name]
        text = nt.visible_text(session.branch_text(loaded, walk, name)) or t("explorer.prompt_only")
        marker = t("explorer.active_marker") if name == walk.active else ""
        where = t("explorer.forks_after", step=branch.fork_at) if branch.parent else ""
        lines.append(f"{'  ' * depth}- **{name}**{where}: `{text[-80:]}`{marker}")
        for child in (b.name for b in walk.branches.values() if b.parent == name):
            add(child, depth + 1)

    add("main", 0)
    return "\n".join(lines)
