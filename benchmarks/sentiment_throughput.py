"""Sentiment throughput (classifier and zero-shot) and zero-shot accuracy.

Run: `python -m benchmarks.sentiment_throughput [--threads 1] [--texts 128]`.

* Classifier mode: the tiny random DistilBERT (testing/tiny_models.py, built into a temporary
  folder, loaded through the app's ModelCache), texts one at a time vs batched.
* Zero-shot mode: the embedded SmolLM2-135M-Instruct (the offline chat model), labels
  "positive, negative", one text per call vs all texts in one call (padded batches).
* Zero-shot with positive/negative (4 fixed demonstrations in the prompt): the shared
  prefix's KV cache reused vs the whole prompt run for every text, side by side.
* Zero-shot accuracy on tests/data/sentiment_labelled.csv, uncalibrated vs calibrated
  (real review sentences: benchmarks/zero_shot_accuracy.py).

Numbers are for this machine only; the tiny classifier measures the plumbing overhead,
not a real DistilBERT's arithmetic.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import argparse  # noqa: E402
import csv  # noqa: E402
import dataclasses  # noqa: E402
import pathlib  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402

import torch  # noqa: E402

from modules.tasks import sentiment, zero_shot  # noqa: E402
from modules.config import EMBEDDED_MODEL, Settings  # noqa: E402
from modules.engine.model_cache import ModelCache, ModelKind  # noqa: E402
from testing.tiny_models import ENGLISH_CORPUS, build_tiny_distilbert  # noqa: E402

LABELLED = pathlib.Path(__file__).resolve().parent.parent / "tests" / "data" / "sentiment_labelled.csv"


def labelled_rows() -> list[dict[str, str]]:
    with LABELLED.open(encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def texts_per_second(run: Callable[[list[str]], list], texts: list[str]) -> float:
    """Best of two runs."""
    best = float("inf")
    for _ in range(2):
        started = time.perf_counter()
        results = run(texts)
        best = min(best, time.perf_counter() - started)
        assert len(results) == len(texts)
    return len(texts) / best


def one_by_one(classify: Callable[[list[str]], list]) -> Callable[[list[str]], list]:
    return lambda texts: [classify([text])[0] for text in texts]


def accuracy(rows, results, scores_of) -> float:
    right = sum(max(scores_of(r), key=scores_of(r).get) == row["label"] for r, row in zip(results, rows))
    return right / len(rows)


def prompt_prefix_rates(chat, texts: list[str]) -> tuple[float, float]:
    """Texts/s for positive/negative (4 demonstrations: a long shared prefix), the prefix's
    KV cache computed once per batch vs the whole prompt run for every text."""
    labels = zero_shot.parse_labels("positive, negative")
    layout = zero_shot.method_for(labels).layouts[0]  # the 4-demo layout
    before, after = zero_shot._prompt_halves(chat, labels, layout.frame, layout.demonstrations)

    def probabilities(batch: list[str], reuse: bool):
        prompts = [zero_shot._text_ids(chat, t, zero_shot.MAX_TEXT_TOKENS)[0] + after for t in batch]
        if reuse:
            return zero_shot._label_probabilities(chat, prompts, labels, before)
        return zero_shot._label_probabilities(chat, [before + p for p in prompts], labels)

    return (texts_per_second(lambda batch: probabilities(batch, True), texts),
            texts_per_second(lambda batch: probabilities(batch, False), texts))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (1: steady numbers on a shared machine)")
    parser.add_argument("--texts", type=int, default=128, help="texts for classifier mode")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = labelled_rows()
    sentences = [r["text"] for r in rows]
    corpus = [ENGLISH_CORPUS[i % len(ENGLISH_CORPUS)] for i in range(args.texts)]
    table: list[tuple[str, str, float]] = []

    with tempfile.TemporaryDirectory() as folder:
        settings = dataclasses.replace(Settings(offline=True), max_loaded_models=4)
        cache = ModelCache(settings)
        classifier = sentiment.load_classifier(cache, str(build_tiny_distilbert(folder)))
        classify = lambda texts: sentiment.classify(classifier, texts)  # noqa: E731
        classify(corpus[:8])  # warm-up
        table.append(("classifier (tiny DistilBERT)", "one by one",
                      texts_per_second(one_by_one(classify), corpus)))
        table.append(("classifier (tiny DistilBERT)", "batched",
                      texts_per_second(classify, corpus)))

    chat = cache.get(EMBEDDED_MODEL, ModelKind.CAUSAL_LM)
    labels = "positive, negative"
    score = lambda texts: zero_shot.zero_shot(chat, texts, labels)  # noqa: E731
    score(sentences[:4])  # warm-up
    table.append(("zero-shot (SmolLM2-135M, 2 labels)", "one by one",
                  texts_per_second(one_by_one(score), sentences[:16])))
    table.append(("zero-shot (SmolLM2-135M, 2 labels)", "batched",
                  texts_per_second(score, sentences)))
    results = score(sentences)
    prefix_cached = prompt_prefix_rates(chat, sentences)
    table.append(("zero-shot, demos' KV cache reused", "batched", prefix_cached[0]))
    table.append(("zero-shot, whole prompt every time", "batched", prefix_cached[1]))

    dtype = str(chat.dtype).removeprefix("torch.")
    print(f"\nSentiment throughput on {chat.device.type}, {args.threads} thread(s); "
          f"classifier: {len(corpus)} corpus sentences; zero-shot: {len(sentences)} labelled "
          f"sentences ({dtype}; one-by-one on the first 16)\n")
    print(f"| {'mode':<36} | {'calls':<10} | {'texts/s':>8} |")
    print(f"|{'-' * 38}|{'-' * 12}|{'-' * 10}|")
    for mode, calls, rate in table:
        print(f"| {mode:<36} | {calls:<10} | {rate:>8.1f} |")
    print(f"\nZero-shot accuracy on {LABELLED.name} ({len(rows)} sentences, balanced)\n")
    print(f"| {'scores':<12} | {'accuracy':>8} |")
    print(f"|{'-' * 14}|{'-' * 10}|")
    print(f"| {'uncalibrated':<12} | {accuracy(rows, results, lambda r: r.raw_scores):>8.0%} |")
    print(f"| {'calibrated':<12} | {accuracy(rows, results, lambda r: r.scores):>8.0%} |")


if __name__ == "__main__":
    main()
