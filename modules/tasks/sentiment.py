"""Sentiment with a sequence-classification model: scores, word importance, batches.

Plain values in and out (no Gradio), so the tab, the HTTP API and the benchmarks share
it. Models come from the app's `ModelCache`; this module never loads one itself.

Long texts are never cut silently: a text longer than the model's window is split into
overlapping windows (the tokenizer's own `return_overflowing_tokens`), each window is
scored, and the probabilities are averaged weighted by each window's token count; the
result carries a notice saying so.
"""

from __future__ import annotations

import csv
import io
import math
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from modules.errors import (
    InvalidInputError,
    InvalidModelError,
    ModelError,
    ModelOfflineError,
    require_text,
)
from modules.engine.compute import run_model_work
from modules.engine.callbacks import ProgressCallback
from modules.engine.model_cache import LoadedModel, ModelCache, ModelKind, StatusCallback
from modules.messages import message

FALLBACK_MAX_LENGTH = 512  # when neither tokenizer nor config says
WINDOW_OVERLAP = 1 / 8  # of the window, so a sentence cut at a border is seen whole once
MAX_WINDOWS_PER_TEXT = 64  # ~32k tokens with a 512 window; the rest is dropped, with a notice
MAX_TEXT_CHARS = 200_000
MAX_BATCH_ROWS = 2_000
MAX_EXPLAINED_SEGMENTS = 48  # occlusion runs one forward pass per segment
CHUNKS_PER_FORWARD = 16
TEXT_COLUMN_HINTS = ("text", "sentence", "review", "content", "comment", "message", "body")


@dataclass(frozen=True)
class Classification:
    """All labels with their probabilities (summing to 1), best first."""

    scores: dict[str, float]
    notice: str | None = None

    @property
    def label(self) -> str:
        return next(iter(self.scores))

    @property
    def score(self) -> float:
        return self.scores[self.label]


@dataclass(frozen=True)
class Explanation:
    """Which words pushed the prediction: (text, effect) pieces that rebuild the text.

    `effect` is in [-1, 1], scaled so the strongest word is ±1: positive means removing
    the word lowers the predicted label's probability (the word supports it), negative
    that it argues against it; None for whitespace and words that were not scored.
    """

    label: str
    pieces: list[tuple[str, float | None]]
    notice: str | None = None


# --- text checks -----------------------------------------------------------
def validated_text(text: str | None) -> str:
    """The text to classify, or a clear error for empty or absurdly long input."""
    text = require_text(text, "text").replace("\x00", "")
    if not text.strip():
        raise InvalidInputError(message("sentiment.empty_text"))
    if len(text) > MAX_TEXT_CHARS:
        raise InvalidInputError(message("sentiment.text_too_long", count=len(text), limit=MAX_TEXT_CHARS))
    return text


def max_length(loaded: LoadedModel) -> int:
    """The model's window in tokens: the smaller of what tokenizer and config allow."""
    return loaded.context_window(fallback=FALLBACK_MAX_LENGTH)


def _id2label(loaded: LoadedModel) -> list[str]:
    config = loaded.model.config
    return [str(config.id2label.get(i, f"LABEL_{i}")) for i in range(config.num_labels)]


def load_classifier(
    cache: ModelCache, ref: str, on_status: StatusCallback | None = None
) -> LoadedModel:
    """The classifier for `ref` from the shared cache, with errors that say what to do."""
    try:
        loaded = cache.get(ref, ModelKind.CLASSIFIER, on_status)
    except ModelOfflineError as error:
        raise ModelOfflineError(message("sentiment.offline_try_zero_shot", problem=error)) from error
    architectures = getattr(loaded.model.config, "architectures", None) or []
    if architectures and not any(a.endswith("ForSequenceClassification") for a in architectures):
        cache.evict(ref, ModelKind.CLASSIFIER)  # its classification head would be random
        raise InvalidModelError(message("sentiment.not_a_classifier", model=loaded.name,
                                        architecture=architectures[0]))
    return loaded


# --- classification ----------------------------------------------------------
def _windows(loaded: LoadedModel, texts: Sequence[str], window: int) -> tuple[list, list[int]]:
    """Token windows of every text (overlapping where a text is long) and their owners."""
    try:
        encoded = loaded.tokenizer(
            list(texts),
            truncation=True,
            max_length=window,
            stride=max(1, int(window * WINDOW_OVERLAP)),
            return_overflowing_tokens=True,
        )
    except Exception as error:  # a tokenizer that cannot split into windows
        raise ModelError(message("sentiment.tokenize_failed", model=loaded.name, problem=error)) from error
    owners = encoded.get("overflow_to_sample_mapping") or list(range(len(texts)))
    return list(encoded["input_ids"]), [int(o) for o in owners]


