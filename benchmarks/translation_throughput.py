"""Sentences per second, one at a time vs batched, on the tiny random Marian model.

Run: `python -m benchmarks.translation_throughput [--sentences 128] [--threads 1]
[--dtype auto]`. The model is built with testing/tiny_models.py into a temporary
folder and loaded through the app's ModelCache, then the same sentences are
translated with `Translator.translate_pieces` at several batch sizes. The random
model never emits end-of-sentence, so every sentence runs to its output budget
(3 x source tokens + 16): the work per sentence is fixed, which makes the runs
comparable (a real opus-mt model stops earlier). Numbers are for this machine only.

The app uses batches of 16 (modules.tasks.translation.BATCH_SIZE): most of the gain over one
at a time, while a long text still streams every 16 sentences; larger batches win more
here only because the tiny model's cost is per-step overhead, not arithmetic.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import torch  # noqa: E402

from modules.config import Settings  # noqa: E402
from modules.engine.model_cache import ModelCache  # noqa: E402
from modules.tasks.sentences import split_sentences  # noqa: E402
from modules.tasks.translation import BATCH_SIZE, load_translator  # noqa: E402
from testing.tiny_models import CORPUS, build_tiny_marian  # noqa: E402

BATCH_SIZES = (1, 4, 8, 16, 32, 64)


def corpus_sentences(count: int) -> list[str]:
    sentences = [s for line in CORPUS for s in split_sentences(line)]
    return [sentences[i % len(sentences)] for i in range(count)]


def measure(translator, sentences: list[str], batch_size: int) -> float:
    """Seconds to translate all sentences at this batch size (best of two runs)."""
    translator.batch_size = batch_size
    times = []
    for _ in range(2):
        started = time.perf_counter()
        results = translator.translate_pieces(sentences)
        times.append(time.perf_counter() - started)
        assert len(results) == len(sentences) and all(results)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sentences", type=int, default=128)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (1: steady numbers on a shared machine)")
    parser.add_argument("--dtype", default="auto", help="auto (the app's choice), float32, bfloat16")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as folder:
        model_dir = build_tiny_marian(folder)
        settings = dataclasses.replace(
            Settings(offline=True), dtype=args.dtype, translation_models={"zh-en": str(model_dir)}
        )
        translator = load_translator(ModelCache(settings), settings, "zh-en")
        sentences = corpus_sentences(args.sentences)
        translator.translate_pieces(sentences[:8])  # warm-up
        rows = [(size, measure(translator, sentences, size)) for size in BATCH_SIZES]

    print(f"\n{len(sentences)} sentences (English + Chinese corpus), tiny Marian, "
          f"{translator.loaded.device.type}, {str(translator.loaded.dtype).removeprefix('torch.')}, "
          f"{args.threads} thread(s)\n")
    print(f"| {'batch size':>10} | {'seconds':>8} | {'sentences/s':>11} | {'vs one at a time':>16} |")
    print(f"|{'-' * 12}|{'-' * 10}|{'-' * 13}|{'-' * 18}|")
    single = rows[0][1]
    for size, seconds in rows:
        mark = "  <- app default" if size == BATCH_SIZE else ""
        print(f"| {size:>10} | {seconds:>8.2f} | {len(sentences) / seconds:>11.1f} | "
              f"{single / seconds:>15.1f}x |{mark}")


if __name__ == "__main__":
    main()
