"""Pick where models run and in which precision.

On CPU, bfloat16 decodes SmolLM2 ~1.7x faster than float32 here (see
benchmarks/decode_speed.py) and gives the same greedy text, so chat models use
it; small encoders (classifier, translation) stay float32, where speed is ample.
"""

from __future__ import annotations

import torch

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def pick_device(setting: str = "auto") -> torch.device:
    """cuda, then mps, then cpu, unless the setting names one."""
    if setting != "auto":
        return torch.device(setting)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def pick_dtype(setting: str, device: torch.device, generative: bool) -> torch.dtype:
    """bf16 on GPU and for generative models on CPU; fp16 on mps; else fp32."""
    if setting != "auto":
        if setting not in DTYPES:
            raise ValueError(f"dtype must be auto or one of {', '.join(DTYPES)}, got {setting!r}")
        return DTYPES[setting]
    if device.type == "cuda":
        return torch.bfloat16
    if device.type == "mps":
        return torch.float16
    return torch.bfloat16 if generative else torch.float32
