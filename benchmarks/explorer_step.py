"""Next-token explorer on the embedded model: one step, and each view, on a ~200-token text.

    HF_HUB_OFFLINE=1 python -m benchmarks.explorer_step [--tokens 200] [--repeats 10] [--threads N]

Prints one table (median seconds over the repeats), all rows from one run so they compare:
- one step reusing the prefix's keys/values (`past_key_values`) vs a fresh forward
  pass over the whole text, which is what stepping would cost without a cache;
- moving a sampling slider (distribution, stages, entropy sweep: no model call);
- each view that runs a pass, only when opened: logit lens, attention (on transformers'
  own layers: the fused CPU layers do not return attention weights), beam search,
  scoring a continuation, surprise of a pasted text, compare, switching branch, replay;
- time to first render of the tab (Score handler + postprocessing), cold and warm.
Timings on a shared 2-core machine are noisy: compare rows of one run, and name the CPU.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import statistics
import time
from collections.abc import Callable

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import gradio as gr  # noqa: E402
import torch  # noqa: E402

from modules.app_context import AppContext  # noqa: E402
from modules.config import EMBEDDED_MODEL, Settings  # noqa: E402
from modules.engine.model_cache import ModelCache, ModelKind  # noqa: E402
from modules.tasks import next_token as nt  # noqa: E402
from modules.tasks.explorer import (  # noqa: E402
    attention, beam_search, compare, logit_lens, sampling_stages, scoring, session)
from modules.ui.layout import build_demo  # noqa: E402

SHORT_PROMPT = "The capital of France is"
TEXT = (
    "Transformers are neural networks that read a sequence of tokens and, at every position, "
    "predict a score for each token of the vocabulary. During generation the model appends "
    "the chosen token and runs again; the keys and values of earlier tokens do not change, "
    "so they can be kept and reused instead of being computed again at every step. "
)
KNOBS = (10, 1.0, 0, 1.0, 0.0)  # shown, temperature, top-k, top-p, min-p


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


def row(name: str, seconds: float) -> tuple[str, float]:
    """A table row, printed as soon as it is measured (a slow machine still shows progress)."""
    print(f"{name:<66} {seconds:>9.4f}", flush=True)
    return name, seconds


def render_seconds(demo: gr.Blocks, prompt: str) -> float:
    """The tab's Score handler, then each output's postprocess: what the browser waits for."""
    [score] = [f for f in demo.fns.values() if f.api_name == "explorer_score"]
    start = time.perf_counter()
    outputs = score.fn(prompt, False, EMBEDDED_MODEL, *KNOBS, progress=None)
    for component, value in zip(score.outputs, outputs, strict=True):
        if not isinstance(component, gr.State):
            component.postprocess(value)
    return time.perf_counter() - start


def cpu_class() -> str:
    capability = torch.backends.cpu.get_cpu_capability()
    name = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
                platform.processor() or "unknown CPU") if os.path.exists("/proc/cpuinfo") else platform.processor()
    return f"{name}, torch CPU capability {capability}"


def view_rows(loaded, plain, prompt: str, repeats: int) -> list[tuple[str, float]]:
    """Each view once warmed, then timed on the ~200-token text; rows print as they come."""
    walk = session.new_session(loaded, prompt)
    ids, tokenizer = walk.explorer.ids, loaded.tokenizer
    settings = nt.SamplingSettings(0.7, 50, 0.9, 0.05)
    few = max(3, repeats // 3)
    nt.take_steps(loaded, walk.explorer, 1, "greedy", settings)  # warm-up

    def redraw():
        logits = walk.explorer.logits
        nt.distribution_from_logits(logits, tokenizer, settings)
        sampling_stages.sampling_stages(logits, tokenizer, settings)
        sampling_stages.temperature_sweep(logits)

    views = [
        (f"one step, KV cache (text of ~{len(ids)} tokens)",
         lambda: nt.take_steps(loaded, walk.explorer, 1, "greedy", settings), repeats),
        (f"one step, fresh forward pass over ~{len(ids)} tokens",
         lambda: nt.next_token_logits(loaded, walk.explorer.ids), repeats),
        ("moving a slider: distribution + stages + sweep (no model call)", redraw, repeats),
        ("logit lens (one pass, every layer decoded)", lambda: logit_lens.logit_lens(loaded, ids), few),
        ("attention (one eager pass, transformers' layers)", lambda: attention.attention(plain, ids), few),
        ("beam search, 4 beams x 8 tokens, + greedy + sampled",
         lambda: beam_search.beam_search(loaded, ids, 4, 8), few),
        ("score a 3-token continuation", lambda: scoring.score_continuation(loaded, ids, " the next step"), few),
        (f"surprise of a pasted ~{len(ids)}-token text", lambda: scoring.text_surprise(loaded, prompt), few),
        ("compare two prompts (two passes + KL)", lambda: compare.compare(loaded, ids, loaded, ids[:-1]), few),
    ]
    rows = [row(name, median_seconds(action, times)) for name, action, times in views]
    nt.take_steps(loaded, walk.explorer, 10, "sample", settings, seed=1)
    session.fork(loaded, walk, int(walk.explorer.logits.argmax()), settings)
    other = lambda: "main" if walk.active != "main" else "b1"  # noqa: E731
    rows.append(row("switch branch (one prefill of its text)",
                    median_seconds(lambda: session.switch(loaded, walk, other()), few)))
    exported = session.export_session(walk)
    rows.append(row("replay an exported session (2 branches, ~25 steps)",
                    median_seconds(lambda: session.replay_session(loaded, exported), few)))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--threads", type=int, default=0,
                        help="torch threads (0: torch's default); 1 is steadier on a busy shared machine")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    settings = Settings(offline=True, chat_model=EMBEDDED_MODEL)

    cache = ModelCache(settings)
    demo = build_demo(AppContext.create(settings, cache))
    cold = render_seconds(demo, SHORT_PROMPT)  # loads the model first
    loaded = cache.get(EMBEDDED_MODEL, ModelKind.CAUSAL_LM)
    plain = ModelCache(dataclasses.replace(settings, fast_decode=False)).get(EMBEDDED_MODEL, ModelKind.CAUSAL_LM)
    prompt = prompt_of(loaded, args.tokens)
    print(f"\nNext-token explorer on {loaded.description}, torch threads={torch.get_num_threads()}")
    print(f"CPU: {cpu_class()}")
    print(f"{'what':<66} {'seconds':>9}")
    print("-" * 76)

    rows = view_rows(loaded, plain, prompt, args.repeats)
    rows += [
        row("first render, short prompt, cold (model load included)", cold),
        row("first render, short prompt, model loaded",
            median_seconds(lambda: render_seconds(demo, SHORT_PROMPT), args.repeats)),
        row(f"first render, {args.tokens}-token prompt, model loaded",
            median_seconds(lambda: render_seconds(demo, prompt), max(3, args.repeats // 3))),
    ]
    print("-" * 76)
    print(f"cache speed-up per step: {rows[1][1] / rows[0][1]:.1f}x")


if __name__ == "__main__":
    main()
