"""Pick where models run and in which precision.

On CPU, chat models load in bfloat16 (half the memory of float32; most are
published in it); with the default dtype "auto" the CPU profile then picks the
dtypes they run in on this machine (modules/engine/cpu_profile.py): float32 where
bf16 matmuls are emulated (AVX2), bf16 where they are native (AVX-512 bf16, AMX).
Translation models run in bf16 only where it is native: there a batch of 16 sentences
took 0.86x float32's time, under AVX2 2.7x (a random model of opus-mt-zh-en's shape).
The classifier stays float32, where speed is ample.
"""

from __future__ import annotations

import torch

from modules.engine.cpu_profile import native_bf16

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


def pick_dtype(setting: str, device: torch.device, kind: str) -> torch.dtype:
    """bf16 on GPU; fp16 on mps; on CPU (kind "chat", "translation" or "classifier") bf16
    for chat models, for translation where bf16 is native, else fp32."""
    if setting != "auto":
        if setting not in DTYPES:
            raise ValueError(f"dtype must be auto or one of {', '.join(DTYPES)}, got {setting!r}")
        return DTYPES[setting]
    if device.type == "cuda":
        return torch.bfloat16
    if device.type == "mps":
        return torch.float16
    if kind == "chat" or (kind == "translation" and native_bf16()):
        return torch.bfloat16
    return torch.float32
