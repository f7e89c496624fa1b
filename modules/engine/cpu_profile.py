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

and `SpeedPlan` records the winners. The starting point is what the CPU flags say
(`prior_plan`: bf16 with native bf16, else float32); the probe overrides it only
for a clear win (SWITCH_MARGIN), which keeps a noisy, shared machine from flipping
decisions. The probe runs on one core (min of samples, a hard time cap): on an
oversubscribed machine, 2-thread OpenMP timings measure the scheduler, not the
kernels. A probe that hit its cap, or ran while the load average exceeded the core
count, is used but not cached. Decisions are cached on disk per (model architecture
and shapes, CPU signature, torch version), so later loads skip the probe.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch.nn import functional as F

from modules.engine.compute import one_core

log = logging.getLogger(__name__)

PROBE_SECONDS = 1.5  # hard cap, warm-up included (a round takes ~20-100 ms on one core)
PROBE_ROUNDS = 7
PREFILL_PROBE_ROWS = 64
# Another candidate replaces the prior's only when this much faster. Real mismatches are
# 4-60x (bf16 prompts on AVX2, fp32 into the int4 kernel); contention noise reached ~1.6x.
SWITCH_MARGIN = 2.0
MAX_CACHED_PLANS = 64
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


def cpu_flags() -> set[str]:
    """The CPU's feature flags (Linux; empty elsewhere)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def cpu_model() -> str:
    """The CPU's marketing name (benchmarks print it beside every figure)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_identity() -> str:
    """The CPU's model and every flag it reports: what `-march=native` compiles for. Two
    machines of the same marketing name can differ (AVX-512 FP16, AMX), and code built
    for one stops with SIGILL on the other."""
    return f"{cpu_model()}|{platform.machine()}|{','.join(sorted(cpu_flags()))}"


def cpu_signature() -> str:
    """What decides kernel speed: the ISA torch uses, CPU model and flags, threads, torch."""
    flags = ",".join(sorted(cpu_flags() & {"avx512_bf16", "amx_bf16", "avx512f", "avx2"}))
    isa_env = os.environ.get("ATEN_CPU_CAPABILITY", "") + os.environ.get("ONEDNN_MAX_CPU_ISA", "")
    return (f"{cpu_capability()}|{isa_env}|{cpu_model()}|{flags}|threads={torch.get_num_threads()}"
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
    """The cached plan for this model on this machine, or a fresh probe's (then cached).

    Keyed by architecture and shapes, not by name or path: the kernels see only those.
    """
    shapes = LayerShapes.of(config)
    model_type = getattr(config, "model_type", "?")
    key = f"{model_type}|{shapes.all()}|4bit={four_bit}|{cpu_signature()}"
    path = Path(cache_dir) / CACHE_FILE
    cached = _read(path).get(key)
    if cached:
        plan = SpeedPlan(**{**cached["plan"], "source": "cache"})
        log.info("CPU plan for %s (cached): %s", model_key, plan)
        return plan
    start = time.perf_counter()
    busy = os.getloadavg()[0] > (os.cpu_count() or 1) if hasattr(os, "getloadavg") else False
    timings, complete = probe(shapes)
    plan = decide(timings, four_bit)
    keep = complete and not busy
    log.info("CPU plan for %s: %s (probe %.2f s%s; µs per layer on one core: %s)", model_key,
             plan, time.perf_counter() - start,
             "" if keep else ", machine busy or probe cut short: not cached",
             {k: round(v) for k, v in timings.items()})
    if keep:
        _write(path, key, {"plan": asdict(plan), "model": model_key, "timings_us": timings,
                           "written": time.time()})
    return plan


def native_bf16() -> bool:
    """Do the CPU and the ISA torch uses have bf16 arithmetic (AVX-512 bf16 or AMX)?"""
    capped = os.environ.get("ONEDNN_MAX_CPU_ISA", "").upper().startswith(("AVX2", "AVX_", "SSE"))
    return (not capped and cpu_capability().startswith("AVX512")
            and bool(cpu_flags() & {"avx512_bf16", "amx_bf16"}))


def prior_plan(four_bit: bool) -> tuple[str, str, str]:
    """(decode kernel, decode dtype, prefill dtype) as the CPU flags suggest, before measuring.

    Decode stays bf16 on every class: torch's int4/int8 CPU kernels are fast with bf16
    activations and 10-60x slower with float32 ones (one row, SmolLM2's gate/up shape, one
    core: int4 205 vs 3744 µs under AVX2, 112 vs 14060 µs under AVX-512). Prompts use
    bf16 only where it is native.
    """
    return "quantized", "bf16", "bf16" if native_bf16() else "fp32"


def decide(timings: dict[str, float], four_bit: bool,
           prior: tuple[str, str, str] | None = None) -> SpeedPlan:
    """The prior plan, each part replaced by a candidate that measured SWITCH_MARGIN faster."""
    decode_kernel, decode_dtype, prefill_dtype = prior or prior_plan(four_bit)
    quantized = "int4" if four_bit else "int8"
    decode = {(kernel, dtype): timings.get(f"decode {name} {dtype}")
              for kernel, name in (("quantized", quantized), ("float", "float"))
              for dtype in ("bf16", "fp32")}
    decode = {choice: value for choice, value in decode.items() if value}
    if decode:
        fastest = min(decode, key=decode.get)
        current = decode.get((decode_kernel, decode_dtype))
        if current is None or decode[fastest] * SWITCH_MARGIN < current:
            decode_kernel, decode_dtype = fastest
    prefill = {dtype: timings.get(f"prefill {dtype}") for dtype in ("bf16", "fp32")}
    other = "fp32" if prefill_dtype == "bf16" else "bf16"
    if prefill[other] and (not prefill[prefill_dtype]
                           or prefill[other] * SWITCH_MARGIN < prefill[prefill_dtype]):
        prefill_dtype = other
    return SpeedPlan(cpu_capability(), decode_kernel, decode_dtype, prefill_dtype)


def probe(shapes: LayerShapes) -> tuple[dict[str, float], bool]:
    """(fastest µs per decoder layer of each candidate on one core, whether all rounds ran).

    Candidates run interleaved, round by round; the minimum is the kernel's own cost
    (on a shared machine noise only ever adds).
    """
    deadline = time.perf_counter() + PROBE_SECONDS
    samples: dict[str, list[float]] = {}
    rounds = -1  # the first round warms up (packing, allocation) and is not counted
    with torch.inference_mode(), one_core():
        candidates = _candidates(shapes)
        while rounds < PROBE_ROUNDS and time.perf_counter() < deadline:
            for name, run in candidates.items():
                began = time.perf_counter()
                run()
                if rounds >= 0:
                    samples.setdefault(name, []).append((time.perf_counter() - began) * 1e6)
            rounds += 1
    timings = {name: min(values) for name, values in samples.items() if len(values) == rounds}
    return timings, rounds >= PROBE_ROUNDS


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
        for stale in sorted(entries, key=lambda k: entries[k].get("written", 0))[:-MAX_CACHED_PLANS]:
            del entries[stale]
        temporary = path.with_suffix(f".{os.getpid()}.tmp")
        temporary.write_text(json.dumps(entries, indent=1, sort_keys=True))
        temporary.replace(path)
    except OSError as error:
        log.warning("Could not cache the CPU plan in %s: %s", path, error)
