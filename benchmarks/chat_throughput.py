"""Chat path vs bare `model.generate` on the embedded model: does streaming cost speed?

    HF_HUB_OFFLINE=1 python -m benchmarks.chat_throughput [--tokens 64] [--repeats 3] [--users 4]

Prints one table: tokens/s and time to first token for bare generate, for the
chat path (template + streamer + stopping criteria + per-token handling), and
for several users at once (generation on one model is serialized by its lock,
so the aggregate stays near single-user speed while later users wait longer).
Timings on a shared 2-core machine are noisy: compare rows of one run.
"""

from __future__ import annotations

import argparse
import os
import statistics
import threading
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from modules.tasks.chat import GenerationParams, render_prompt_ids, stream_chat  # noqa: E402
from modules.engine.compute import lend_main_thread_while  # noqa: E402
from modules.config import EMBEDDED_MODEL, Settings  # noqa: E402
from modules.engine.model_cache import ModelCache, ModelKind  # noqa: E402

PROMPT = "Write a long story about a brave little dragon who learns to fly."
USER_PROMPTS = [
    PROMPT,
    "Explain how a rainbow forms, in detail.",
    "Describe a day in the life of a lighthouse keeper.",
    "Write a long letter to a friend about your travels in Italy.",
]


def as_in_the_app(function, *args):
    """Run `function` as a request thread does, while this (main) thread runs the
    generation jobs, as `python app.py` lends it (modules/engine/compute.py)."""
    return lend_main_thread_while(lambda: function(*args))


def bare_generate(loaded, prompt: str, tokens: int) -> tuple[float, int]:
    """Seconds and new tokens for one greedy model.generate call, nothing else, on the
    main thread (where the app generates)."""
    ids = torch.tensor([render_prompt_ids(loaded.tokenizer, [{"role": "user", "content": prompt}])])
    start = time.perf_counter()
    out = loaded.model.generate(
        ids, attention_mask=torch.ones_like(ids), max_new_tokens=tokens, do_sample=False,
        pad_token_id=loaded.tokenizer.pad_token_id,
    )
    return time.perf_counter() - start, out.shape[1] - ids.shape[1]


def bare_first_token(loaded, prompt: str) -> float:
    seconds, _ = bare_generate(loaded, prompt, 1)
    return seconds


def chat_once(loaded, prompt: str, tokens: int) -> dict:
    """Consumer-side figures for one streamed reply, served as the app serves it."""
    return as_in_the_app(_chat_once, loaded, prompt, tokens)


def _chat_once(loaded, prompt: str, tokens: int) -> dict:
    params = GenerationParams(do_sample=False, max_new_tokens=tokens)
    start = time.perf_counter()
    first = None
    last = None
    for chunk in stream_chat(loaded, [{"role": "user", "content": prompt}], params):
        if first is None and chunk.delta:
            first = time.perf_counter() - start
        last = chunk
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "tokens": last.usage.completion_tokens, "ttft": first,
            "reported_tps": last.usage.tokens_per_second}


def concurrent_users(loaded, users: int, tokens: int) -> dict:
    return as_in_the_app(_concurrent_users, loaded, users, tokens)


def _concurrent_users(loaded, users: int, tokens: int) -> dict:
    results: list[dict] = [{} for _ in range(users)]
    barrier = threading.Barrier(users)

    def user(index: int) -> None:
        barrier.wait()
        results[index] = _chat_once(loaded, USER_PROMPTS[index % len(USER_PROMPTS)], tokens)

    threads = [threading.Thread(target=user, args=(i,)) for i in range(users)]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - start
    total = sum(r["tokens"] for r in results)
    return {"wall": wall, "tokens": total, "ttfts": sorted(r["ttft"] for r in results)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--users", type=int, default=4)
    args = parser.parse_args()

    loaded = ModelCache(Settings(offline=True)).get(EMBEDDED_MODEL, ModelKind.CAUSAL_LM)
    print(f"model: {loaded.description}; torch threads: {torch.get_num_threads()}; "
          f"{args.tokens} new tokens, greedy, median of {args.repeats}", flush=True)
    bare_generate(loaded, PROMPT, 8)  # warm up
    bare_runs, chat_runs, bare_ttfts = [], [], []
    for _ in range(args.repeats):  # interleaved, so background load hits both alike
        bare_runs.append(bare_generate(loaded, PROMPT, args.tokens))
        chat_runs.append(chat_once(loaded, PROMPT, args.tokens))
        bare_ttfts.append(bare_first_token(loaded, PROMPT))
        print(f"  bare {bare_runs[-1][1] / bare_runs[-1][0]:.1f} tokens/s, chat "
              f"{chat_runs[-1]['tokens'] / chat_runs[-1]['seconds']:.1f} tokens/s", flush=True)
    bare_tps = statistics.median(n / s for s, n in bare_runs)
    chat_tps = statistics.median(r["tokens"] / r["seconds"] for r in chat_runs)
    chat_ttft = statistics.median(r["ttft"] for r in chat_runs)
    crowd = concurrent_users(loaded, args.users, args.tokens)

    rows = [
        ("bare model.generate", f"{bare_tps:.1f}", f"{statistics.median(bare_ttfts):.3f}", "100 %"),
        ("chat path (streamed)", f"{chat_tps:.1f}", f"{chat_ttft:.3f}",
         f"{100 * chat_tps / bare_tps:.0f} %"),
        (f"{args.users} users at once (aggregate)", f"{crowd['tokens'] / crowd['wall']:.1f}",
         " / ".join(f"{t:.2f}" for t in crowd["ttfts"]),
         f"{100 * crowd['tokens'] / crowd['wall'] / bare_tps:.0f} %"),
    ]
    header = ("run", "tokens/s", "first token (s)", "of bare")
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(4)]
    line = "  ".join("{:<%d}" % w for w in widths)
    print(line.format(*header))
    print(line.format(*("-" * w for w in widths)))
    for row in rows:
        print(line.format(*row))
    print(f"chat path keeps {100 * chat_tps / bare_tps:.0f} % of bare throughput (goal: ≥ 95 %); "
          f"{args.users} users are served one at a time, so their first-token times queue up.")


if __name__ == "__main__":
    main()
