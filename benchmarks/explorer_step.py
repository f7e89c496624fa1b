"""Next-token explorer on the embedded model: is stepping with the KV cache worth it?

    HF_HUB_OFFLINE=1 python -m benchmarks.explorer_step [--tokens 200] [--repeats 10]

Prints one table (median seconds over the repeats):
- one step reusing the prefix's keys/values (`past_key_values`) vs a fresh forward
  pass over the whole ~200-token text, which is what stepping would cost without a cache;
- time to first render of the tab's distribution: the tab's "Score" handler plus
  the components' postprocessing, for a short and a ~200-token prompt, with the model
  loaded (warm) and on the very first call (cold, the model load included).
Timings on a shared 2-core machine are noisy: compare rows of one run.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import gradio as gr  # noqa: E402
import torch  # noqa: E402

from modules.app_context import AppContext  # noqa: E402
from modules import next_token as nt  # noqa: E402
from modules.config import EMBEDDED_MODEL, Settings  # noqa: E402
from modules.engine.model_cache import ModelCache, ModelKind  # noqa: E402
from modules.ui.layout import build_demo  # noqa: E402

SHORT_PROMPT = "The capital of France is"
TEXT = (
    "Transformers are neural networks that read a sequence of tokens and, at every position, "
    "predict a score for each token of the vocabulary. During generation the model appends "
    "the chosen token and runs again; the keys and values of earlier tokens do not change, "
    "so they can be kept and reused instead of being computed again at every step. "
)


def prompt_of(loaded, tokens: int) -> str:
    """A text of about `tokens` tokens (re-tokenizing decoded text may shift it by one)."""
    ids = loaded.tokenizer(TEXT * (tokens // 40 + 2))["input_ids"][:tokens]
    return loaded.tokenizer.decode(ids)


def median_seconds(action: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        action()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def render_seconds(demo: gr.Blocks, prompt: str) -> float:
    """The tab's Score handler, then each output's postprocess: what the browser waits for."""
    [score] = [f for f in demo.fns.values() if f.api_name == "explorer_score"]
    start = time.perf_counter()
    outputs = score.fn(prompt, False, EMBEDDED_MODEL, 10, 1.0, 0, 1.0, progress=None)
    for component, value in zip(score.outputs, outputs, strict=True):
        if not isinstance(component, gr.State):
            component.postprocess(value)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument(
        "--threads", type=int, default=0,
        help="torch threads (0: torch's default); 1 is steadier on a busy shared machine",
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    settings = Settings(offline=True, chat_model=EMBEDDED_MODEL)

    cache = ModelCache(settings)
    cold_demo = build_demo(AppContext.create(settings, cache))
    cold = render_seconds(cold_demo, SHORT_PROMPT)  # loads the model first
    loaded = cache.get(EMBEDDED_MODEL, ModelKind.CAUSAL_LM)
    prompt = prompt_of(loaded, args.tokens)

    state = nt.start(loaded, prompt)
    tokens = len(state.ids)
    settings_ = nt.SamplingSettings()
    nt.take_steps(loaded, state, 1, "greedy", settings_)  # warm-up
    cached = median_seconds(lambda: nt.take_steps(loaded, state, 1, "greedy", settings_), args.repeats)
    fresh = median_seconds(lambda: nt.next_token_logits(loaded, state.ids), args.repeats)
    redraw = median_seconds(
        lambda: nt.distribution_from_logits(state.logits, loaded.tokenizer, nt.SamplingSettings(0.7, 50, 0.9)),
        args.repeats,
    )
    warm_short = median_seconds(lambda: render_seconds(cold_demo, SHORT_PROMPT), args.repeats)
    warm_long = median_seconds(lambda: render_seconds(cold_demo, prompt), max(3, args.repeats // 3))

    rows = [
        (f"one step, KV cache (text of ~{tokens} tokens)", cached),
        (f"one step, fresh forward pass over ~{tokens} tokens", fresh),
        ("moving a sampling slider (no model call)", redraw),
        ("first render, short prompt, cold (model load included)", cold),
        ("first render, short prompt, model loaded", warm_short),
        (f"first render, {tokens}-token prompt, model loaded", warm_long),
    ]
    print(f"\nNext-token explorer on {loaded.description}, torch threads={torch.get_num_threads()}")
    print(f"{'what':<58} {'seconds':>9}")
    print("-" * 68)
    for name, seconds in rows:
        print(f"{name:<58} {seconds:>9.4f}")
    print("-" * 68)
    print(f"cache speed-up per step: {fresh / cached:.1f}x")


if __name__ == "__main__":
    main()
