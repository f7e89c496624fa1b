"""Which kernels and dtypes make a chat model fastest on *this* CPU, measured, not assumed.

The same torch build behaves very differently across CPU classes: with AVX-512 bf16 /
AMX, bfloat16 matmuls are native and a 208-token prompt reads ~2x faster than in
float32; on an AVX2 machine (most laptops, many cloud VMs) bf16 is emulated and the
same prompt takes ~4-6x *longer* than float32, and the weight-only kernels rank
differently too. So at load time a short probe (well under 2 s) times, at the model's
own layer shapes, the candidates for

* decode (one row): the int4 / int8 weight-only kernels and a plain float matmul,
  each with bf16 and float32 activations;
* prefill (many rows): a float matmul in bf16 and in float32,

and `SpeedPlan` records the winners. Decisions are cached on disk per (model, CPU
signature, torch version), so later loads skip the probe. The probe times real
kernels at real shapes but not the rest of a layer; ties go to float32, whose
results are the reference, so a plan is never knowingly slower than plain float32.
"""

from __future__ import annotations

import json
import logging
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch.nn import functional as F

log = logging.getLogger(__name__)

PROBE_SECONDS = 1.2  # stop adding rounds after this long (a round takes ~10-100 ms)
PROBE_MIN_ROUNDS = 3
PREFILL_PROBE_ROWS = 64
# bf16 must beat float32 by this factor to be chosen (noise guard; float32 is the reference).
BF16_MARGIN = 1.1
CACHE_FILE = "cpu_profile.json"
DTYPE_NAMES = {torch.float32: "fp32", torch.bfloat16: "bf16"}
DTYPES_BY_NAME = {name: dtype for dtype, name in DTYPE_NAMES.items()}


@dataclass(frozen=True)
class SpeedPlan:
    """How a chat model runs on this CPU: decode kernel + activation dtype, prefill dtype."""

    capability: str  # torch.backends.cpu.get_cpu_capability(): "AVX512", "AVX2", ...
    decode_kernel: str  # "quantized" (int4 where the weights are 4-bit, else int8) or "float"
    decode_dtype: str  # the model's activation dtype: "bf16" or "fp32"
    prefill_dtype: str  # the dtype of the prompt's matmuls
    source: str = "probe"  # "probe", "cache" or "fixed" (an explicit dtype setting)

    @property
    def dtype(self) -> torch.dtype:
        return DTYPES_BY_NAME[self.decode_dtype]

    @property
    def prefill_torch_dtype(self) -> torch.dtype:
        return DTYPES_BY_NAME[self.prefill_dtype]

    def describe(self, decode_format: str) -> str:
        """One line for the page, the log and the benchmark, e.g.
        'decode: fused int4 (bf16) · prefill: fp32 (AVX2)'."""
        return (f"decode: fused {decode_format} ({self.decode_dtype}) · "
                f"prefill: {self.prefill_dtype} ({self.capability})")

    @classmethod
    def fixed(cls, dtype: torch.dtype) -> SpeedPlan:
        """No probe: everything in `dtype` (the user chose it)."""
        name = DTYPE_NAMES.get(dtype, "bf16")
        return cls(cpu_capability(), "quantized", name, name, "fixed")


def cpu_capability() -> str:
    return torch.backends.cpu.get_cpu_capability()


def cpu_signature() -> str:
    """What decides kernel speed: ISA torch uses, CPU model and bf16 flags, threads, torch."""
    flags: set[str] = set()
    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and model == "unknown":
                model = line.split(":", 1)[1].strip()
            elif line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    except OSError:
        pass
    bf16 = ",".join(sorted(flags & {"avx512_bf16", "amx_bf16", "avx512f", "avx2"}))
    isa_env = os.environ.get("ATEN_CPU_CAPABILITY", "") + os.environ.get("ONEDNN_MAX_CPU_ISA", "")
    return (f"{cpu_capability()}|{isa_env}|{model}|{bf16}|threads={torch.get_num_threads()}"
            f"|torch={torch.__version__}")


@dataclass(frozen=True)
class LayerShapes:
    """(out, in) of a decoder layer's four fused projections."""

    qkv: tuple[int, int]
    o: tuple[int, int]
    gate_up: tuple[int, int]
    down: tuple[int, int]

    @classmethod
    def of(cls, config) -> LayerShapes:
        hidden = config.hidden_size
        heads, kv_heads = config.num_attention_heads, config.num_key_value_heads
        head_dim = getattr(config, "head_dim", None) or hidden // heads
        inter = config.intermediate_size
        return cls(((heads + 2 * kv_heads) * head_dim, hidden), (hidden, heads * head_dim),
                   (2 * inter, hidden), (hidden, inter))

    def all(self) -> list[tuple[int, int]]:
        return [self.qkv, self.o, self.gate_up, self.down]


