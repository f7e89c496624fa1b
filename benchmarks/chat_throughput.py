"""Many users at once: 1/2/4/8 concurrent streamed /v1 chats through the real server.

    HF_HUB_OFFLINE=1 python -m benchmarks.chat_throughput [--tokens 64] [--users 1,2,4,8]
        [--repeats 2] [--no-llama-server] [--no-transformers-serve]

The app is served as `python app.py` serves it (uvicorn on a thread, generation on the
lent main thread). Each row is one configuration of the embedded model's scheduler:

* serial: one sequence at a time (batch size 1), what a per-model lock gives;
* batched: up to 4 sequences in one batch (modules/engine/batching.py, the default);
* page: the same batched scheduler reached as browsers do, the Chat tab's streamed /chat
  through gradio_client (greedy /v1 rows, the page's own sampling settings).

Before every measured run the prefix cache is emptied and another question is asked
(`after_an_earlier_visitor`): a run's prompts then start after the cached system prompt,
as on a server that has had visitors, but never find themselves cached.

Clients run in a process of their own (benchmarks/clients.py), as real users' do: in
the server's process their Python would compete with the decode loop for the GIL.

Rows are interleaved (serial, batched, serial, batched …) so background load on a shared
machine hits both alike; compare ratios within one run. With llama.cpp's `llama-server`
built (tests/test_remote_llama_server.py says where), `-np 4 -t <cores>` on the same GGUF
file runs in the same run too, for every build found; so does transformers' own server,
`transformers serve` with and without `--continuous-batching`, on the same weights
re-saved as a plain bf16 checkpoint (it cannot load this GGUF file itself).

Figures (vLLM's definitions): aggregate tok/s = all completion tokens / wall time;
TTFT = request sent → first content chunk (on the page: the first update with reply text,
not the "…" shown before it); TPOT = (e2e − TTFT) / (tokens − 1) per user;
ITL = gaps between content chunks (a chunk is a word or so: the streamer cuts at spaces).
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import argparse  # noqa: E402
import copy  # noqa: E402
import dataclasses  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from contextlib import contextmanager  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402

import httpx  # noqa: E402
import torch  # noqa: E402

from benchmarks.clients import EARLIER_VISITOR, USER_PROMPTS, Reply, at_once, prompt_of, users_at_once  # noqa: E402
from modules.app_context import AppContext  # noqa: E402
from modules.config import EMBEDDED_MODEL, Settings  # noqa: E402
from modules.engine.batching import BatchScheduler  # noqa: E402
from modules.engine.compute import lend_main_thread_while  # noqa: E402
from modules.engine.model_cache import ModelCache, ModelKind  # noqa: E402
from modules.engine.model_refs import embedded_gguf_path  # noqa: E402
from modules.serving.launch import create_app, serve_in_thread  # noqa: E402
from modules.tasks.chat import GenerationParams, render_prompt_ids, stream_chat  # noqa: E402
from modules.ui.layout import build_demo  # noqa: E402

PROMPT = USER_PROMPTS[0]


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
    """Consumer-side figures for one streamed reply, served as the app serves it, its prompt
    read from the start (as `generate` and llama.cpp read theirs), not from the prefix cache."""
    forget_prompts(loaded)
    return as_in_the_app(_chat_once, loaded, prompt, tokens)


def forget_prompts(loaded) -> None:
    """Empty the model's prefix cache (modules/engine/prefix_cache.py): a benchmark that sends
    one prompt again and again would otherwise time its first token from the cache."""
    scheduler = getattr(loaded, "scheduler", None)
    if scheduler is not None:
        scheduler.prefixes.clear()


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
    """`users` in-process chats at once: wall time, tokens and sorted first-token times. The
    prefix cache starts empty: the first prompt is read whole, the others after the system
    prompt it leaves."""
    forget_prompts(loaded)
    return as_in_the_app(_concurrent_users, loaded, users, tokens)


def _concurrent_users(loaded, users: int, tokens: int) -> dict:
    start = time.perf_counter()
    results = at_once(users, lambda index: _chat_once(loaded, prompt_of(index), tokens))
    return {"wall": time.perf_counter() - start, "tokens": sum(r["tokens"] for r in results),
            "ttfts": sorted(r["ttft"] for r in results)}


# --- through the server ----------------------------------------------------------------
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


def after_an_earlier_visitor(loaded, kind: str, url: str, model: str) -> None:
    """Empty the prefix cache, then ask another question, one token: as on a server that has
    had visitors, a run's prompts find the system prompt cached, never themselves."""
    forget_prompts(loaded)
    users_at_once(kind, url, model, 1, 1, prompt=EARLIER_VISITOR)


def llama_servers() -> list[tuple[str, list[str]]]:
    """(name, command line minus the port) of every llama.cpp build's llama-server that runs
    here, beside the llama-bench that decode_speed finds, with the options it runs under."""
    from benchmarks.decode_speed import runnable_llama_benches  # it imports this module

    servers = []
    for bench, options in runnable_llama_benches():
        server = Path(bench).with_name("llama-server")
        if os.access(server, os.X_OK):
            extra = ["--no-repack"] if options == ("--repack", "0") else []
            servers.append((server.parent.parent.name, [str(server), *extra]))
    return servers


def llama_server(command: list[str], threads: int, slots: int):
    """llama.cpp's server on the same GGUF file; yields its /v1 URL."""
    port = _port()
    return _served([*command, "-m", str(embedded_gguf_path()), "-t", str(threads), "-np", str(slots),
                    "-c", str(2048 * slots), "--jinja", "--host", "127.0.0.1", "--port", str(port)], port)


