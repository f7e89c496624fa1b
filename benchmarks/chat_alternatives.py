"""What recording each token's top alternatives (chat branching) costs per reply.

    HF_HUB_OFFLINE=1 python -m benchmarks.chat_alternatives [--tokens 64] [--rounds 5]

The embedded chat model writes the same greedy reply through the chat path
(`stream_chat`), with alternatives off (0) and on (5, as the chat tab asks),
interleaved round after round on this shared machine. Prints the CPU class torch
uses, then the median decode tokens/s of each and their ratio from this one run.
The alternatives come from the logits each step computed anyway: one softmax and
top-k per token, no extra forward pass.
"""

from __future__ import annotations

import argparse
import os
import statistics

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from modules.config import EMBEDDED_MODEL, Settings  # noqa: E402
from modules.engine.model_cache import ModelCache, ModelKind  # noqa: E402
from modules.tasks.chat import GenerationParams, stream_chat  # noqa: E402

MESSAGES = [{"role": "user", "content": "Write a short story about a lighthouse keeper."}]


def decode_speed(loaded, alternatives: int, tokens: int) -> float:
    params = GenerationParams(max_new_tokens=tokens, do_sample=False, alternatives=alternatives)
    final = list(stream_chat(loaded, MESSAGES, params))[-1]
    if alternatives:
        assert final.tokens, "alternatives were asked for but not recorded"
    return final.usage.tokens_per_second


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    loaded = ModelCache(Settings(offline=True)).get(EMBEDDED_MODEL, ModelKind.CAUSAL_LM)
    print(f"CPU capability (torch): {torch.backends.cpu.get_cpu_capability()}; "
          f"threads: {torch.get_num_threads()}; model: {loaded.description}")
    decode_speed(loaded, 0, 8)  # warm-up
    speeds: dict[int, list[float]] = {0: [], 5: []}
    for _ in range(args.rounds):
        for alternatives in speeds:
            speeds[alternatives].append(decode_speed(loaded, alternatives, args.tokens))
    off, on = (statistics.median(speeds[n]) for n in (0, 5))
    print(f"\n| alternatives recorded | decode tokens/s (median of {args.rounds}) | ratio |")
    print("|---|---|---|")
    print(f"| none | {off:.1f} | 1.00 |")
    print(f"| top 5 per token | {on:.1f} | {on / off:.2f} |")


if __name__ == "__main__":
    main()