def plan_for(config, model_key: str, cache_dir: str | os.PathLike, four_bit: bool) -> SpeedPlan:
    """The cached plan for this model on this machine, or a fresh probe's (then cached)."""
    shapes = LayerShapes.of(config)
    key = f"{model_key}|{shapes.all()}|4bit={four_bit}|{cpu_signature()}"
    path = Path(cache_dir) / CACHE_FILE
    cached = _read(path).get(key)
    if cached:
        plan = SpeedPlan(**{**cached["plan"], "source": "cache"})
        log.info("CPU plan for %s (cached): %s", model_key, plan)
        return plan
    start = time.perf_counter()
    timings = probe(shapes)
    plan = decide(timings, four_bit)
    log.info("CPU plan for %s: %s (probe %.2f s; µs per layer: %s)", model_key, plan,
             time.perf_counter() - start, {k: round(v) for k, v in timings.items()})
    _write(path, key, {"plan": asdict(plan), "timings_us": timings})
    return plan


def decide(timings: dict[str, float], four_bit: bool) -> SpeedPlan:
    """Pick the fastest decode and prefill candidates; float32 wins ties within BF16_MARGIN."""
    quantized = "int4" if four_bit and "decode int4 bf16" in timings else "int8"
    decode = {(kernel, dtype): timings[f"decode {name} {dtype}"]
              for kernel, name in (("quantized", quantized), ("float", "float"))
              for dtype in ("bf16", "fp32") if f"decode {name} {dtype}" in timings}
    for (kernel, dtype), value in list(decode.items()):
        if dtype == "bf16":  # bf16 has to win clearly
            decode[(kernel, dtype)] = value * BF16_MARGIN
    decode_kernel, decode_dtype = min(decode, key=decode.get)
    bf16_prefill = timings["prefill bf16"] * BF16_MARGIN < timings["prefill fp32"]
    return SpeedPlan(cpu_capability(), decode_kernel, decode_dtype,
                     "bf16" if bf16_prefill else "fp32")


def probe(shapes: LayerShapes) -> dict[str, float]:
    """Median µs per decoder layer of each candidate, measured interleaved round by round."""
    candidates = _candidates(shapes)
    samples: dict[str, list[float]] = {name: [] for name in candidates}
    with torch.inference_mode():
        for run in candidates.values():  # warm-up: first calls pack and allocate
            run()
        start = time.perf_counter()
        rounds = 0
        while rounds < PROBE_MIN_ROUNDS or time.perf_counter() - start < PROBE_SECONDS:
            for name, run in candidates.items():
                began = time.perf_counter()
                run()
                samples[name].append((time.perf_counter() - began) * 1e6)
            rounds += 1
            if rounds >= 50:
                break
    return {name: statistics.median(values) for name, values in samples.items()}


def _candidates(shapes: LayerShapes) -> dict[str, Callable[[], None]]:
    """name -> a function running one layer's four projections that way."""
    from modules.engine.kernels.fast_decode import int4_kernel_available, int8_kernel_available

    generator = torch.Generator().manual_seed(0)
    floats = [torch.randn(out, inp, generator=generator) * 0.02 for out, inp in shapes.all()]
    runs: dict[str, Callable[[], None]] = {}
    for dtype in (torch.bfloat16, torch.float32):
        name = DTYPE_NAMES[dtype]
        weights = [w.to(dtype) for w in floats]
        row = [torch.randn(1, inp, generator=generator).to(dtype) for _, inp in shapes.all()]
        rows = [torch.randn(PREFILL_PROBE_ROWS, inp, generator=generator).to(dtype)
                for _, inp in shapes.all()]
        runs[f"decode float {name}"] = _each(F.linear, row, weights)
        runs[f"prefill {name}"] = _each(F.linear, rows, weights)
        if int8_kernel_available():
            int8 = [torch.randint(-127, 128, w.shape, dtype=torch.int8, generator=generator)
                    for w in floats]
            scales = [torch.rand(w.shape[0], generator=generator).to(dtype) for w in floats]
            runs[f"decode int8 {name}"] = _each(
                lambda x, w, s: torch._weight_int8pack_mm(x, w, s), row, int8, scales)
        if int4_kernel_available():
            packed = [torch.ops.aten._convert_weight_to_int4pack_for_cpu(
                torch.randint(0, 16, w.shape, dtype=torch.int32, generator=generator), 1)
                for w in floats]
            scales = [torch.rand(w.shape[1] // 32, w.shape[0], 2, generator=generator).to(dtype)
                      for w in floats]
            runs[f"decode int4 {name}"] = _each(
                lambda x, p, s: torch.ops.aten._weight_int4pack_mm_for_cpu(x, p, 32, s),
                row, packed, scales)
    return runs


def _each(op: Callable, *argument_lists: list) -> Callable[[], None]:
    def run() -> None:
        for arguments in zip(*argument_lists):
            op(*arguments)
    return run


def _read(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _write(path: Path, key: str, entry: dict) -> None:
    """Add one decision to the cache file (atomic rename; a failure only costs a re-probe)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        entries = _read(path)
        entries[key] = entry
        temporary = path.with_suffix(f".{os.getpid()}.tmp")
        temporary.write_text(json.dumps(entries, indent=1, sort_keys=True))
        temporary.replace(path)
    except OSError as error:
        log.warning("Could not cache the CPU plan in %s: %s", path, error)
