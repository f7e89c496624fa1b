"""Faster CPU decoding for chat models: int8 weight-only linear layers.

On CPU a 135M-parameter model decodes one token per forward, and each forward
runs ~210 matrix-vector products (7 per layer × 30 layers + the LM head). The
profile (benchmarks/decode_speed.py, notes in its docstring) shows bf16 `F.linear`
taking ~78% of a decode step; torch's weight-only int8 kernel
(`torch._weight_int8pack_mm`, bf16 activations, one scale per output row) reads
half the bytes and has less per-call overhead, and decodes ~1.6-1.8x faster here.
Prompts (many rows at once) go through oneDNN's bf16 matmul on the same int8
values instead, which keeps time to first token at bf16 speed.

This is an approximation of the float model: the benchmark reports greedy and
teacher-forced top-1 agreement with the float32 reference, and the model's
description says "int8 weights" so the explorer's probabilities are read for what
they are. PLAYGROUND_FAST_DECODE=0 (Settings.fast_decode=False) turns it off.
Measured and not adopted: static KV cache, static cache + torch.compile (inductor,
freezing on/off): within ±7% of eager after 55-120 s of compiling.
"""

from __future__ import annotations

import logging
import os

import torch
from torch import nn

log = logging.getLogger(__name__)

FAST_DECODE_ENV = "PLAYGROUND_FAST_DECODE"
QUANTIZED_TAG = "int8 weights"
# Above this many rows (prompt tokens) a quantized layer uses its float copy.
PREFILL_ROWS = 8


def fast_decode_enabled(env: dict[str, str] | None = None) -> bool:
    """On unless PLAYGROUND_FAST_DECODE is 0/false/no/off."""
    value = (os.environ if env is None else env).get(FAST_DECODE_ENV, "1")
    return value.strip().lower() not in {"0", "false", "no", "off"}


def int8_kernel_available() -> bool:
    """Whether this torch build has the CPU weight-only int8 matmul."""
    return hasattr(torch, "_weight_int8pack_mm")


class Int8WeightOnlyLinear(nn.Module):
    """y = x @ (int8 W · row scale)ᵀ + b, computed by torch's weight-only int8 kernel.

    Symmetric per-output-row quantization: scale = max|W_row| / 127, so each row
    keeps 255 levels over its own range. Activations stay in `compute_dtype`.
    """

    def __init__(
        self, linear: nn.Linear, compute_dtype: torch.dtype = torch.bfloat16,
        keep_float_for_prefill: bool = True,
    ) -> None:
        super().__init__()
        weight = linear.weight.detach().float()
        scale = weight.abs().amax(dim=1).clamp(min=1e-12) / 127.0
        quantized = torch.round(weight / scale[:, None]).clamp(-127, 127).to(torch.int8)
        # The int8 kernel is a matrix-vector kernel: for a long prompt (many rows at
        # once) float weights through oneDNN are several times faster. The float copy
        # holds the int8 values themselves (exact in bf16) and the scale is applied
        # after the product, as the int8 kernel does, so a prompt read in one pass and
        # the same text fed token by token (the explorer) see the same model.
        float_weight = quantized.to(compute_dtype) if keep_float_for_prefill else None
        self.register_buffer("float_weight", float_weight, persistent=False)
        self.in_features = linear.in_features
        self.out_features = linear.out_features
        self.compute_dtype = compute_dtype
        self.register_buffer("weight_int8", quantized.contiguous(), persistent=False)
        self.register_buffer("scale", scale.to(compute_dtype), persistent=False)
        bias = None if linear.bias is None else linear.bias.detach().to(compute_dtype)
        self.register_buffer("bias", bias, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        flat = x.reshape(-1, shape[-1]).to(self.compute_dtype)
        if self.float_weight is not None and flat.shape[0] > PREFILL_ROWS:
            out = torch.nn.functional.linear(flat, self.float_weight) * self.scale
        else:
            out = torch._weight_int8pack_mm(flat, self.weight_int8, self.scale)
        if self.bias is not None:
            out = out + self.bias
        return out.reshape(*shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8 weights"


def quantize_linears_int8(model: nn.Module, compute_dtype: torch.dtype = torch.bfloat16) -> int:
    """Replace every nn.Linear in `model` (LM head included) by an int8 one; returns the count.

    A tied LM head gets its own int8 copy; the input embedding keeps its float weights.
    """
    targets = [
        (parent, name, child)
        for parent in model.modules()
        for name, child in parent.named_children()
        if type(child) is nn.Linear
    ]
    for parent, name, child in targets:
        setattr(parent, name, Int8WeightOnlyLinear(child, compute_dtype))
    return len(targets)


def prepare_for_fast_decode(model: nn.Module, device: torch.device, dtype: torch.dtype) -> str | None:
    """Quantize a bf16 causal LM on CPU in place; returns QUANTIZED_TAG, or None if left as is.

    Only CPU + bfloat16 (the CPU default for chat models): on GPU the float kernels
    are already fast, and an explicit float32 choice means the user wants precision.
    """
    if device.type != "cpu" or dtype != torch.bfloat16 or not int8_kernel_available():
        return None
    count = quantize_linears_int8(model, dtype)
    log.info("Fast decode: %d linear layers now hold int8 weights", count)
    return QUANTIZED_TAG if count else None