def _window_probabilities(loaded: LoadedModel, windows: list[list[int]]) -> torch.Tensor:
    """Softmax over labels for each token window, a few windows per forward pass."""
    rows = []
    order = sorted(range(len(windows)), key=lambda i: len(windows[i]))  # less padding
    for start in range(0, len(order), CHUNKS_PER_FORWARD):
        chunk = [windows[i] for i in order[start : start + CHUNKS_PER_FORWARD]]
        batch = loaded.tokenizer.pad({"input_ids": chunk}, return_tensors="pt")
        batch = {k: v.to(loaded.device) for k, v in batch.items()}
        logits = run_model_work(lambda: loaded.model(**batch).logits, loaded.lock)  # noqa: B023
        rows.append(torch.softmax(logits.float(), dim=-1).cpu())
    if not rows:
        return torch.empty(0)
    sorted_probs = torch.cat(rows)
    probs = torch.empty_like(sorted_probs)
    probs[torch.tensor(order)] = sorted_probs
    return probs


def classify(
    loaded: LoadedModel,
    texts: Sequence[str],
    on_progress: ProgressCallback | None = None,
    batch_texts: int = 64,
) -> list[Classification]:
    """Classify each text (same order); long texts are split into windows and averaged."""
    window = max_length(loaded)
    labels = _id2label(loaded)
    results: list[Classification] = []
    for start in range(0, len(texts), batch_texts):
        part = [validated_text(t) for t in texts[start : start + batch_texts]]
        windows, owners = _windows(loaded, part, window)
        probs = _window_probabilities(loaded, windows)
        for index in range(len(part)):
            mine = [w for w, owner in enumerate(owners) if owner == index]
            results.append(_aggregate(probs, windows, mine, labels, window))
        if on_progress:
            on_progress(len(results), len(texts))
    return results


def _aggregate(
    probs: torch.Tensor, windows: list, mine: list[int], labels: list[str], window: int
) -> Classification:
    kept = mine[:MAX_WINDOWS_PER_TEXT]
    weights = torch.tensor([float(len(windows[w])) for w in kept])
    mean = (probs[kept] * weights[:, None]).sum(0) / weights.sum()
    scores = dict(sorted(zip(labels, mean.tolist()), key=lambda kv: -kv[1]))
    notice = None
    if len(mine) > 1:
        notice = message("sentiment.split_windows", window=window, count=len(mine)).english()
    if len(mine) > len(kept):
        notice = message("sentiment.split_windows_capped", window=window, count=len(mine),
                       kept=len(kept)).english()
    return Classification(scores, notice)


def classify_text(loaded: LoadedModel, text: str) -> Classification:
    return classify(loaded, [text])[0]


# --- explanation (leave-one-word-out occlusion) --------------------------------
WORD = re.compile(r"\S+")


def _words_in_window(loaded: LoadedModel, words: list[str], window: int) -> int:
    """How many leading words fit in one model window (the part occlusion explains)."""
    budget = window - loaded.tokenizer.num_special_tokens_to_add(False)
    lengths = [len(ids) for ids in loaded.tokenizer(words, add_special_tokens=False)["input_ids"]]
    used = 0
    for count, length in enumerate(lengths):
        used += length
        if used > budget:
            return count
    return len(words)


def explain(
    loaded: LoadedModel, text: str, max_segments: int = MAX_EXPLAINED_SEGMENTS
) -> Explanation:
    """Occlusion: drop each word (or group of words) and see how the top label's probability moves.

    Model-agnostic and faithful to what the classifier does (no gradients needed). Only the
    part of the text that fits one window is explained; the notice says when that is not all.
    """
    text = validated_text(text)
    matches = list(WORD.finditer(text))
    words = [m.group() for m in matches]
    explained = _words_in_window(loaded, words, max_length(loaded))
    group = max(1, math.ceil(explained / max_segments))
    groups = [range(i, min(i + group, explained)) for i in range(0, explained, group)]
    head = words[:explained]
    variants = [" ".join(head)] + [
        " ".join(w for i, w in enumerate(head) if i not in g) or "." for g in groups
    ]
    windows, owners = _windows(loaded, variants, max_length(loaded))
    first = {}
    for w, owner in enumerate(owners):
        first.setdefault(owner, w)
    probs = _window_probabilities(loaded, [windows[first[v]] for v in range(len(variants))])
    labels = _id2label(loaded)
    top = int(probs[0].argmax())
    drops = (probs[0, top] - probs[1:, top]).tolist()
    scale = max((abs(d) for d in drops), default=0.0) or 1.0
    effect = {}
    for g, drop in zip(groups, drops):
        for i in g:
            effect[i] = round(drop / scale, 3)
    return Explanation(labels[top], _pieces(text, matches, effect), _explain_notice(
        explained, len(words), group))


