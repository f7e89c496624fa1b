"""Prompt pass only: plain float32 transformers vs the app's plan, and the plan with its prompt
pass in bf16 outside the matmuls (the state before the whole pass followed the plan).

    HF_HUB_OFFLINE=1 python -m benchmarks.prefill_speed [rounds]
    ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 HF_HUB_OFFLINE=1 python -m benchmarks.prefill_speed

Two prompt lengths (208 and ~920 tokens), 2 threads, configurations interleaved round by
round, medians: on a shared machine only the ratios of one run mean anything.
"""

from __future__ import annotations

import os
import statistics
import sys
import time

import torch
from transformers import DynamicCache

from benchmarks.decode_speed import LONG_PROMPT, load, prompt_ids
from modules.engine.cpu_profile import cpu_capability
from modules.engine.kernels.fused_llama import FusedLlamaLayer
from modules.engine.model_cache import LoadedModel


def bf16_outside_matmuls(loaded: LoadedModel) -> LoadedModel:
    """Undo the whole-pass prefill dtype: only the quantized layers' matmuls follow the plan."""
    for module in loaded.model.modules():
        if isinstance(module, FusedLlamaLayer):
            module.prefill_dtype = None
    rotary = loaded.model.model.rotary_emb
    loaded.model.model.rotary_emb = getattr(rotary, "rotary", rotary)
    return loaded


def prompt_pass(loaded: LoadedModel, ids: torch.Tensor) -> float:
    with torch.inference_mode():
        start = time.perf_counter()
        loaded.model(input_ids=ids, past_key_values=DynamicCache(), use_cache=True, logits_to_keep=1)
        return time.perf_counter() - start


def main() -> None:
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 7
    torch.set_num_threads(2)
    models = {"plain fp32 transformers": load("float32", fast_decode=False),
              "app plan": load("auto", fast_decode=True),
              "app plan, bf16 outside matmuls": bf16_outside_matmuls(load("auto", fast_decode=True))}
    print(f"torch {torch.__version__}, CPU capability {cpu_capability()}, "
          f"plan: {models['app plan'].speed_plan}, load average {os.getloadavg()[0]:.1f}")
    reference = models["plain fp32 transformers"]
    for ids in (prompt_ids(reference, LONG_PROMPT), prompt_ids(reference, " ".join([LONG_PROMPT] * 5))):
        for loaded in models.values():  # warm-up
            prompt_pass(loaded, ids)
        times: dict[str, list[float]] = {name: [] for name in models}
        for _ in range(rounds):
            for name, loaded in models.items():
                times[name].append(prompt_pass(loaded, ids))
        base = statistics.median(times["plain fp32 transformers"])
        print(f"prompt {ids.shape[1]} tokens, 2 threads, medians of {rounds} interleaved rounds "
              f"(load average now {os.getloadavg()[0]:.1f})")
        for name, values in times.items():
            median = statistics.median(values)
            print(f"  {name:<34} {median:6.3f} s   {base / median:4.2f}x plain fp32's speed")


if __name__ == "__main__":
    main()
