"""How long from `python app.py` to the first streamed token of a message sent at once?

Starts `python app.py` (offline, the embedded model, a free loopback port), polls the
page until it answers, then at once streams a /v1 chat completion and notes when its
first token arrives. Twice: with a fresh PLAYGROUND_CACHE_DIR (the GGUF conversion is
part of the wait) and again with the cache the first run filled (warm).

Run: `python -m benchmarks.start_to_first_token`. Figures are for this machine only.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import torch

from modules.config import EMBEDDED_MODEL
from modules.engine.cpu_profile import cpu_model

ROOT = Path(__file__).resolve().parents[1]
MESSAGE = [{"role": "user", "content": "What is the capital of France?"}]
TIMEOUT_S = 600


@dataclass(frozen=True)
class Start:
    cache: str
    page_s: float  # `python app.py` -> the page answers
    first_token_s: float  # `python app.py` -> first streamed token of a message sent at once


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextmanager
def app_on_free_port(**env: str) -> Iterator[tuple[str, subprocess.Popen, float]]:
    """`python app.py` (offline, a free loopback port, `env` added): its base URL, its
    process and when it started; stopped on the way out."""
    port = free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False",
           "PLAYGROUND_PORT": str(port), "PLAYGROUND_HOST": "127.0.0.1", **env}
    started = time.perf_counter()
    process = subprocess.Popen([sys.executable, "app.py"], cwd=ROOT, env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        yield f"http://127.0.0.1:{port}", process, started
    finally:
        process.terminate()
        process.wait(timeout=30)


def measure_start(cache_dir: str, label: str) -> Start:
    with app_on_free_port(PLAYGROUND_CACHE_DIR=cache_dir) as (base, process, started):
        page_s = _wait_for_page(base, started, process)
        first_token_s = _first_token(base, started)
    return Start(label, page_s, first_token_s)


def _wait_for_page(base: str, started: float, process: subprocess.Popen) -> float:
    while time.perf_counter() - started < TIMEOUT_S:
        if process.poll() is not None:
            raise RuntimeError(f"app.py exited with {process.returncode}")
        try:
            if httpx.get(base + "/", timeout=5).status_code == 200:
                return time.perf_counter() - started
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    raise TimeoutError("the page never answered")


def _first_token(base: str, started: float) -> float:
    body = {"model": EMBEDDED_MODEL, "messages": MESSAGE, "stream": True, "max_tokens": 16,
            "temperature": 0}
    with httpx.stream("POST", base + "/v1/chat/completions", json=body, timeout=TIMEOUT_S) as reply:
        reply.raise_for_status()
        for line in reply.iter_lines():
            if line.startswith("data: ") and '"content":"' in line.replace(" ", "") \
                    and '"content":""' not in line.replace(" ", ""):
                return time.perf_counter() - started
    raise RuntimeError("the reply streamed no token")


def main() -> None:
    print(f"{cpu_model()}, {os.cpu_count()} CPUs, ISA {torch.backends.cpu.get_cpu_capability()}, "
          f"torch {torch.__version__}, load average {os.getloadavg()[0]:.1f}\n", flush=True)
    with tempfile.TemporaryDirectory() as folder:
        fresh = measure_start(folder, "fresh cache (converts the GGUF file)")
        warm = measure_start(folder, "warm cache")
    print("| cache | page answers | first streamed token |\n|---|---|---|")
    for start in (fresh, warm):
        print(f"| {start.cache} | {start.page_s:.1f} s | {start.first_token_s:.1f} s |")
    print(f"\nwarm start to first token: {fresh.first_token_s / warm.first_token_s:.1f}x faster "
          "with the converted copy")


if __name__ == "__main__":
    main()