def _pieces(
    text: str, matches: list[re.Match], effect: dict[int, float]
) -> list[tuple[str, float | None]]:
    pieces: list[tuple[str, float | None]] = []
    cursor = 0
    for i, match in enumerate(matches):
        if match.start() > cursor:
            pieces.append((text[cursor : match.start()], None))
        pieces.append((match.group(), effect.get(i)))
        cursor = match.end()
    if cursor < len(text):
        pieces.append((text[cursor:], None))
    return pieces


def _explain_notice(explained: int, total: int, group: int) -> str | None:
    if explained < total and group > 1:
        return message("sentiment.explain_partial_grouped", explained=explained, total=total,
                     group=group).english()
    if explained < total:
        return message("sentiment.explain_partial", explained=explained, total=total).english()
    if group > 1:
        return message("sentiment.explain_grouped", group=group).english()
    return None


# --- batches: lines, CSV files, result tables ---------------------------------
def split_lines(text: str | None) -> list[str]:
    """One text per non-empty line."""
    lines = [line.strip() for line in (text or "").splitlines() if line.strip()]
    if not lines:
        raise InvalidInputError(message("sentiment.empty_batch"))
    _check_rows(len(lines))
    return lines


def _check_rows(count: int) -> None:
    if count > MAX_BATCH_ROWS:
        raise InvalidInputError(message("sentiment.too_many_texts", count=count, limit=MAX_BATCH_ROWS))


def read_csv(path: str | Path) -> tuple[list[str], list[dict[str, str]]]:
    """Header and rows of a UTF-8 CSV file (delimiter sniffed), or a clear error."""
    data = Path(path).read_bytes()
    try:
        content = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise InvalidInputError(message("sentiment.csv_not_utf8")) from None
    if not content.strip():
        raise InvalidInputError(message("sentiment.csv_empty"))
    try:
        dialect = csv.Sniffer().sniff(content[:4096], delimiters=",;\t|")
    except csv.Error:
        dialect = csv.excel
    reader = csv.DictReader(io.StringIO(content), dialect=dialect)
    try:
        rows = list(reader)
    except csv.Error as error:
        raise InvalidInputError(message("sentiment.csv_unreadable", problem=error)) from None
    header = [h for h in (reader.fieldnames or []) if h is not None and h.strip()]
    if not header:
        raise InvalidInputError(message("sentiment.csv_no_header"))
    return header, rows


def guess_text_column(header: Sequence[str], rows: Sequence[dict[str, str]]) -> str:
    """The column that most likely holds the texts: a telling name, else the wordiest."""
    for hint in TEXT_COLUMN_HINTS:
        for name in header:
            if name.strip().lower() == hint:
                return name
    wordy = {name: _mean_words(rows, name) for name in header}
    best = max(wordy, key=wordy.get)
    if wordy[best] < 1:
        raise InvalidInputError(message("sentiment.csv_no_text_column"))
    return best


def _mean_words(rows: Sequence[dict[str, str]], column: str) -> float:
    sample = [str(r.get(column) or "") for r in rows[:200]]
    texts = [s for s in sample if re.search(r"[^\W\d_]", s)]  # has a letter
    return sum(len(s.split()) for s in texts) / max(1, len(sample))


def csv_texts(path: str | Path, column: str | None = None) -> tuple[str, list[str]]:
    """The column used and its non-empty texts, in file order."""
    header, rows = read_csv(path)
    column = column or guess_text_column(header, rows)
    if column not in header:
        raise InvalidInputError(message("sentiment.csv_no_such_column", column=column, known=", ".join(header)))
    texts = [str(r.get(column) or "").strip() for r in rows]
    texts = [t for t in texts if t]
    if not texts:
        raise InvalidInputError(message("sentiment.csv_column_empty", column=column))
    _check_rows(len(texts))
    return column, texts


RESULT_COLUMNS = ("text", "label", "score")


def result_rows(texts: Sequence[str], results: Sequence[Classification]) -> list[list]:
    """One [text, label, score] row per text, in input order."""
    return [[t, r.label, round(r.score, 4)] for t, r in zip(texts, results, strict=True)]


def label_counts(results: Sequence[Classification]) -> dict[str, int]:
    """How many texts got each label (labels seen in any result, most common first)."""
    counts = Counter(r.label for r in results)
    for r in results:
        for label in r.scores:
            counts.setdefault(label, 0)
    return dict(counts.most_common())


def write_results_csv(rows: Sequence[Sequence], path: str | Path) -> Path:
    """Write the result table as UTF-8 CSV (opens in spreadsheets) and return its path."""
    path = Path(path)
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(RESULT_COLUMNS)
        writer.writerows(rows)
    return path
