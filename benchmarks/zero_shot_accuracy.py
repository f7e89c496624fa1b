"""Zero-shot accuracy on real review sentences and on 3 issue labels: which methods help.

Run: `HF_HUB_OFFLINE=1 python -m benchmarks.zero_shot_accuracy [--limit N] [--threads 1]`.

The embedded SmolLM2-135M-Instruct, labels "positive, negative", on
tests/data/movie_review_sentences.csv (400 Rotten Tomatoes sentences rated by people, from the
vaderSentiment package; see tests/data/README.md) and on our own smoke set
tests/data/sentiment_labelled.csv. Each prompt layout (chat template or plain frame; label
name only or several label words; with or without k fixed demonstrations written here, never
taken from the evaluation data) is scored once, and four read-outs come from that pass:
raw, contextual calibration (prior from "N/A", "", "[MASK]", averaged; Zhao et al., 2021),
domain-conditional PMI (prior from the answer's words alone; Holtzman et al., 2021) and
generative calibration (prior averaged over texts the model writes in the prompt; Jiang et
al., 2023). Then the same for "bug report, feature request, praise" on
tests/data/issue_labels.csv (36 texts written here, 12 per label). Accuracy with a 95 %
Wilson interval.

After each sentiment table, the app's positive/negative method (zero_shot.SENTIMENT: the
4-demo and 8-demo layouts, each with domain PMI, calibrated probabilities averaged) and its
4-demo layout alone run through zero_shot.zero_shot side by side: accuracy and texts/s
(batched, priors computed beforehand). `--methods-only` prints just that.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import argparse  # noqa: E402
import csv  # noqa: E402
import math  # noqa: E402
import pathlib  # noqa: E402
import time  # noqa: E402
from collections.abc import Sequence  # noqa: E402
from dataclasses import dataclass  # noqa: E402

import torch  # noqa: E402

from modules.config import EMBEDDED_MODEL, Settings  # noqa: E402
from modules.engine.model_cache import LoadedModel, ModelCache, ModelKind  # noqa: E402
from modules.tasks import zero_shot  # noqa: E402
from modules.tasks.zero_shot import (  # noqa: E402
    CHAT_FRAME, FORMAT_DEMONSTRATIONS, LABELS_FRAME, REVIEW_FRAME, Frame, Label, Layout, Method,
)

DATA = pathlib.Path(__file__).resolve().parent.parent / "tests" / "data"
DATASETS = ("movie_review_sentences.csv", "sentiment_labelled.csv")
HOLDOUT = "movie_review_sentences_holdout.csv"  # looked at only to confirm the choice
NAMES_ONLY = [Label("positive", ("positive",)), Label("negative", ("negative",))]
DEMOS = zero_shot.SENTIMENT_DEMONSTRATIONS  # written here, never from evaluation data
DEMOS_8 = zero_shot.MORE_SENTIMENT_DEMONSTRATIONS  # 4 more, written here too, still balanced
INTERLEAVED_TEXTS = 64  # the two methods take turns on slices of this many texts
APP_METHODS = {  # positive/negative, run side by side
    "4-demo layout alone, domain PMI (the app's before)": Method((zero_shot.SENTIMENT_4_DEMOS,)),
    "ensemble: 4-demo + 8-demo layouts, domain PMI (the app's)": zero_shot.SENTIMENT,
}
ISSUES = "issue_labels.csv"
ISSUE_LABELS = "bug report, feature request, praise"


@dataclass(frozen=True)
class Candidate:
    """A prompt layout to score, named for the table."""

    name: str
    labels: str | Sequence[Label]
    frame: Frame
    demonstrations: tuple[zero_shot.Demonstration, ...] = ()


LAYOUTS = (
    Candidate("chat, label names", NAMES_ONLY, CHAT_FRAME),
    Candidate("chat, label words", "positive, negative", CHAT_FRAME),
    Candidate("plain 'Review: … Sentiment:', label words", "positive, negative", REVIEW_FRAME),
    Candidate("chat, label words, 4 demos", "positive, negative", CHAT_FRAME, DEMOS),
    Candidate("plain 'Review:', label words, 4 demos", "positive, negative", REVIEW_FRAME, DEMOS),
    Candidate("plain 'Review:', label words, 8 demos", "positive, negative", REVIEW_FRAME, DEMOS_8),
    Candidate("'Labels:…Label:', 3 format demos (any labels)", "positive, negative", LABELS_FRAME,
           FORMAT_DEMONSTRATIONS),
)
ISSUE_LAYOUTS = (
    Candidate("chat 'The text is' (before)", ISSUE_LABELS, CHAT_FRAME),
    Candidate("plain 'Labels:…Label:'", ISSUE_LABELS, LABELS_FRAME),
    Candidate("'Labels:…Label:', 3 format demos (now)", ISSUE_LABELS, LABELS_FRAME,
           FORMAT_DEMONSTRATIONS),
)


def wilson(right: int, total: int, z: float = 1.96) -> tuple[float, float]:
    """95 % Wilson score interval for a proportion."""
    p = right / total
    centre = (p + z * z / (2 * total)) / (1 + z * z / total)
    half = z * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total)) / (1 + z * z / total)
    return centre - half, centre + half


def rows_of(name: str, limit: int | None) -> list[dict[str, str]]:
    with (DATA / name).open(encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    return rows[:limit] if limit else rows


def readouts(loaded: LoadedModel, candidate: Candidate, texts: list[str]) -> dict[str, torch.Tensor]:
    """Label probabilities (texts, labels), in label order, raw and with each prior divided out."""
    labels = zero_shot.parse_labels(candidate.labels)
    layout = Layout(candidate.frame, candidate.demonstrations)
    results = zero_shot.zero_shot(loaded, texts, labels, method=Method((layout,)), calibrate=False)
    raw = probabilities(results, zero_shot.label_names(labels), raw=True)
    priors = {
        "content-free": zero_shot.content_free_distribution(loaded, labels, layout),
        "domain PMI": zero_shot.domain_prior(loaded, labels, layout.frame),
        "generative": zero_shot.generated_prior(loaded, labels, layout),
    }
    return {"raw": raw} | {name: zero_shot.divide_out_prior(raw, prior)
                           for name, prior in priors.items()}


def probabilities(results: list[zero_shot.ZeroShotResult], names: list[str],
                  raw: bool = False) -> torch.Tensor:
    return torch.tensor([[(r.raw_scores if raw else r.scores)[n] for n in names] for r in results])


def report(label: str, predictions: torch.Tensor, gold: list[int], seconds: float | None) -> str:
    """One table row; `answers` counts how often each label was chosen (a collapse shows)."""
    chosen = predictions.argmax(-1)
    right = int((chosen == torch.tensor(gold)).sum())
    low, high = wilson(right, len(gold))
    speed = f"{len(gold) / seconds:.1f}" if seconds else ""
    answers = "/".join(str(n) for n in torch.bincount(chosen, minlength=predictions.shape[1]).tolist())
    return (f"| {label:<66} | {right:>3}/{len(gold):<3} {right / len(gold):>6.1%} | "
            f"{low:.1%}–{high:.1%} | {answers:>9} | {speed:>7} |")


def header(dataset: str, rows: list[dict[str, str]], names: list[str], first: str) -> list[int]:
    """Print the table's title and header; the gold label indices."""
    gold = [names.index(r["label"]) for r in rows]
    counts = "/".join(str(gold.count(i)) for i in range(len(names)))
    print(f"\n{dataset}: {len(rows)} texts ({'/'.join(names)}: {counts})\n")
    print(f"| {first:<66} | {'right':>14} | {'95 % CI':<11} | {'answers':>9} | {'texts/s':>7} |")
    print(f"|{'-' * 68}|{'-' * 16}|{'-' * 13}|{'-' * 11}|{'-' * 9}|")
    return gold


