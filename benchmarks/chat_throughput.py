"""Many users at once: 1/2/4/8 concurrent streamed /v1 chats through the real server.

    HF_HUB_OFFLINE=1 python -m benchmarks.chat_throughput [--tokens 64] [--users 1,2,4,8]
        [--repeats 2] [--no-llama-server]

The app is served as `python app.py` serves it (uvicorn on a thread, generation on the
lent main thread). Each row is one configuration of the embedded model's scheduler:

* serial: one sequence at a time (batch size 1), what a per-model lock gives;
* batched: up to 4 sequences in one batch (modules/engine/batching.py, the default);
* page: the same batched scheduler reached as browsers do, the Chat tab's streamed /chat
  through gradio_client (greedy /v1 rows, the page's own sampling settings).

Rows are interleaved (serial, batched, serial, batched …) so background load on a shared
machine hits both alike; compare ratios within one run. With llama.cpp's `llama-server`
built (tests/test_remote_llama_server.py says where), `-np 4 -t <cores>` on the same GGUF
file runs in the same run too.

Figures (vLLM's definitions): aggregate tok/s = all completion tokens / wall time;
TTFT = request sent → first content chunk; TPOT = (e2e − TTFT) / (tokens − 1) per user;
ITL = gaps between content chunks (a chunk is a word or so: the streamer cuts at spaces).
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from contextlib import contextmanager  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import TypeVar  # noqa: E402

import httpx  # noqa: E402
import torch  # noqa: E402

from modules.app_context import AppContext  # noqa: E402
from modules.config import EMBEDDED_MODEL, Settings  # noqa: E402
from modules.engine.batching import BatchScheduler  # noqa: E402
from modules.engine.compute import lend_main_thread_while  # noqa: E402
from modules.engine.model_cache import ModelCache, ModelKind  # noqa: E402
from modules.engine.model_refs import embedded_gguf_path  # noqa: E402
from modules.serving.launch import create_app, serve_in_thread  # noqa: E402
from modules.tasks.chat import GenerationParams, render_prompt_ids, stream_chat  # noqa: E402
from modules.ui.layout import build_demo  # noqa: E402

PROMPT = "Write a long story about a brave little dragon who learns to fly."
USER_PROMPTS = [
    "Write a long story about a brave little dragon who learns to fly.",
    "Explain how a rainbow forms, in detail.",
    "Describe a day in the life of a lighthouse keeper.",
    "Write a long letter to a friend about your travels in Italy.",
]
T = TypeVar("T")
LLAMA_SERVER = Path.home() / ".cache/llama-cpp-0.3.36/src/vendor/llama.cpp/build/bin/llama-server"


def as_in_the_app(function, *args):
    """Run `function` as a request thread does, while this (main) thread runs the
    generation jobs, as `python app.py` lends it (modules/engine/compute.py)."""
    return lend_main_thread_while(lambda: function(*args))


# --- in process (also used by the one-table report, benchmarks/__main__.py) ------------
def bare_generate(loaded, prompt: str, tokens: int) -> tuple[float, int]:
    """Seconds and new tokens for one greedy model.generate call, nothing else, on the
    calling thread (the main thread, where the app generates)."""
    ids = torch.tensor([render_prompt_ids(loaded.tokenizer, [{"role": "user", "content": prompt}])])
    start = time.perf_counter()
    with torch.inference_mode():
        out = loaded.model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=tokens,
                                    do_sample=False, pad_token_id=loaded.tokenizer.pad_token_id)
    return time.perf_counter() - start, out.shape[1] - ids.shape[1]


def bare_first_token(loaded, prompt: str) -> float:
    return bare_generate(loaded, prompt, 1)[0]


def chat_once(loaded, prompt: str, tokens: int) -> dict:
    """Consumer-side figures for one streamed reply, served as the app serves it."""
    return as_in_the_app(_chat_once, loaded, prompt, tokens)


def _chat_once(loaded, prompt: str, tokens: int) -> dict:
    params = GenerationParams(do_sample=False, max_new_tokens=tokens)
    start, first, last = time.perf_counter(), None, None
    for chunk in stream_chat(loaded, [{"role": "user", "content": prompt}], params):
        if first is None and chunk.delta:
            first = time.perf_counter() - start
        last = chunk
    return {"seconds": time.perf_counter() - start, "tokens": last.usage.completion_tokens,
            "ttft": first, "reported_tps": last.usage.tokens_per_second}


def concurrent_users(loaded, users: int, tokens: int) -> dict:
    """`users` in-process chats at once: wall time, tokens and sorted first-token times."""
    return as_in_the_app(_concurrent_users, loaded, users, tokens)


def _concurrent_users(loaded, users: int, tokens: int) -> dict:
    start = time.perf_counter()
    results = at_once(users, lambda index: _chat_once(loaded, prompt_of(index), tokens))
    return {"wall": time.perf_counter() - start, "tokens": sum(r["tokens"] for r in results),
            "ttfts": sorted(r["ttft"] for r in results)}


# --- through the server ----------------------------------------------------------------
@dataclass
class Reply:
    sent: float
    chunks: list[float]  # arrival times of content chunks
    tokens: int
    done: float

    @property
    def ttft(self) -> float:
        return (self.chunks[0] if self.chunks else self.done) - self.sent

    @property
    def e2e(self) -> float:
        return self.done - self.sent

    @property
    def tpot(self) -> float:
        return (self.e2e - self.ttft) / max(1, self.tokens - 1)


def stream_one(base_url: str, model: str, prompt: str, tokens: int) -> Reply:
    """One streamed /v1 chat completion, greedy, timed chunk by chunk."""
    body = {"model": model, "messages": [{"role": "user", "content": prompt}], "max_tokens": tokens,
            "temperature": 0, "stream": True, "stream_options": {"include_usage": True}}
    sent, chunks, used = time.perf_counter(), [], 0
    with httpx.stream("POST", f"{base_url}/chat/completions", json=body, timeout=600) as response:
        response.raise_for_status()
        for line in response.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            event = json.loads(line[6:])
            if event.get("usage"):
                used = event["usage"]["completion_tokens"]
            if any((c.get("delta") or {}).get("content") for c in event.get("choices") or []):
                chunks.append(time.perf_counter())
    return Reply(sent, chunks, used or len(chunks), time.perf_counter())


def crowd(base_url: str, model: str, users: int, tokens: int) -> list[Reply]:
    """`users` /v1 clients sending at the same moment."""
    return at_once(users, lambda index: stream_one(base_url, model, prompt_of(index), tokens))


def at_once(users: int, ask: Callable[[int], T]) -> list[T]:
    """`ask(index)` for each of `users` users, on threads released together."""
    replies: list[T | None] = [None] * users
    barrier = threading.Barrier(users)

    def user(index: int) -> None:
        barrier.wait()
        replies[index] = ask(index)

    threads = [threading.Thread(target=user, args=(i,)) for i in range(users)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return replies


def prompt_of(index: int) -> str:
    return USER_PROMPTS[index % len(USER_PROMPTS)]


def page_crowd(page_url: str, tokenizer, users: int, tokens: int) -> list[Reply]:
    """`users` browser-like clients (gradio_client) sending to the Chat tab's /chat at once.

    The page streams the whole reply so far; a chunk is an update whose text grew, and
    the token count is the final reply re-tokenized (within a token or two of the model's).
    """
    from gradio_client import Client

    clients = [Client(page_url, verbose=False) for _ in range(users)]  # before the clock starts

    def ask(index: int) -> Reply:
        sent, chunks, text = time.perf_counter(), [], ""
        job = clients[index].submit(prompt_of(index), api_name="/chat", max_new_tokens=tokens)
        for output in job:
            reply = _last_reply(output[0])
            if len(reply) > len(text):
                chunks.append(time.perf_counter())
                text = reply
        return Reply(sent, chunks, len(tokenizer(text)["input_ids"]), time.perf_counter())

    return at_once(users, ask)


def _last_reply(chatbot) -> str:
    """The text of the last assistant message in a Chatbot value."""
    for message in reversed(chatbot or []):
        if isinstance(message, dict) and message.get("role") == "assistant":
            content = message.get("content")
            if isinstance(content, str):
                return content
            if isinstance(content, list):  # the reply, then the stats line once it is done
                texts = [part.get("text", "") for part in content if isinstance(part, dict)]
                return texts[0] if texts else ""
    return ""


@dataclass
class Row:
    server: str
    users: int
    runs: list[list[Reply]] = dataclasses.field(default_factory=list)

    def _median(self, per_run) -> float:
        return statistics.median(per_run(run) for run in self.runs)

    @property
    def aggregate(self) -> float:
        return self._median(lambda run: sum(r.tokens for r in run)
                            / (max(r.done for r in run) - min(r.sent for r in run)))

    @property
    def per_user(self) -> float:
        return self._median(lambda run: statistics.median(r.tokens / r.e2e for r in run))

    @property
    def ttfts(self) -> list[float]:
        return sorted(r.ttft for r in self.runs[-1])

    @property
    def tpot_ms(self) -> float:
        return 1000 * self._median(lambda run: statistics.median(r.tpot for r in run))

    def itl_ms(self, quantile: float) -> float:
        gaps = sorted(b - a for run in self.runs for r in run for a, b in zip(r.chunks, r.chunks[1:]))
        return 1000 * gaps[min(len(gaps) - 1, int(quantile * len(gaps)))] if gaps else float("nan")


def use_batch_size(loaded, size: int) -> None:
    """Swap the model's scheduler (between rows, when nothing runs)."""
    loaded.scheduler = BatchScheduler(loaded.model, loaded.lock, max_sequences=size)


@contextmanager
def llama_server(threads: int, slots: int):
    """llama.cpp's server on the same GGUF file, or None when it is not built."""
    if not (LLAMA_SERVER.is_file() and os.access(LLAMA_SERVER, os.X_OK)):
        yield None
        return
    port = 18000 + os.getpid() % 1000
    process = subprocess.Popen(
        [str(LLAMA_SERVER), "-m", str(embedded_gguf_path()), "-t", str(threads), "-np", str(slots),
         "-c", str(2048 * slots), "--jinja", "--no-repack", "--host", "127.0.0.1", "--port", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(240):
            try:
                if httpx.get(base + "/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.5)
        yield base + "/v1"
    finally:
        process.terminate()
        process.wait(timeout=10)


def print_table(rows: list[Row], baseline: float) -> None:
    header = ("server", "users", "aggregate tok/s", "× 1 user serial", "per-user tok/s",
              "TTFT s (each user)", "TPOT ms", "ITL p50/p99 ms")
    table = [header] + [(
        row.server, str(row.users), f"{row.aggregate:.1f}", f"{row.aggregate / baseline:.2f}",
        f"{row.per_user:.1f}", " / ".join(f"{t:.2f}" for t in row.ttfts), f"{row.tpot_ms:.0f}",
        f"{row.itl_ms(0.5):.0f} / {row.itl_ms(0.99):.0f}") for row in rows]
    widths = [max(len(r[i]) for r in table) for i in range(len(header))]
    for number, line in enumerate(table):
        print("| " + " | ".join(cell.ljust(width) for cell, width in zip(line, widths)) + " |")
        if number == 0:
            print("|" + "|".join("-" * (width + 2) for width in widths) + "|")


def run(args, context, loaded) -> list[Row]:
    model = EMBEDDED_MODEL
    configurations = {"serial (batch 1)": 1, "batched (batch 4)": 4}
    rows = {(name, users): Row(name, users) for users in args.users for name in configurations}
    with serve_in_thread(create_app(build_demo(context), context)) as url:
        for size in configurations.values():  # warm-up: first-call costs out of the way
            use_batch_size(loaded, size)
            crowd(url + "/v1", model, 2, 8)
        for repeat in range(args.repeats):
            for users in args.users:
                for name, size in configurations.items():
                    use_batch_size(loaded, size)
                    rows[name, users].runs.append(crowd(url + "/v1", model, users, args.tokens))
                    print(f"  run {repeat + 1}: {name}, {users} users: "
                          f"{rows[name, users].runs[-1] and sum(r.tokens for r in rows[name, users].runs[-1])}"
                          " tokens", flush=True)
        use_batch_size(loaded, 4)  # the page, as browsers use it (the default batch)
        page_crowd(url, loaded.tokenizer, 1, 8)
        for users in args.users:
            row = rows["page, batched (batch 4)", users] = Row("page, batched (batch 4)", users)
            row.runs = [page_crowd(url, loaded.tokenizer, users, args.tokens) for _ in range(args.repeats)]
    result = list(rows.values())
    if args.llama_server:
        with llama_server(threads=torch.get_num_threads(), slots=4) as base:
            if base is not None:
                crowd(base, model, 2, 8)
                for users in args.users:
                    row = Row("llama-server -np 4", users)
                    row.runs = [crowd(base, model, users, args.tokens) for _ in range(args.repeats)]
                    result.append(row)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--users", default="1,2,4,8")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--no-llama-server", dest="llama_server", action="store_false")
    args = parser.parse_args()
    args.users = [int(n) for n in args.users.split(",")]

    settings = dataclasses.replace(Settings.from_env(), offline=True, chat_model=EMBEDDED_MODEL,
                                   api_key=None, max_new_tokens=max(512, args.tokens))
    cache = ModelCache(settings)
    context = AppContext.create(settings, cache)
    loaded = cache.get(EMBEDDED_MODEL, ModelKind.CAUSAL_LM)
    print(f"model: {loaded.description}; CPU: {torch.backends.cpu.get_cpu_capability()}, "
          f"{torch.get_num_threads()} torch threads; {args.tokens} new tokens max, greedy, "
          f"median of {args.repeats} runs", flush=True)
    bare_generate(loaded, PROMPT, 8)  # warm-up
    single = []
    for _ in range(args.repeats):  # the chat path alone vs bare generate, interleaved
        seconds, tokens = bare_generate(loaded, PROMPT, args.tokens)
        chat = chat_once(loaded, PROMPT, args.tokens)
        single.append((tokens / seconds, chat["tokens"] / chat["seconds"]))
    bare_tps = statistics.median(b for b, _ in single)
    chat_tps = statistics.median(c for _, c in single)
    print(f"one user in process: bare model.generate {bare_tps:.1f} tok/s, chat path through the "
          f"scheduler {chat_tps:.1f} tok/s ({100 * chat_tps / bare_tps:.0f} %)", flush=True)
    rows = as_in_the_app(run, args, context, loaded)
    baseline = next(r for r in rows if r.users == 1 and r.server.startswith("serial")).aggregate
    print_table(rows, baseline)


if __name__ == "__main__":
    main()
