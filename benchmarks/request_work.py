"""Model work of request threads: on the idle compute thread (the app) vs on their own.

    HF_HUB_OFFLINE=1 python -m benchmarks.request_work [--repeats 7] [--chats 2]

The explorer's steps, zero-shot scoring and the other views run the chat model for a
request. On the request's own thread torch gets one core (a second OpenMP team would
halve the batch's decoding, modules/engine/compute.py); the app hands that work to the
compute thread when it is idle (`run_model_work`), which runs it on every core. While
chats generate, the work runs on the request thread beside them (both modes are then
the same code; the row shows what a user gets). This benchmark runs as the app does:
the main thread lent to the compute role, each action on a request thread
(`on_request_thread`), the two modes alternating action by action. "own thread" is the
app before this change.

Timings on a shared 2-core machine are noisy: compare the rows of one run; the first
line names the CPU class.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import argparse  # noqa: E402
import contextlib  # noqa: E402
import statistics  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable, Iterator  # noqa: E402

import torch  # noqa: E402

from benchmarks.explorer_step import prompt_of  # noqa: E402
from modules.config import EMBEDDED_MODEL, Settings  # noqa: E402
from modules.engine import compute  # noqa: E402
from modules.engine.model_cache import ModelCache, ModelKind  # noqa: E402
from modules.tasks import next_token as nt  # noqa: E402
from modules.tasks import zero_shot  # noqa: E402
from modules.tasks.chat import GenerationParams, stream_chat  # noqa: E402
from modules.tasks.explorer import session  # noqa: E402

SHORT_TEXTS = ["The food was great but the service was slow.", "I loved this movie!",
               "Terrible, never again.", "It was fine, I guess."]
CHAT_PROMPT = "Tell me about the history of Paris in a few sentences."
MODES = ("compute thread", "own thread")


@contextlib.contextmanager
def mode(name: str) -> Iterator[None]:
    """"own thread": every `run_on_compute_thread` runs where it is called, as before."""
    if name == "compute thread":
        yield
        return
    routed = compute.run_on_compute_thread
    compute.run_on_compute_thread = lambda function: function()
    try:
        yield
    finally:
        compute.run_on_compute_thread = routed


def on_a_request_thread(action: Callable[[], object]) -> float:
    """Seconds `action` takes on a fresh request thread (one core for its own torch)."""
    took: list[float] = []

    @compute.on_request_thread
    def request() -> None:
        start = time.perf_counter()
        action()
        took.append(time.perf_counter() - start)

    thread = threading.Thread(target=request)
    thread.start()
    thread.join()
    return took[0]


class Chats:
    """`count` greedy chats streaming on request threads until stopped; tokens counted."""

    def __init__(self, loaded, count: int) -> None:
        self.loaded, self.count = loaded, count
        self.tokens = 0
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._chat) for _ in range(count)]

    def _chat(self) -> None:
        params = GenerationParams(do_sample=False, max_new_tokens=96)
        while not self.stop.is_set():
            chunks = stream_chat(self.loaded, [{"role": "user", "content": CHAT_PROMPT}], params)
            for chunk in chunks:
                self.tokens += bool(chunk.delta)
                if self.stop.is_set():
                    chunks.close()
                    return

    def __enter__(self) -> Chats:
        for thread in self.threads:
            thread.start()
        time.sleep(1.0)  # all in the batch
        return self

    def __exit__(self, *_) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--chats", type=int, default=2)
    parser.add_argument("--tokens", type=int, default=200, help="explorer text length")
    args = parser.parse_args()
    print(f"CPU: torch capability {torch.backends.cpu.get_cpu_capability()}, "
          f"{os.cpu_count()} cores, torch threads {torch.get_num_threads()}")
    compute.lend_main_thread_while(lambda: run(args))


def run(args) -> None:
    cache = ModelCache(Settings(offline=True, chat_model=EMBEDDED_MODEL))
    loaded = cache.get(EMBEDDED_MODEL, ModelKind.CAUSAL_LM)
    prompt = prompt_of(loaded, args.tokens)
    walks = [session.new_session(loaded, prompt)]
    settings = nt.SamplingSettings(0.7, 50, 0.9, 0.05)
    labels = "positive, negative"
    texts = iter(range(10**6))

    def explorer_step() -> None:
        if len(walks[0].explorer.ids) > args.tokens + 64:  # keep the text about as long
            walks[0] = session.new_session(loaded, prompt)
        nt.take_steps(loaded, walks[0].explorer, 1, "greedy", settings)

    actions = {
        f"explorer step, KV cache (~{args.tokens} tokens)": explorer_step,
        f"explorer: read a ~{args.tokens}-token text": lambda: nt.next_token_logits(loaded, walks[0].explorer.prompt_ids),
        "zero-shot, one short text": lambda: zero_shot.zero_shot(
            loaded, [f"{SHORT_TEXTS[next(texts) % 4]} ({next(texts)})"], labels),
    }
    for action in actions.values():  # warm-up (zero-shot priors, prefix caches)
        on_a_request_thread(action)

    def timed() -> dict[tuple[str, str], float]:
        seconds: dict[tuple[str, str], list[float]] = {}
        for _ in range(args.repeats):
            for name, action in actions.items():
                for label in MODES:
                    with mode(label):
                        seconds.setdefault((name, label), []).append(on_a_request_thread(action))
        return {key: statistics.median(values) for key, values in seconds.items()}

    idle = timed()
    with Chats(loaded, args.chats):
        busy = timed()
    print(f"\nmedian ms of {args.repeats}; modes alternate action by action")
    print(f"{'action':<44} {'idle: compute thread':>20} {'own thread':>11} {'ratio':>6}   "
          f"{f'beside {args.chats} chats (app)':>22}")
    for name in actions:
        a, b = idle[name, MODES[0]], idle[name, MODES[1]]
        print(f"{name:<44} {a * 1e3:>20.1f} {b * 1e3:>11.1f} {a / b:>6.2f}   {busy[name, MODES[0]] * 1e3:>22.1f}")


if __name__ == "__main__":
    main()