def table(loaded: LoadedModel, dataset: str, candidates: Sequence[Candidate],
          limit: int | None) -> None:
    rows = rows_of(dataset, limit)
    names = zero_shot.label_names(zero_shot.parse_labels(candidates[0].labels))
    gold = header(dataset, rows, names, "prompt layout → read-out")
    for candidate in candidates:
        started = time.perf_counter()
        outs = readouts(loaded, candidate, [r["text"] for r in rows])
        seconds = time.perf_counter() - started  # includes the three priors, once each
        for index, (name, probs) in enumerate(outs.items()):
            print(report(f"{candidate.name} → {name}", probs, gold, seconds if index == 0 else None),
                  flush=True)


def app_methods_table(loaded: LoadedModel, dataset: str, limit: int | None) -> None:
    """The app's positive/negative method against its 4-demo layout alone, in one run: priors
    first (cached on the model, as in the app), then each method times the same texts."""
    rows = rows_of(dataset, limit)
    labels = zero_shot.parse_labels("positive, negative")
    names = zero_shot.label_names(labels)
    gold = header(dataset, rows, names, "the app's positive/negative method (zero_shot.zero_shot)")
    texts = [r["text"] for r in rows]
    for method in APP_METHODS.values():
        for layout in method.layouts:
            zero_shot.label_prior(loaded, labels, layout)
    results = {name: [] for name in APP_METHODS}
    seconds = dict.fromkeys(APP_METHODS, 0.0)
    for start in range(0, len(texts), INTERLEAVED_TEXTS):  # a load change hits both alike
        for name, method in APP_METHODS.items():
            started = time.perf_counter()
            results[name] += zero_shot.zero_shot(
                loaded, texts[start : start + INTERLEAVED_TEXTS], labels, method=method)
            seconds[name] += time.perf_counter() - started
    for name in APP_METHODS:
        print(report(name, probabilities(results[name], names), gold, seconds[name]), flush=True)
    before, ensemble = seconds.values()
    print(f"\nensemble speed / 4-demo layout's: {before / ensemble:.2f}x "
          f"({torch.get_num_threads()} thread(s), batches of 16 texts, interleaved every "
          f"{INTERLEAVED_TEXTS})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=None, help="first N sentences of each set")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--layouts", default="", help="comma-separated layout numbers (1-based)")
    parser.add_argument("--methods-only", action="store_true",
                        help="only the app's positive/negative method vs its 4-demo layout")
    parser.add_argument("--holdout", action="store_true",
                        help=f"score {HOLDOUT} instead (to confirm a choice, not to make one)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    chosen = [LAYOUTS[int(i) - 1] for i in args.layouts.split(",") if i] or list(LAYOUTS)
    loaded = ModelCache(Settings(offline=True)).get(EMBEDDED_MODEL, ModelKind.CAUSAL_LM)
    print(f"\n{loaded.description}, {torch.get_num_threads()} thread(s), "
          f"CPU capability {torch.backends.cpu.get_cpu_capability()}")
    for dataset in [HOLDOUT] if args.holdout else DATASETS:
        if not args.methods_only:
            table(loaded, dataset, chosen, args.limit)
        app_methods_table(loaded, dataset, args.limit)
    if not args.holdout and not args.layouts and not args.methods_only:
        table(loaded, ISSUES, ISSUE_LAYOUTS, args.limit)


if __name__ == "__main__":
    main()
