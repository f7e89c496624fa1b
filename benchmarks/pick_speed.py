"""Picking the next token of every row of a batch step: one row at a time vs `pick_rows`.

    python -m benchmarks.pick_speed [--rows 1,4] [--repeats 300] [--threads 2]

The scores are random rows of the embedded model's vocabulary size (49,152), rounded
through bf16 as the model's LM head gives them (so ties happen, as in real steps).
Settings: the page's (temperature 0.7, top-k 50, top-p 0.9, repetition penalty 1.1,
top-5 alternatives for branching) and `/v1`'s greedy default. Both ways draw the same
tokens (tests/test_sampling.py); this prints what each costs, median milliseconds per
step, all measured in one run: one row at a time and `pick_rows` with torch's argmax and
topk, then `pick_rows` with the native step's loops (`argmax_rows`, `top_rows`; built
for this machine first, as the app does). Timings on a shared machine are noisy: compare rows of
one run, and name the CPU.
"""

from __future__ import annotations

import argparse
import statistics
from collections.abc import Callable

import torch

from benchmarks.explorer_step import median_seconds
from modules.config import Settings
from modules.engine import sampling
from modules.engine.kernels import native_step
from modules.engine.sampling import Sampling, TokenPicker, pick_rows, top_alternatives

VOCABULARY = 49152
HISTORY = list(range(200))
SETTINGS = {
    "page (sampled, penalty 1.1, 5 alternatives)": (
        Sampling(do_sample=True, temperature=0.7, top_k=50, top_p=0.9, repetition_penalty=1.1, seed=0), 5),
    "/v1 greedy": (Sampling(), 0),
}


def one_by_one(pickers: list[TokenPicker], alternatives: int, scores: torch.Tensor) -> None:
    """The scheduler's loop before `pick_rows`: each row's alternatives and pick alone."""
    for row, picker in enumerate(pickers):
        if alternatives:
            torch.softmax(scores[row:row + 1], dim=-1)[0].topk(alternatives)
        picker.pick(HISTORY, scores[row:row + 1])


def together(pickers: list[TokenPicker], alternatives: int, scores: torch.Tensor) -> None:
    top_alternatives(scores, [alternatives] * len(pickers))
    pick_rows(pickers, lambda row: HISTORY, scores)


def with_torch_loops(run: Callable[[], None]) -> Callable[[], None]:
    """`run` with the argmax and top-k passes left to torch, as without the extension."""
    def wrapped() -> None:
        native = sampling._native_loops
        sampling._native_loops = lambda scores: None
        try:
            run()
        finally:
            sampling._native_loops = native
    return wrapped


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", default="1,4")
    parser.add_argument("--repeats", type=int, default=300)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    native = native_step.builder.wait(Settings().cache_dir) is not None
    print(f"CPU capability: {torch.backends.cpu.get_cpu_capability()}, {args.threads} threads, "
          f"median of {args.repeats}; native loops {'built' if native else 'unavailable'}")
    print("| settings | rows | one by one, ms | pick_rows, ms | pick_rows, native loops, ms | ratio to one by one |")
    print("|---|---|---|---|---|---|")
    generator = torch.Generator().manual_seed(0)
    for name, (sampling, alternatives) in SETTINGS.items():
        for rows in (int(r) for r in args.rows.split(",")):
            scores = (torch.randn(rows, VOCABULARY, generator=generator) * 3).bfloat16().float()
            pickers = [TokenPicker(sampling) for _ in range(rows)]
            ways = {"alone": with_torch_loops(lambda: one_by_one(pickers, alternatives, scores)),
                    "shared": with_torch_loops(lambda: together(pickers, alternatives, scores)),
                    "native": lambda: together(pickers, alternatives, scores)}
            times: dict[str, list[float]] = {way: [] for way in ways}
            for _ in range(3):  # interleaved, so background load falls on all
                for way, run in ways.items():
                    times[way].append(1000 * median_seconds(run, args.repeats // 3))
            a, b, c = (statistics.median(times[way]) for way in ways)
            print(f"| {name} | {rows} | {a:.2f} | {b:.2f} | {c:.2f} | {b / a:.2f} / {c / a:.2f} |")


if __name__ == "__main__":
    main()