def transformers_servers(folder: Path) -> list[tuple[str, list[str]]]:
    """(name, command line minus the port) for `transformers serve` on `folder`, without and
    with its continuous batching, when this environment has the CLI."""
    cli = Path(sys.executable).with_name("transformers")
    if not os.access(cli, os.X_OK):
        return []
    plain = [str(cli), "serve", str(folder), "--device", "cpu"]
    return [("transformers serve", plain),
            ("transformers serve --continuous-batching", [*plain, "--continuous-batching"])]


def transformers_checkpoint(folder: Path) -> Path:
    """The embedded model saved as a plain bf16 checkpoint in `folder`: `transformers serve`
    cannot serve the GGUF file itself (its config has no `architectures`: a TypeError at load)
    nor re-save a GGUF-loaded model, so the weights move to a model built from the config."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source, name = embedded_gguf_path().parent, embedded_gguf_path().name
    loaded = AutoModelForCausalLM.from_pretrained(source, gguf_file=name, dtype=torch.bfloat16)
    config = copy.deepcopy(loaded.config)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.architectures = [type(loaded).__name__]
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    plain.load_state_dict(loaded.state_dict())
    plain.save_pretrained(folder)
    AutoTokenizer.from_pretrained(source, gguf_file=name).save_pretrained(folder)
    return folder


def transformers_server(command: list[str]):
    port = _port()
    return _served([*command, "--port", str(port)], port)


def _port() -> int:
    return 18000 + os.getpid() % 1000


@contextmanager
def _served(command: list[str], port: int):
    """Run a server; yield its /v1 URL once /health answers, then stop it."""
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
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
    """One line per row; ratios against /v1 serial with 1 user and against the row's own path
    with 1 user (the page samples as its tab does, so its own 1-user row is its baseline)."""
    alone = {row.server: row for row in rows if row.users == 1}
    header = ("server", "users", "aggregate tok/s", "× 1 user serial", "× same path 1 user",
              "per-user tok/s (× same path 1 user)", "TTFT s (each user)", "TPOT ms", "ITL p50/p99 ms")
    table = [header] + [(
        row.server, str(row.users), f"{row.aggregate:.1f}", f"{row.aggregate / baseline:.2f}",
        _ratio(row.aggregate, alone.get(row.server, row).aggregate),
        f"{row.per_user:.1f} ({_ratio(row.per_user, alone.get(row.server, row).per_user)})",
        " / ".join(f"{t:.2f}" for t in row.ttfts), f"{row.tpot_ms:.0f}",
        f"{row.itl_ms(0.5):.0f} / {row.itl_ms(0.99):.0f}") for row in rows]
    widths = [max(len(r[i]) for r in table) for i in range(len(header))]
    for number, line in enumerate(table):
        print("| " + " | ".join(cell.ljust(width) for cell, width in zip(line, widths)) + " |")
        if number == 0:
            print("|" + "|".join("-" * (width + 2) for width in widths) + "|")


def _ratio(value: float, baseline: float) -> str:
    return f"{value / baseline:.2f}" if baseline else "-"


def other_server_rows(name: str, base: str, model: str, args) -> list[Row]:
    """Rows for another OpenAI-compatible server, after a warm-up."""
    users_at_once("v1", base, model, 2, 8)
    rows = []
    for users in args.users:
        row = Row(name, users)
        row.runs = [users_at_once("v1", base, model, users, args.tokens) for _ in range(args.repeats)]
        rows.append(row)
    return rows


def run(args, context, loaded) -> list[Row]:
    model = EMBEDDED_MODEL
    configurations = {"serial (batch 1)": 1, "batched (batch 4)": 4}
    rows = {(name, users): Row(name, users) for users in args.users for name in configurations}
    with serve_in_thread(create_app(build_demo(context), context)) as url:
        for size in configurations.values():  # warm-up: first-call costs out of the way
            use_batch_size(loaded, size)
            users_at_once("v1", url + "/v1", model, 2, 8)
        for repeat in range(args.repeats):
            for users in args.users:
                for name, size in configurations.items():
                    use_batch_size(loaded, size)
                    after_an_earlier_visitor(loaded, "v1", url + "/v1", model)
                    rows[name, users].runs.append(users_at_once("v1", url + "/v1", model, users, args.tokens))
                    print(f"  run {repeat + 1}: {name}, {users} users: "
                          f"{sum(r.tokens for r in rows[name, users].runs[-1])} tokens", flush=True)
        use_batch_size(loaded, 4)  # the page, as browsers use it (the default batch)
        users_at_once("page", url, model, 1, 8)
        for users in args.users:
            row = rows["page, batched (batch 4)", users] = Row("page, batched (batch 4)", users)
            for _ in range(args.repeats):
                after_an_earlier_visitor(loaded, "page", url, model)
                row.runs.append(users_at_once("page", url, model, users, args.tokens))
    result = list(rows.values())
    if args.llama_server:
        for build, command in llama_servers():
            with llama_server(command, threads=torch.get_num_threads(), slots=4) as base:
                result += other_server_rows(f"llama-server -np 4 ({build})", base, model, args)
    if args.transformers_serve:
        with tempfile.TemporaryDirectory() as folder:
            checkpoint = transformers_checkpoint(Path(folder))
            for name, command in transformers_servers(checkpoint):
                with transformers_server(command) as base:
                    result += other_server_rows(name, base, str(checkpoint), args)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--users", default="1,2,4,8")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--no-llama-server", dest="llama_server", action="store_false")
    parser.add_argument("--no-transformers-serve", dest="transformers_serve", action="store_false")
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
