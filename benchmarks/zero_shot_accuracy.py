"""Zero-shot sentiment accuracy on real review sentences: which methods from the literature help.

Run: `HF_HUB_OFFLINE=1 python -m benchmarks.zero_shot_accuracy [--limit N] [--threads 2]`.

The embedded SmolLM2-135M-Instruct, labels "positive, negative", on
tests/data/movie_review_sentences.csv (400 Rotten Tomatoes sentences rated by people, from the
vaderSentiment package; see tests/data/README.md) and on our own smoke set
tests/data/sentiment_labelled.csv. Each prompt layout (chat template or plain frame; label
name only or several label words; with or without k fixed demonstrations written here, never
taken from the evaluation data) is scored once, and three read-outs come from that pass:
raw, contextual calibration (prior from "N/A", "", "[MASK]", averaged; Zhao et al., 2021)
and domain-conditional PMI (prior from the answer's words alone; Holtzman et al., 2021).
Accuracy with a 95 % Wilson interval.
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
from modules.tasks.zero_shot import CHAT_FRAME, REVIEW_FRAME, Frame, Label, Method  # noqa: E402

DATA = pathlib.Path(__file__).resolve().parent.parent / "tests" / "data"
DATASETS = ("movie_review_sentences.csv", "sentiment_labelled.csv")
HOLDOUT = "movie_review_sentences_holdout.csv"  # looked at only to confirm the choice
NAMES_ONLY = [Label("positive", ("positive",)), Label("negative", ("negative",))]
DEMOS = zero_shot.SENTIMENT.demonstrations  # written here, never from evaluation data


@dataclass(frozen=True)
class Layout:
    name: str
    labels: str | Sequence[Label]
    frame: Frame
    demonstrations: tuple[tuple[str, str], ...] = ()


LAYOUTS = (
    Layout("chat, label names", NAMES_ONLY, CHAT_FRAME),
    Layout("chat, label words", "positive, negative", CHAT_FRAME),
    Layout("plain 'Review: … Sentiment:', label words", "positive, negative", REVIEW_FRAME),
    Layout("chat, label words, 4 demos", "positive, negative", CHAT_FRAME, DEMOS),
    Layout("plain 'Review:', label words, 4 demos", "positive, negative", REVIEW_FRAME, DEMOS),
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


def readouts(loaded: LoadedModel, layout: Layout, texts: list[str]) -> dict[str, torch.Tensor]:
    """Label probabilities (texts, labels), in label order, for raw / calibrated / PMI."""
    labels = zero_shot.parse_labels(layout.labels)
    method = Method(layout.frame, layout.demonstrations, zero_shot.CONTENT_FREE)
    results = zero_shot.zero_shot(loaded, texts, labels, method=method)
    names = zero_shot.label_names(labels)
    raw = torch.tensor([[r.raw_scores[n] for n in names] for r in results])
    calibrated = torch.tensor([[r.scores[n] for n in names] for r in results])
    pmi = zero_shot.divide_out_prior(raw, zero_shot.domain_prior(loaded, labels, layout.frame))
    return {"raw": raw, "calibrated (content-free)": calibrated, "domain PMI": pmi}


def report(label: str, predictions: torch.Tensor, gold: list[int], seconds: float | None) -> str:
    right = int((predictions.argmax(-1) == torch.tensor(gold)).sum())
    low, high = wilson(right, len(gold))
    speed = f"{len(gold) / seconds:.1f}" if seconds else ""
    return f"| {label:<66} | {right / len(gold):>6.1%} | {low:.1%}–{high:.1%} | {speed:>7} |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=None, help="first N sentences of each set")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--layouts", default="", help="comma-separated layout numbers (1-based)")
    parser.add_argument("--holdout", action="store_true",
                        help=f"score {HOLDOUT} instead (to confirm a choice, not to make one)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    chosen = [LAYOUTS[int(i) - 1] for i in args.layouts.split(",") if i] or list(LAYOUTS)
    loaded = ModelCache(Settings(offline=True)).get(EMBEDDED_MODEL, ModelKind.CAUSAL_LM)
    print(f"\n{loaded.description}, {torch.get_num_threads()} thread(s), "
          f"CPU capability {torch.backends.cpu.get_cpu_capability()}")
    for dataset in [HOLDOUT] if args.holdout else DATASETS:
        rows = rows_of(dataset, args.limit)
        texts = [r["text"] for r in rows]
        gold = [0 if r["label"] == "positive" else 1 for r in rows]
        print(f"\n{dataset}: {len(rows)} sentences, {sum(g == 0 for g in gold)} positive\n")
        print(f"| {'prompt layout → read-out':<66} | {'acc':>6} | {'95 % CI':<11} | {'texts/s':>7} |")
        print(f"|{'-' * 68}|{'-' * 8}|{'-' * 13}|{'-' * 9}|")
        for layout in chosen:
            started = time.perf_counter()
            outs = readouts(loaded, layout, texts)
            seconds = time.perf_counter() - started
            for index, (name, probs) in enumerate(outs.items()):
                print(report(f"{layout.name} → {name}", probs, gold, seconds if index == 0 else None),
                      flush=True)


if __name__ == "__main__":
    main()
