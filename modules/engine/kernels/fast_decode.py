"""Faster CPU decoding for chat models: fused layers and weight-only int4/int8 kernels.

Decoding one token of SmolLM2-135M on 2 CPU cores costs two things: reading every
weight once (~134 MB in int8, 67 MB in int4; memory bandwidth bound) and ~3,000
small tensor operations of transformers' Llama layers (dispatch bound). Both are cut
here (figures in benchmarks/decode_speed.py):

* Llama layers become `FusedLlamaLayer`s (modules/engine/kernels/fused_llama.py): the same
  arithmetic in about a third of the operations.
* Their projections get weight-only quantized kernels: torch's int4 kernel
  (`_weight_int4pack_mm_for_cpu`, groups of 32 with a scale and a zero point) where
  the weights are already 4-bit, as a Q4_1 GGUF file's are: the groups then hold
  exactly the file's values, so nothing is lost. Other weights get int8 with one
  scale per output row (`_weight_int8pack_mm`), an approximation whose agreement
  with float32 the benchmark reports.
* The LM head (the token embedding, not 4-bit in the GGUF file) gets int8, with its top
  logits recomputed in float32 (`exact_top_logits`), so greedy picks do not hang on bf16 ties.

Prompts (many rows at once) go through dense matmuls on the same quantized values, in
the plan's prefill dtype: bf16 where the CPU has it natively; elsewhere the whole prompt
pass (residual stream, norms, rotary, attention) runs in float32 with a float32 dense
copy (bf16 above DENSE_FP32_LIMIT_BYTES), and k/v enter the cache in the decode dtype. The model's description names the
weights' format, so the explorer's probabilities are read for what they are.
Settings.fast_decode=False (PLAYGROUND_FAST_DECODE=0) turns all of it off.
Measured and not adopted: static KV cache, static cache + torch.compile (inductor,
freezing on/off): within ±7% of eager after 55-120 s of compiling.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from modules.engine.cpu_profile import SpeedPlan, plan_for
from modules.engine.kernels import native_step
from modules.engine.kernels.decode_step import supports_decode_step
from modules.engine.kernels.fused_llama import PREFILL_ROWS, float_linear, fuse_layers

log = logging.getLogger(__name__)

INT8_TAG = "int8 weights"
INT4_TAG = "int4 weights as in its GGUF file, int8 head"
FLOAT_TAG = "fused float layers"
# A float32 dense copy of the layers' weights for prompts is kept up to this size; above
# it the copy is bf16 (half the memory) and is widened per matmul (~5-10 % of its time).
DENSE_FP32_LIMIT_BYTES = 2 * 1024**3
INT4_GROUP = 32  # a GGUF Q4_0/Q4_1 block
# A weight counts as 4-bit when re-quantizing it to 4 bits moves no value by more than
# this fraction of the largest (bf16 rounding of exact 4-bit values stays far below;
# genuinely float weights land at ~3-5 %).
INT4_EXACT_TOLERANCE = 0.01


def int8_kernel_available() -> bool:
    """Whether this torch build has the CPU weight-only int8 matmul."""
    return hasattr(torch, "_weight_int8pack_mm")


def int4_kernel_available() -> bool:
    return hasattr(torch.ops.aten, "_weight_int4pack_mm_for_cpu")


class _QuantizedLinear(nn.Module):
    """y = x Wᵀ (+ b) from quantized weights: a kernel for a few rows, a float matmul for many.

    The quantized kernels are matrix-vector kernels; for a long prompt a float matmul
    over the same quantized values (`float_weight`) is several times faster. That
    matmul runs in `prefill_dtype`, which the CPU profile picks per machine: bf16 where
    the CPU has native bf16 matmuls, float32 where bf16 would be emulated (AVX2: ~4x slower).
    """

    def __init__(self, out_features: int, in_features: int, bias: torch.Tensor | None,
                 compute_dtype: torch.dtype, prefill_dtype: torch.dtype | None = None,
                 dense_dtype: torch.dtype | None = None) -> None:
        super().__init__()
        self.out_features, self.in_features = out_features, in_features
        self.compute_dtype = compute_dtype
        self.prefill_dtype = prefill_dtype or compute_dtype
        self.dense_dtype = dense_dtype or self.prefill_dtype  # how the dense copy is stored
        self.register_buffer("bias", None if bias is None else bias.detach().to(compute_dtype),
                             persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        flat = x.reshape(-1, shape[-1])
        if flat.shape[0] > PREFILL_ROWS:  # a prompt pass in the prefill dtype stays in it
            out = self.many_rows(flat.to(self.prefill_dtype))
            out = out.to(x.dtype if x.dtype == self.prefill_dtype else self.compute_dtype)
        else:
            out = self.few_rows(flat.to(self.compute_dtype))
        if self.bias is not None:
            out = out + self.bias
        return out.reshape(*shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}"


class Int8WeightOnlyLinear(_QuantizedLinear):
    """int8 weights with one scale per output row (scale = max|W_row| / 127).

    The bf16 copy holds the int8 values themselves (exact in bf16) and the scale is
    applied after the product, as the int8 kernel does, so a prompt read in one pass
    and the same text fed token by token (the explorer) see the same model.
    """

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None = None,
                 compute_dtype: torch.dtype = torch.bfloat16,
                 prefill_dtype: torch.dtype | None = None,
                 dense_dtype: torch.dtype | None = None) -> None:
        super().__init__(weight.shape[0], weight.shape[1], bias, compute_dtype, prefill_dtype,
                         dense_dtype)
        weight = weight.detach().float()
        scale = weight.abs().amax(dim=1).clamp(min=1e-12) / 127.0
        quantized = torch.round(weight / scale[:, None]).clamp(-127, 127).to(torch.int8)
        self.register_buffer("weight_int8", quantized.contiguous(), persistent=False)
        self.register_buffer("float_weight", quantized.to(self.dense_dtype), persistent=False)
        self.register_buffer("scale", scale.to(compute_dtype), persistent=False)
        self.register_buffer("prefill_scale", scale.to(self.prefill_dtype), persistent=False)

    @classmethod
    def from_linear(cls, linear: nn.Linear, compute_dtype: torch.dtype = torch.bfloat16,
                    prefill_dtype: torch.dtype | None = None, dense_dtype: torch.dtype | None = None):
        return cls(linear.weight, linear.bias, compute_dtype, prefill_dtype, dense_dtype)

    # The LM head's: float32 logits whose top entries are exact (`exact_top_logits`).
    exact_top = False
    # In the native step: rows rounded to int16 (`native_step.int16_rows_wanted`), not float32.
    int16_rows = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = super().forward(x)
        if self.exact_top and out.dtype != torch.float32:  # many rows (few_rows did its own)
            out = exact_top_logits(out, x, self.weight_int8, self.scale)
        return out

    def few_rows(self, flat: torch.Tensor) -> torch.Tensor:
        out = torch._weight_int8pack_mm(flat, self.weight_int8, self.scale)
        return exact_top_logits(out, flat, self.weight_int8, self.scale) if self.exact_top else out

    def many_rows(self, flat: torch.Tensor) -> torch.Tensor:
        return F.linear(flat, self.float_weight.to(flat.dtype)) * self.prefill_scale


# bf16 logits sit within |logit|·2^-8 of their value, so the true top one is at most
# 2^-7 of the top below it; twice that is searched.
NEAR_TOP = 2.0**-6
# Also recomputed whatever their distance: each row's most likely tokens, which the explorer
# lists and top-k sampling cuts between (ties there changed which tokens a top-k kept).
EXACT_TOP_COUNT = 32


def exact_top_logits(rounded: torch.Tensor, rows: torch.Tensor, weight_int8: torch.Tensor,
                     scale: torch.Tensor) -> torch.Tensor:
    """float32 logits from an int8 head's bf16 ones, each row's top EXACT_TOP_COUNT and any
    others near its top recomputed in float32 from the same int8 weights and inputs.

    The int8 kernel rounds its output to bf16 (0.06-0.12 apart at logits of 16-32), so near
    ties among the top tokens, common in a small model, came out equal and greedy decoding
    took the lower token id: which token won depended on the CPU's kernel rounding. The
    native step's head is float32 throughout (native_step.cpp); this makes the others pick
    as it does, for ~20,000 multiply-adds per row (SmolLM2: 0.07 % of its head's)."""
    logits = rounded.float().reshape(-1, rounded.shape[-1])
    inputs = rows.reshape(-1, rows.shape[-1]).float()
    top = logits.topk(min(EXACT_TOP_COUNT, logits.shape[-1]), dim=1)
    near = logits >= top.values[:, :1] - top.values[:, :1].abs() * NEAR_TOP
    row, column = near.scatter_(1, top.indices, True).nonzero(as_tuple=True)
    logits[row, column] = (inputs[row] * weight_int8[column].float()).sum(1) * scale[column].float()
    return logits.reshape(rounded.shape)


def exact_int4_groups(weight: torch.Tensor, group: int = INT4_GROUP):
    """(q in 0..15, scale, zero) per group of `group` inputs with W = (q - 8)·scale + zero,
    when the weights already are 4-bit values; None when they are not.

    Asymmetric min/max quantization is the shape of a GGUF Q4_1 block (W = d·q + m), so
    a Q4_1 block comes back as its own 16 levels. One pass of in-place arithmetic: this
    runs on every load.
    """
    rows, columns = weight.shape
    if weight.ndim != 2 or columns % group or rows % 8:
        return None
    groups = weight.detach().float().reshape(rows, columns // group, group)
    low, high = groups.amin(-1, keepdim=True), groups.amax(-1, keepdim=True)
    scale = ((high - low) / 15).clamp_(min=1e-12)
    q = (groups - low).div_(scale).round_()
    error = torch.addcmul(low, q, scale).sub_(groups).abs_().amax()
    if error > INT4_EXACT_TOLERANCE * torch.maximum(low.abs(), high.abs()).amax():
        return None
    zero = low.add_(scale, alpha=8)
    return q.reshape(rows, columns), scale[..., 0], zero[..., 0]


class Int4WeightOnlyLinear(_QuantizedLinear):
    """4-bit weights in groups of 32 with a bf16 scale and zero point, torch's CPU int4 kernel.

    Built from weights that are 4-bit already (`exact_int4_groups`), so the bf16 weight
    itself serves the many-rows path. `tiles` ("amx" or "int16", `native_step.tile_kernel`):
    also keep them as that kernel of the native step reads them (`native_step.tile_layout`),
    where their scales are float16 values; prompts then take that kernel up to the rows it
    measured faster for (`native_prompt_rows`).
    """

    def __init__(self, weight: torch.Tensor, groups, compute_dtype: torch.dtype = torch.bfloat16,
                 group: int = INT4_GROUP, bias: torch.Tensor | None = None,
                 prefill_dtype: torch.dtype | None = None,
                 dense_dtype: torch.dtype | None = None, tiles: str | None = None) -> None:
        super().__init__(weight.shape[0], weight.shape[1], bias, compute_dtype, prefill_dtype,
                         dense_dtype)
        self.group = group
        q, scale, zero = groups
        packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(q.to(torch.int32), 1)
        self.register_buffer("packed", packed, persistent=False)
        scales_and_zeros = torch.stack([scale, zero], dim=-1).transpose(0, 1).contiguous()
        self.register_buffer("scales_and_zeros", scales_and_zeros.to(compute_dtype), persistent=False)
        self.register_buffer("float_weight", weight.detach().to(self.dense_dtype), persistent=False)
        tiled = native_step.tile_layout(q, scale, zero) if tiles and group == native_step.TILE_GROUP else None
        self.register_buffer("tile_weight", tiled and tiled[0], persistent=False)
        self.register_buffer("tile_scale_low", tiled and tiled[1], persistent=False)
        self.tile_kernel = tiles if tiled else None
        self.native_prompt_rows = 0  # prompt passes of up to this many rows: the tile kernel (measured)

    def few_rows(self, flat: torch.Tensor) -> torch.Tensor:
        return torch.ops.aten._weight_int4pack_mm_for_cpu(
            flat, self.packed, self.group, self.scales_and_zeros)

    def many_rows(self, flat: torch.Tensor, native: bool = True) -> torch.Tensor:
        """A prompt pass: the native kernel where it measured faster for this many rows
        (`native_step.measure_prompt_rows`), else the dense copy in the prefill dtype."""
        if native and flat.shape[0] <= self.native_prompt_rows:
            out = native_step.tile_matmul(self, flat)
            if out is not None:
                return out.to(flat.dtype)
        return F.linear(flat, self.float_weight.to(flat.dtype))


def quantize_linears_int8(model: nn.Module, compute_dtype: torch.dtype = torch.bfloat16,
                          prefill_dtype: torch.dtype | None = None,
                          dense_dtype: torch.dtype | None = None, int16_rows: bool = False) -> int:
    """Replace every plain nn.Linear in `model` (LM head included) by an int8 one; the count.
    `int16_rows`: theirs (Int8WeightOnlyLinear.int16_rows).

    A tied LM head gets its own int8 copy; the input embedding keeps its float weights.
    """
    targets = [
        (parent, name, child)
        for parent in model.modules()
        for name, child in parent.named_children()
        if type(child) is nn.Linear
    ]
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    for parent, name, child in targets:
        quantized = Int8WeightOnlyLinear.from_linear(child, compute_dtype, prefill_dtype, dense_dtype)
        quantized.exact_top = child is head and child.bias is None
        quantized.int16_rows = int16_rows
        setattr(parent, name, quantized)
    return len(targets)


def has_four_bit_layers(model: nn.Module) -> bool:
    """Are the first layer's projections exactly 4-bit (a Q4_0/Q4_1 GGUF file's)?"""
    layers = getattr(getattr(model, "model", None), "layers", None)
    if not layers or not int4_kernel_available():
        return False
    attention = getattr(layers[0], "self_attn", None)
    weight = getattr(getattr(attention, "q_proj", None), "weight", None)
    return weight is not None and exact_int4_groups(weight) is not None


def dense_copy_dtype(model: nn.Module, prefill_dtype: torch.dtype) -> torch.dtype:
    """How the prompts' dense copy of the weights is stored: in the prefill dtype, unless a
    float32 copy of every linear would pass DENSE_FP32_LIMIT_BYTES (then bf16, widened per matmul)."""
    if prefill_dtype != torch.float32:
        return prefill_dtype
    elements = sum(m.weight.numel() for m in model.modules() if isinstance(m, nn.Linear))
    return torch.float32 if elements * 4 <= DENSE_FP32_LIMIT_BYTES else torch.bfloat16


def prepare_for_fast_decode(model: nn.Module, device: torch.device, plan: SpeedPlan,
                            tiles: str | None = None, int8_int16_rows: bool = False) -> str | None:
    """Fuse and quantize a causal LM on CPU in place, as `plan` says; how its weights are held.

    The model is first cast to the plan's decode dtype (its activations' dtype); prompt
    matmuls run in the plan's prefill dtype. Returns INT4_TAG when the layers run on
    4-bit weights, INT8_TAG when on int8, "float weights" for fused float layers, None
    when the model was left as it is (not on CPU, or no weight-only kernels in torch).
    `tiles`: the native step's int4 kernel ("amx", "int16"), whose layout int4 layers also keep;
    `int8_int16_rows`: the native step multiplies int8 weights (layers and LM head) by
    int16-rounded rows.
    """
    if device.type != "cpu" or not int8_kernel_available():
        return None
    dtype, prefill_dtype = plan.dtype, plan.prefill_torch_dtype
    dense_dtype = dense_copy_dtype(model, prefill_dtype)
    model.to(dtype)
    formats: list[str] = []

    def make_linear(weight: torch.Tensor, bias: torch.Tensor | None) -> nn.Module:
        if plan.decode_kernel == "float":
            formats.append("float")
            return float_linear(weight.to(dtype), None if bias is None else bias.to(dtype))
        groups = exact_int4_groups(weight) if int4_kernel_available() else None
        if groups is not None:
            formats.append("int4")
            return Int4WeightOnlyLinear(weight, groups, dtype, bias=bias, prefill_dtype=prefill_dtype,
                                        dense_dtype=dense_dtype, tiles=tiles)
        formats.append("int8")
        linear = Int8WeightOnlyLinear(weight, bias, dtype, prefill_dtype, dense_dtype)
        linear.int16_rows = int8_int16_rows
        return linear

    # A whole prompt pass in another dtype needs the quantized layers' dense copy; fused
    # float layers hold only the model's dtype.
    whole_pass = prefill_dtype if prefill_dtype != dtype and plan.decode_kernel != "float" else None
    fused = fuse_layers(model, make_linear, whole_pass)
    rest = 0 if plan.decode_kernel == "float" else quantize_linears_int8(
        model, dtype, prefill_dtype, dense_dtype, int8_int16_rows)
    log.info("Fast decode: %d fused layers (%d int4, %d int8, %d float projections), "
             "%d more int8 linears", fused, formats.count("int4"), formats.count("int8"),
             formats.count("float"), rest)
    if formats and set(formats) == {"int4"}:
        return INT4_TAG
    if formats and set(formats) == {"float"}:
        return FLOAT_TAG
    return INT8_TAG if formats or rest else None


@dataclass(frozen=True)
class Prepared:
    """What preparation made of a model: its dtype now, its weights' format, the CPU plan."""

    dtype: torch.dtype
    quantization: str | None = None
    plan: str | None = None


SHORT_FORMATS = {INT4_TAG: "int4", INT8_TAG: "int8", FLOAT_TAG: "float"}


def prepare_chat_model(model: nn.Module, device: torch.device, dtype: torch.dtype,
                       model_key: str, cache_dir: str, probe: bool, native: bool = False,
                       amx: bool = True, int16_rows: bool = True) -> Prepared:
    """Fast decode for a chat model on CPU, with kernels and dtypes measured for this machine.

    `probe` (the dtype setting is "auto"): the CPU profile's plan, cached per model and
    machine. Otherwise the user chose `dtype`: bf16 runs the fast path all in bf16, any
    other explicit dtype (float32: precision wanted) leaves the model as it is.
    `native`: decode steps go through the native step once it is built; `amx`, `int16_rows`:
    its int4 layers on AMX tiles, or by int16-rounded rows, where the CPU allows (Settings.amx,
    .int16_rows).
    """
    if device.type != "cpu" or not int8_kernel_available():
        return Prepared(dtype)
    if probe:
        plan = plan_for(model.config, model_key, cache_dir, four_bit=has_four_bit_layers(model))
    elif dtype == torch.bfloat16:
        plan = SpeedPlan.fixed(dtype)
    else:
        return Prepared(dtype)
    tiles = native_step.tile_kernel(amx, int16_rows) if native else None
    int8_int16_rows = native and int16_rows and native_step.int16_rows_wanted()
    quantization = prepare_for_fast_decode(model, device, plan, tiles, int8_int16_rows)
    if quantization is None:  # nothing fused or quantized; the model may have been cast
        return Prepared(plan.dtype)
    if native and supports_decode_step(model):
        native_step.attach(model)  # decode steps through native_step.cpp once it is built
    line = plan.describe(SHORT_FORMATS.get(quantization, quantization))
    log.info("Speed plan: %s (%s)", line, plan.source)
    return Prepared(plan.dtype, quantization, line)
