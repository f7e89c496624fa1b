"""The benchmark report: one run, one table, every tab.

    HF_HUB_OFFLINE=1 python -m benchmarks [--tokens 64] [--repeats 3]

Everything runs in this process on one model cache (as the app does), except the
start-up rows, which each start a fresh Python process: a cold start converts the
embedded GGUF file into a new, empty cache folder; a warm start loads that converted
copy. Side-by-side figures (bare vs chat path, cache vs fresh pass, batched vs one at a
time) are measured interleaved in the same run, so their ratios hold on a noisy shared
machine even when the absolute figures drift. The last rows use every tab through the
page's own handlers and report the process's peak memory and how often each model was
loaded. The focused benchmarks beside this file (chat_throughput, decode_speed,
explorer_step, translation_throughput, sentiment_throughput, api_throughput) go deeper.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import platform  # noqa: E402
import resource  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402

from benchmarks.chat_throughput import (  # noqa: E402
    PROMPT,
    bare_first_token,
    bare_generate,
    chat_once,
    concurrent_users,
)
from benchmarks.decode_speed import llama_bench_run, runnable_llama_benches  # noqa: E402
from benchmarks.prefix_cache import later_turn  # noqa: E402
from benchmarks.explorer_step import median_seconds, prompt_of  # noqa: E402
from benchmarks.sentiment_throughput import accuracy, labelled_rows, one_by_one, texts_per_second  # noqa: E402
from benchmarks.translation_throughput import corpus_sentences, measure  # noqa: E402
from modules.app_context import AppContext  # noqa: E402
from modules.tasks import next_token as nt  # noqa: E402
from modules.tasks import sentiment, zero_shot  # noqa: E402
from modules.config import DEFAULT_TRANSLATION_MODELS, EMBEDDED_MODEL, Settings  # noqa: E402
from modules.engine.kernels import native_step  # noqa: E402
from modules.engine.model_cache import ModelCache, ModelKind  # noqa: E402
from modules.tasks.translation import BATCH_SIZE, load_translator  # noqa: E402
from modules.ui.layout import build_demo  # noqa: E402
from testing.tiny_models import ENGLISH_CORPUS, build_tiny_distilbert, build_tiny_marian  # noqa: E402

LOAD_SCRIPT = """
import time, dataclasses
from modules.config import EMBEDDED_MODEL, Settings
from modules.engine.model_cache import ModelCache, ModelKind
settings = dataclasses.replace(Settings(offline=True), cache_dir={cache_dir!r})
started = time.perf_counter()
ModelCache(settings).get(EMBEDDED_MODEL, ModelKind.CAUSAL_LM)
print(time.perf_counter() - started)
"""


class Report:
    """Rows of (area, what, figure, compared with) printed as one table."""

    def __init__(self) -> None:
        self.rows: list[tuple[str, str, str, str]] = []

    def add(self, area: str, what: str, figure: str, compared: str = "") -> None:
        self.rows.append((area, what, figure, compared))
        print(f"  {area}: {what}: {figure} {compared}", flush=True)

    def print(self) -> None:
        header = ("area", "measure", "figure", "compared")
        widths = [max(len(row[i]) for row in [header, *self.rows]) for i in range(4)]
        line = "| " + " | ".join("{:<%d}" % w for w in widths) + " |"
        print()
        print(line.format(*header))
        print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
        for row in self.rows:
            print(line.format(*row))


def start_up(report: Report, cache_dir: str) -> None:
    """Cold start (GGUF conversion) vs warm start (converted copy), each a fresh process."""
    def load_in_new_process() -> tuple[float, float]:
        started = time.perf_counter()
        out = subprocess.run([sys.executable, "-c", LOAD_SCRIPT.format(cache_dir=cache_dir)],
                             capture_output=True, text=True, check=True,
                             cwd=Path(__file__).resolve().parent.parent)
        return float(out.stdout.strip().splitlines()[-1]), time.perf_counter() - started

    cold_load, cold_process = load_in_new_process()
    warm_load, warm_process = load_in_new_process()
    report.add("start", "cold: convert the GGUF file, then load", f"{cold_load:.1f} s",
               f"whole process {cold_process:.1f} s")
    report.add("start", "warm: load the converted copy", f"{warm_load:.2f} s",
               f"whole process {warm_process:.1f} s; {cold_load / warm_load:.0f}x faster than cold")


def chat(report: Report, loaded, tokens: int, repeats: int) -> None:
    bare_generate(loaded, PROMPT, 8)  # warm-up
    bare_runs, chat_runs, bare_ttfts = [], [], []
    for _ in range(repeats):  # interleaved
        bare_runs.append(bare_generate(loaded, PROMPT, tokens))
        chat_runs.append(chat_once(loaded, PROMPT, tokens))
        bare_ttfts.append(bare_first_token(loaded, PROMPT))
    bare_tps = statistics.median(n / s for s, n in bare_runs)
    chat_tps = statistics.median(r["tokens"] / r["seconds"] for r in chat_runs)
    llama = llama_cpp_decode()
    against = f"; {chat_tps / llama:.0%} of llama.cpp's {llama:.1f} (tg128, same run)" if llama else ""
    report.add("chat", f"bare model.generate, {tokens} tokens", f"{bare_tps:.1f} tokens/s", "")
    report.add("chat", "chat path, streamed (as users see it)", f"{chat_tps:.1f} tokens/s",
               f"{chat_tps / bare_tps:.0%} of bare generate{against}")
    report.add("chat", "time to first token", f"{statistics.median(r['ttft'] for r in chat_runs):.3f} s",
               f"bare generate {statistics.median(bare_ttfts):.3f} s")
    crowd = concurrent_users(loaded, 4, tokens)
    report.add("chat", "4 users at once, aggregate", f"{crowd['tokens'] / crowd['wall']:.1f} tokens/s",
               "first tokens " + " / ".join(f"{t:.2f}" for t in crowd["ttfts"]) + " s")
    cached, whole, prompt_tokens = later_turn(loaded)
    report.add("chat", f"a document chat's 2nd turn ({prompt_tokens} tokens), first token", f"{cached:.3f} s",
               f"read whole {whole:.3f} s: {whole / cached:.0f}x (prefix cache)")


def llama_cpp_decode() -> float | None:
    """llama.cpp's decode tokens/s on the embedded GGUF file, its fastest build here (None
    when none is built: ../shared/tools/llama-cpp)."""
    speeds = [llama_bench_run(binary, torch.get_num_threads(), 16, options)[1]
              for binary, options in runnable_llama_benches()]
    return max(speeds, default=None)


def explorer(report: Report, loaded, repeats: int) -> None:
    state = nt.start(loaded, prompt_of(loaded, 200))
    greedy = nt.SamplingSettings()
    nt.take_steps(loaded, state, 1, "greedy", greedy)  # warm-up
    cached = median_seconds(lambda: nt.take_steps(loaded, state, 1, "greedy", greedy), repeats)
    fresh = median_seconds(lambda: nt.next_token_logits(loaded, state.ids), repeats)
    report.add("explorer", f"one step with the KV cache (~{len(state.ids)} tokens)",
               f"{cached * 1000:.1f} ms", f"fresh pass {fresh * 1000:.1f} ms: {fresh / cached:.1f}x")


def translation(report: Report, cache: ModelCache, settings: Settings) -> None:
    translator = load_translator(cache, settings, "zh-en")
    sentences = corpus_sentences(64)
    translator.translate_pieces(sentences[:8])  # warm-up
    single = measure(translator, sentences, 1)
    batched = measure(translator, sentences, BATCH_SIZE)
    report.add("translation", f"tiny Marian, batches of {BATCH_SIZE}",
               f"{len(sentences) / batched:.1f} sentences/s",
               f"one at a time {len(sentences) / single:.1f}: {single / batched:.1f}x")


def sentiment_rows(report: Report, cache: ModelCache, classifier_dir: str, chat_model) -> None:
    classifier = sentiment.load_classifier(cache, classifier_dir)
    corpus = [ENGLISH_CORPUS[i % len(ENGLISH_CORPUS)] for i in range(128)]
    classify = lambda texts: sentiment.classify(classifier, texts)  # noqa: E731
    classify(corpus[:8])  # warm-up
    single = texts_per_second(one_by_one(classify), corpus)
    batched = texts_per_second(classify, corpus)
    report.add("sentiment", "tiny DistilBERT classifier, batched", f"{batched:.0f} texts/s",
               f"one by one {single:.0f}: {batched / single:.1f}x")
    rows = labelled_rows()
    texts = [r["text"] for r in rows]
    score = lambda texts: zero_shot.zero_shot(chat_model, texts, "positive, negative")  # noqa: E731
    score(texts[:4])  # warm-up
    report.add("sentiment", "zero-shot on the chat model, batched",
               f"{texts_per_second(score, texts):.1f} texts/s", f"{len(texts)} labelled sentences")
    results = score(texts)
    report.add("sentiment", "zero-shot accuracy, calibrated",
               f"{accuracy(rows, results, lambda r: r.scores):.0%}",
               f"uncalibrated {accuracy(rows, results, lambda r: r.raw_scores):.0%}")


def every_tab(report: Report, demo, cache: ModelCache) -> None:
    """Each tab's main handler, as the page calls it; then memory and model loads."""
    fns = {fn.api_name: fn.fn for fn in demo.fns.values() if fn.api_name}
    for _ in fns["chat"]("Hello!", [], "You are a helpful assistant.", EMBEDDED_MODEL,
                         32, 0.7, 0.9, 50, 1.1, False, None):
        pass
    fns["explorer_score"]("The capital of France is", False, EMBEDDED_MODEL, 10, 1.0, 0, 1.0, 0.0,
                          progress=None)
    quiet = lambda *args, **kwargs: None  # noqa: E731 (stands in for gr.Progress)
    fns["sentiment"]("What a lovely day.", "Zero-shot (chat model, your labels)", "",
                     "positive, negative", True, False, progress=quiet)
    for _ in fns["translate"]("你好。今天天气很好。", "zh-en", progress=quiet):
        pass
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    report.add("memory", "peak RSS after using every tab", f"{peak_mb:.0f} MB",
               f"{len(cache.loaded_names())} models held, {cache.total_bytes() / 2**20:.0f} MB of weights")
    report.add("memory", "model loads in this process", str(cache.loads),
               f"one per model: {', '.join(Path(r).name if '/' in r else r for r in cache.loaded_names())}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=64, help="new tokens per chat run")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved rounds per comparison")
    args = parser.parse_args()
    started = time.perf_counter()
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"torch {torch.__version__} ({torch.get_num_threads()} threads), "
          f"load average {os.getloadavg()[0]:.1f}", flush=True)
    report = Report()
    with tempfile.TemporaryDirectory() as folder:
        cache_dir = str(Path(folder) / "cache")
        start_up(report, cache_dir)
        marian_dir = str(build_tiny_marian(Path(folder) / "marian"))
        distilbert_dir = str(build_tiny_distilbert(Path(folder) / "distilbert"))
        settings = dataclasses.replace(
            Settings(offline=True), cache_dir=cache_dir, sentiment_model=distilbert_dir,
            translation_models={**DEFAULT_TRANSLATION_MODELS, "zh-en": marian_dir})
        cache = ModelCache(settings)
        demo = build_demo(AppContext.create(settings, cache))
        loaded = cache.get(EMBEDDED_MODEL, ModelKind.CAUSAL_LM)
        steps = "native step" if native_step.builder.wait(cache_dir) else f"Python step ({native_step.builder.error})"
        print(f"chat model: {loaded.description}; decode steps: {steps}", flush=True)
        chat(report, loaded, args.tokens, args.repeats)
        explorer(report, loaded, max(5, 3 * args.repeats))
        translation(report, cache, settings)
        sentiment_rows(report, cache, distilbert_dir, loaded)
        every_tab(report, demo, cache)
    report.print()
    print(f"\n{loaded.description}; whole report in {time.perf_counter() - started:.0f} s, "
          f"load average now {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
