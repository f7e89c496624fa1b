"""The decode step of a fused model as one native call, compiled on this machine for its CPU.

Through the fused Python layers a one-token step of SmolLM2-135M still issues ~600
tensor operations; their dispatch took about half of the step (profile: 6.2 ms int4
kernels and 3 ms int8 head in a ~17-21 ms step, AVX-512). native_step.cpp runs all
layers in one call: its own int4 kernels (AMX tiles, or int16-rounded rows on AVX2 and
AVX-512; torch's int4 kernel elsewhere), int8 projections and the int8 LM head by
int16-rounded rows where the build has them (SmolLM2's head, one row / four: 0.49 / 0.58
ms against 0.85 / 1.47 with float32 rows on AVX512-VNNI; a Qwen2.5-0.5B-shaped step 23
against 40 ms), else by float32 rows (each weight read once for up to four rows:
0.75-0.9x torch's time); float32 logits either way; plain loops for the norms, rotary
embedding, KV-cache writes, attention and SiLU. The step then costs about what its
kernels cost (figures in benchmarks/decode_speed.py).

torch.compile was measured first (see fast_decode.py and the README): 0.81-0.85x of
this lean step's time, after 29-154 s of compiling per shape, and not checkable under
AVX2 emulation. This extension builds once per machine (~45 s, in the background from
the model cache's start) and is loaded from disk afterwards. Until it is ready, or
where it cannot be built (no C++ compiler, no Python headers), the Python step runs:
same model, same cache, logits equal up to float rounding (the loops keep the
residual stream in float32 where the Python layers round it to the model's dtype).

A batch chooses its step when it starts (BatchScheduler), so one reply never mixes
the two. Each row's result depends only on that row (tests/test_native_step.py). A
native batch's prompts go through the same decoder (`native_prompt`): the step's code
with the prompt's tokens as rows of one sequence, where the layers' kernel measured
faster than the dense matmul for that many rows.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import shutil
import subprocess
import sys
import sysconfig
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

import torch
from torch import nn

from modules.engine.cpu_profile import cpu_flags, cpu_identity
from modules.engine.kernels.fused_llama import FusedLlamaLayer, project, signed_sin

if TYPE_CHECKING:
    from modules.engine.prefix_cache import CachedPrefix

log = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("native_step.cpp")
MODULE_NAME = "playground_native_step"
BUILD_SECONDS = 600  # a compiler that takes longer is stuck
KIND_INT4, KIND_INT8, KIND_DENSE, KIND_INT4_TILES, KIND_INT4_INT16, KIND_INT8_INT16 = 0, 1, 2, 3, 4, 5
TILE_OUTPUTS, TILE_GROUP = 16, 32  # native_step.cpp's int4 tiles: 16 outputs x 32 inputs
# c10::ScalarType codes of the projections' input dtypes
SCALAR_TYPES = {torch.float16: 5, torch.float32: 6, torch.bfloat16: 15}
_ATTRIBUTE = "_playground_native_step"


def isa_flags() -> list[str]:
    """Vector instructions for the loops, following the ISA torch itself uses here (so an
    `ATEN_CPU_CAPABILITY=avx2` run gets AVX2 loops too)."""
    capability = torch.backends.cpu.get_cpu_capability()
    if capability.startswith("AVX512"):
        return ["-march=native"]
    if capability == "AVX2":
        flags = cpu_flags()
        # AVX-VNNI where a CPU without AVX-512 has it (Intel since Alder Lake, AMD Zen 5); an
        # AVX-512 CPU running as AVX2 (ATEN_CPU_CAPABILITY=avx2) stays a plain AVX2 machine
        vnni = "avx_vnni" in flags and "avx512f" not in flags
        return ["-mavx2", "-mfma", "-mf16c", *(["-mavxvnni"] if vnni else [])]
    return []  # other CPUs (ARM's NEON is the baseline there): the compiler's default


def amx_tiles_wanted() -> bool:
    """Will the extension multiply int4 weights on AMX tiles here (native_step.cpp)? It is
    compiled with -march=native where torch uses AVX-512, which brings AMX where the CPU
    has it; int4 layers then keep a copy in `tile_layout` (0.625 bytes a weight)."""
    return ("-march=native" in isa_flags()
            and {"amx_tile", "amx_bf16", "avx512_bf16"} <= cpu_flags())


def int16_rows_wanted() -> bool:
    """Will the extension multiply int4 weights by int16-rounded rows here (native_step.cpp's
    `int4_int16_matmul`, on the same `tile_layout` copy)? Every x86 build for AVX2 or
    AVX-512 has it: AVX512-VNNI, AVX-VNNI or plain AVX2 instructions, as the CPU has."""
    flags = isa_flags()
    return "-march=native" in flags or "-mavx2" in flags


def tile_kernel(amx: bool = True, int16_rows: bool = True) -> str | None:
    """The native step's own int4 kernel here, reading `tile_layout`: "amx" (bf16 rows on AMX
    tiles), else "int16" (int16 rows), else None (torch's int4 kernel). `amx` and
    `int16_rows` are the settings that allow each (Settings.amx, Settings.int16_rows)."""
    if amx and amx_tiles_wanted():
        return "amx"
    if int16_rows and int16_rows_wanted():
        return "int16"
    return None


def tile_layout(q: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor] | None:
    """int4 weights W = (q - 8)·scale + zero (q [n, k] in 0..15, scale and zero [n, k / 32])
    as native_step.cpp's AMX and int16-rows kernels read them: uint8 [n/16, k/32, 8, 32] and float16
    [n/16, k/32, 2, 16] (each group's scale, then its lowest value). None where float16
    would hold a scale or low less exactly than torch's kernel's bf16 does (outside its
    range)."""
    n, k = q.shape
    if n % TILE_OUTPUTS or k % TILE_GROUP:
        return None
    groups = k // TILE_GROUP
    scale = scale.float()
    scale_low = torch.stack([scale, zero.float() - 8 * scale])  # [2, n, groups]
    if not torch.allclose(scale_low.half().float(), scale_low, rtol=2.0**-9, atol=0):
        return None
    scale_low = scale_low.half().reshape(2, n // TILE_OUTPUTS, TILE_OUTPUTS, groups).permute(1, 3, 0, 2)
    q = q.to(torch.uint8).reshape(n // TILE_OUTPUTS, TILE_OUTPUTS, groups, 8, 4)  # tile, output, group, j, i
    low, high = q[..., :2], q[..., 2:]  # inputs 4j, 4j+1 and 4j+2, 4j+3
    packed = (low | (high << 4)).permute(0, 2, 3, 1, 4).reshape(n // TILE_OUTPUTS, groups, 8, 32)
    return packed.contiguous(), scale_low.contiguous()


def compile_command(output: Path) -> list[str]:
    from torch.utils import cpp_extension

    compiler = os.environ.get("CXX", "c++")
    includes = [*cpp_extension.include_paths(), sysconfig.get_paths()["include"]]
    torch_lib = cpp_extension.TORCH_LIB_PATH
    abi = int(torch._C._GLIBCXX_USE_CXX11_ABI)
    # -fopenmp: at::parallel_for is inline OpenMP; the .so then uses torch's own libgomp
    # (same soname, already loaded), so the process keeps one OpenMP runtime and team.
    return [compiler, "-O3", *isa_flags(), "-fopenmp", "-shared", "-fPIC", "-std=c++17",
            f"-DTORCH_EXTENSION_NAME={MODULE_NAME}", "-DTORCH_API_INCLUDE_EXTENSION_H",
            f"-D_GLIBCXX_USE_CXX11_ABI={abi}", *(f"-I{path}" for path in includes),
            str(SOURCE), "-o", str(output), f"-L{torch_lib}", "-lc10", "-ltorch_cpu", "-ltorch",
            "-ltorch_python", f"-Wl,-rpath,{torch_lib}"]


def library_path(cache_dir: str | os.PathLike) -> Path:
    """Where this source, built for this CPU, torch and Python, lives on disk. The CPU's
    model and flags are in the key: a cache directory that moves to another machine (a
    Space's persistent storage, a copied home) must not load code built for other
    instructions."""
    key = "|".join([SOURCE.read_text(), " ".join(compile_command(Path("out.so"))), cpu_identity(),
                    torch.__version__, sys.version])
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    return Path(cache_dir) / "kernels" / f"{MODULE_NAME}-{digest}.so"


class _Builder:
    """Builds and loads the extension once per process; other threads ask `module()`."""

    def __init__(self) -> None:
        self._start_lock, self._build_lock = threading.Lock(), threading.Lock()
        self._thread: threading.Thread | None = None
        self._module: ModuleType | None = None
        self.error: str | None = None

    def module(self) -> ModuleType | None:
        return self._module

    def start(self, cache_dir: str | os.PathLike) -> None:
        with self._start_lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self.build, args=(cache_dir,),
                                                name="native-step-build", daemon=True)
                self._thread.start()

    def build(self, cache_dir: str | os.PathLike) -> ModuleType | None:
        """The loaded extension, compiled first if it is not on disk; None if that fails."""
        with self._build_lock:
            if self._module is None and self.error is None:
                try:
                    self._module = _load(_compiled(library_path(cache_dir)))
                    log.info("Native decode step ready (%s)", " ".join(isa_flags()) or "default ISA")
                except Exception as error:  # no compiler, no headers, a broken toolchain
                    self.error = str(error).strip() or repr(error)
                    log.warning("Native decode step unavailable, the Python step runs: %s", self.error)
            return self._module

    def wait(self, cache_dir: str | os.PathLike) -> ModuleType | None:
        """Build now (or wait for the build already running) and return the module."""
        with self._start_lock:
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join()
        return self.build(cache_dir)


def _compiled(path: Path) -> Path:
    if path.exists():
        return path
    compiler = os.environ.get("CXX", "c++")
    if shutil.which(compiler) is None:
        raise RuntimeError(f"no C++ compiler ({compiler}) on PATH")
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(f".{os.getpid()}.{threading.get_ident()}.tmp")
    log.info("Building the native decode step for this CPU (once, about a minute)...")
    try:
        result = subprocess.run(compile_command(partial), capture_output=True, text=True,
                                timeout=BUILD_SECONDS)
        if result.returncode != 0:
            errors = [line for line in result.stderr.splitlines() if "error" in line.lower()]
            raise RuntimeError(f"compiling {SOURCE.name} failed: "
                               f"{(errors or result.stderr.strip().splitlines() or ['?'])[0][:500]}")
        os.replace(partial, path)  # atomic: a concurrent build of the same file is harmless
    finally:
        partial.unlink(missing_ok=True)
    return path


def _load(path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(MODULE_NAME, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


builder = _Builder()


def start_building(cache_dir: str | os.PathLike) -> None:
    """Compile (or load) the extension in the background."""
    builder.start(cache_dir)


def attach(model: nn.Module) -> None:
    """Let `model` (every decoder layer fused) take native steps once the extension is loaded."""
    setattr(model, _ATTRIBUTE, _NativeDecoder())


class _NativeDecoder:
    """A model's `Decoder` (native_step.cpp), made from its fused layers on first use."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.decoder = None

    def __deepcopy__(self, memo: dict) -> _NativeDecoder:
        return _NativeDecoder()  # a copied model gets a decoder over its own layers

    def get(self, model: nn.Module):
        if self.decoder is None:
            module = builder.module()
            if module is None:
                return None
            with self._lock:
                if self.decoder is None:
                    # prompts switch to the native kernel with the steps: before the batch
                    # that first takes native steps prefills (BatchScheduler asks `ready`)
                    measure_prompt_rows(model)
                    self.decoder = _decoder(module, model)
        return self.decoder


# Prompt passes: the int4 layers' own kernel against the dense matmul of the prefill dtype.
# On SmolLM2's first layer, int16 rows took 256 prompt rows in 0.39x bf16's time with
# AVX512-VNNI, but under AVX2 1.7x float32's (16 rows: 0.67x); so each machine times both
# at the model's own shapes, once, when the model's native decoder is made: then prompts
# change path together with the steps, between two batches. Both are compute-bound beyond
# the largest count timed, so a kernel that wins there takes prompts of any length (the
# same layer at 1024 and 2048 rows: 0.44x and 0.46x).
#
# A near tie goes to the kernel: the native pass also leaves out the Python and the torch
# attention around the projections. On an AMD Zen 5 (AVX512-BF16) the projections took
# 1.05-1.2x the dense matmul's time at 256 rows, load to load, while whole native passes
# took 0.70-0.78x the dense pass's time at 64 to 2048 tokens (at 256 tokens the
# projections are ~60 % of the dense pass, so the native pass wins up to ~1.4x). With the
# margin at 0.9, prompts past 64 tokens went dense; at 1.1 the choice flipped between
# loads, and with it whether prompts past 64 tokens could start from the prefix cache.
PROMPT_ROWS = (16, 64, 256)  # row counts timed
ANY_ROWS = sys.maxsize  # the kernel won at every count timed
_PROMPT_MARGIN = 1.3  # the kernel may take up to this share of the dense time


def tile_matmul(linear: nn.Module, x: torch.Tensor) -> torch.Tensor | None:
    """x [rows, in] times an int4 layer's weights through its native kernel (AMX tiles or
    int16 rows), float32; None where that kernel does not run here."""
    module = builder.module()
    kernel = None if module is None else _tile_kernel_in_use(module, linear)
    if kernel is None:
        return None
    return getattr(module, kernel.matmul)(x.float().contiguous(), linear.tile_weight, linear.tile_scale_low)


def pick_prompt_rows(timings: dict[int, tuple[float, float]]) -> int:
    """The largest count timed at which the kernel took at most the margin's share of the
    dense matmul's time: ANY_ROWS where that is the largest count timed, 0 where it won at
    none. timings: rows -> (kernel s, dense s).

    The kernel's share grows with the rows (its integer work grows with them, the dense
    matmul gets more efficient), so a loss below a count it won is noise. Once, a browser
    starting beside the server made 64 rows take 7.6 ms through the kernel against 0.7
    dense while 16 and 256 rows won, and for the rest of the process prompts past 16
    tokens lost the native pass, and with it the prefix cache."""
    won = [rows for rows, (kernel, dense) in timings.items() if kernel <= _PROMPT_MARGIN * dense]
    if not won:
        return 0
    return ANY_ROWS if max(won) == max(timings) else max(won)


def measure_prompt_rows(model: nn.Module) -> int:
    """Time the first layer's int4 projections both ways at PROMPT_ROWS and let every int4
    layer with a native kernel take prompts of up to the rows it won (`native_prompt_rows`)."""
    int4 = [m for m in model.modules() if getattr(m, "tile_kernel", None)]
    first = [m for m in model.model.layers[0].modules() if getattr(m, "tile_kernel", None)]
    module = builder.module()
    if not first or module is None or _tile_kernel_in_use(module, first[0]) is None:
        return 0
    timings = {}
    with torch.inference_mode():
        for rows in PROMPT_ROWS:
            inputs = [torch.randn(rows, m.in_features) for m in first]
            kernel = _fastest(lambda: [tile_matmul(m, x) for m, x in zip(first, inputs)])
            dense = _fastest(lambda: [m.many_rows(x.to(m.prefill_dtype), native=False)
                                      for m, x in zip(first, inputs)])
            timings[rows] = (kernel, dense)
    limit = pick_prompt_rows(timings)
    for m in int4:
        m.native_prompt_rows = limit
    log.info("Prompt rows through the int4 layers' native kernel: %s (%s)",
             "any number" if limit == ANY_ROWS else f"up to {limit}",
             ", ".join(f"{rows}: {k * 1e3:.1f} / {d * 1e3:.1f} ms" for rows, (k, d) in timings.items()))
    return limit


def _fastest(run, repeats: int = 3, most: int = 20) -> float:
    """The fastest of at least `repeats` timed runs, going on (up to `most`) until they add up
    to 20 ms and to five times the fastest. Three runs alone were not enough on a busy
    machine: under a test run beside it, 16 rows took 8.7 ms through the kernel and 8.8
    through the dense matmul (0.3 and 1.2 quiet), so the kernel "lost" at the first count
    and no prompt took it for the rest of the process."""
    run()  # warm: the dense copy and the tiles come into cache
    times: list[float] = []
    while len(times) < repeats or (len(times) < most and sum(times) < max(0.02, 5 * min(times))):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return min(times)


def _decoder(module: ModuleType, model: nn.Module):
    layers: list[FusedLlamaLayer] = model.model.layers
    first = layers[0]
    decoder = module.Decoder(first.input_norm_twice.shape[0] // 2, first.query_heads, first.kv_heads,
                             first.head_dim, first.intermediate, first.eps, first.scaling)
    empty = torch.empty(0)
    for layer in layers:
        size = layer.input_norm_twice.shape[0] // 2
        parts = [_projection(module, p) for p in (layer.qkv, layer.o, layer.gate_up, layer.down)]
        decoder.add_layer(layer.input_norm_twice[:size], layer.post_attention_norm_twice[:size],
                          empty if layer.head_norm is None else layer.head_norm,
                          float(layer.head_norm_eps or 0.0), *map(list, zip(*parts)))
    norm, head = model.model.norm, model.lm_head
    if hasattr(head, "weight_int8") and head.bias is None and hasattr(norm, "variance_epsilon"):
        decoder.set_head(norm.weight, float(norm.variance_epsilon), head.weight_int8, head.scale,
                         _int8_kind(module, head))
    return decoder


def _projection(module: ModuleType, linear: nn.Module) -> tuple[int, torch.Tensor, torch.Tensor, int,
                                                               torch.Tensor, int]:
    """(kind, weight, scales, group, bias or empty, input dtype code) of one projection."""
    bias = linear.bias if linear.bias is not None else torch.empty(0)
    kernel = _tile_kernel_in_use(module, linear)
    if kernel is not None:
        return kernel.kind, linear.tile_weight, linear.tile_scale_low, TILE_GROUP, bias, 0
    if hasattr(linear, "packed"):  # Int4WeightOnlyLinear
        return KIND_INT4, linear.packed, linear.scales_and_zeros, linear.group, bias, \
            SCALAR_TYPES[linear.compute_dtype]
    if hasattr(linear, "weight_int8"):  # Int8WeightOnlyLinear
        return _int8_kind(module, linear), linear.weight_int8, linear.scale, 0, bias, \
            SCALAR_TYPES[linear.compute_dtype]
    return KIND_DENSE, linear.weight, torch.empty(0), 0, bias, SCALAR_TYPES[linear.weight.dtype]


def _int8_kind(module: ModuleType, linear: nn.Module) -> int:
    """How the native step multiplies an int8 layer or head: by int16 rows where asked for
    (`int16_rows`), built, and whole tiles of 16 outputs and groups of 32 inputs; else by
    float32 rows."""
    int16 = (linear.int16_rows and module.int16_rows_ready()
             and linear.out_features % TILE_OUTPUTS == 0 and linear.in_features % TILE_GROUP == 0)
    return KIND_INT8_INT16 if int16 else KIND_INT8


@dataclass(frozen=True)
class _TileKernel:
    """One of the native step's int4 kernels on the tile layout, as the extension names it."""
    kind: int  # its Projection kind in native_step.cpp
    ready: str  # the extension's function: does this build and process run it?
    matmul: str  # the extension's function: that kernel alone, float32 rows
    name: str  # for people; {isa}: the instructions the int16 rows use in this build


TILE_KERNELS = {
    "amx": _TileKernel(KIND_INT4_TILES, "amx_ready", "int4_tiles_matmul", "int4 on AMX tiles"),
    "int16": _TileKernel(KIND_INT4_INT16, "int16_rows_ready", "int4_int16_matmul", "int4 x int16 rows ({isa})"),
}


def _tile_kernel_in_use(module: ModuleType, linear: nn.Module) -> _TileKernel | None:
    """The int4 layer's own native kernel where this build runs it, else None (torch's int4
    kernel, or not an int4 layer)."""
    kernel = TILE_KERNELS.get(getattr(linear, "tile_kernel", None) or "")
    return kernel if kernel and getattr(module, kernel.ready)() else None


def kernel_name(module: ModuleType, kernel: _TileKernel) -> str:
    return kernel.name.format(isa=module.int16_rows_isa())


def ready(model: nn.Module) -> bool:
    """Will `native_decode_step` run for `model` now (attached, extension loaded)?"""
    return _decoder_of(model) is not None


def _decoder_of(model: nn.Module):
    """The model's native decoder; None where it is not attached or the extension not built."""
    holder = getattr(model, _ATTRIBUTE, None)
    return None if holder is None else holder.get(model)


def _decoder_rows(inner: nn.Module, tokens: torch.Tensor, positions: torch.Tensor
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`tokens` embedded as float32 rows [rows, hidden], with each row's rotary cos and signed
    sin [rows, head_dim]: what the decoder's `step` and `prompt` take."""
    hidden = inner.embed_tokens(tokens).float()
    hidden = hidden.reshape(-1, hidden.shape[-1])
    cos, sin = inner.rotary_emb(hidden, position_ids=positions)
    sin = signed_sin(sin, sin.shape[-1] // 2)
    rows = hidden.shape[0]
    return hidden, cos.reshape(rows, -1).contiguous(), sin.reshape(rows, -1).contiguous()


def native_decode_step(model: nn.Module, tokens: torch.Tensor, positions: torch.Tensor,
                       starts: list[int] | None, cache) -> torch.Tensor | None:
    """`decode_step`'s logits through the native step; None where it does not apply (not
    attached or not built, attention being recorded, a cache not held in float32 or bf16
    growing buffers)."""
    decoder = _decoder_of(model)
    inner = model.model
    if decoder is None or inner.layers[0].attention_sink is not None or not _native_buffers(cache):
        return None
    hidden, cos, sin = _decoder_rows(inner, tokens, positions)
    length = cache.layers[0].keys.shape[-2]
    buffers = [layer.room_for(length) for layer in cache.layers]
    hidden = decoder.step(hidden, cos, sin, [keys for keys, _ in buffers], [values for _, values in buffers],
                          length, starts or [])
    for layer in cache.layers:
        layer.filled(length + 1)
    if decoder.has_head():  # float32 logits from the int8 head, each weight read once for all rows
        return decoder.logits(hidden)
    return project(model.lm_head, inner.norm(hidden))


def native_prompt(model: nn.Module, ids: list[int], cache, prefix: CachedPrefix | None = None,
                  reused: int = 0) -> torch.Tensor | None:
    """A new sequence's prompt pass through the native layers: fills `cache` (a fresh
    `growing_cache` in `cache_dtype(model)`) and returns the last token's float32 logits
    [1, vocab], as the decode steps make them (int16 rows, float32 activations and
    attention, the native head). With `prefix` (modules/engine/prefix_cache.py), its keys
    and values stand for the first `reused` tokens and only the rest are read: every token
    is computed on its own, so the logits are the full pass's bit for bit. None where it
    does not apply: the native step is not ready or has no head, an attention sink, or
    layers whose kernel lost to the dense matmul at this many rows (`measure_prompt_rows`:
    AVX2 machines past 16 or so).

    It saves what a prompt pass spends around the kernels in transformers' and the fused
    layers' Python: a layer's norms, rotations, casts and attention as torch operations
    took about as long as its projections for a 44-token prompt."""
    if not prompt_applies(model, len(ids)):
        return None
    decoder, inner = _decoder_of(model), model.model
    reused = min(reused, len(ids) - 1) if prefix is not None else 0  # the last token is always read
    positions = torch.arange(reused, len(ids), device=model.device).unsqueeze(0)
    hidden, cos, sin = _decoder_rows(inner, torch.tensor(ids[reused:], device=model.device), positions)
    first = inner.layers[0]
    buffers = [layer.begin(1, first.kv_heads, first.head_dim, len(ids), cache_dtype(model), model.device)
               for layer in cache.layers]
    if reused:
        for (keys, values), old_keys, old_values in zip(buffers, prefix.keys, prefix.values):
            keys[0, :, :reused] = old_keys[:, :reused]
            values[0, :, :reused] = old_values[:, :reused]
    hidden = decoder.prompt(hidden, cos, sin, [keys for keys, _ in buffers], [values for _, values in buffers],
                            reused)
    for layer in cache.layers:
        layer.filled(len(ids))
    return decoder.logits(hidden[-1:].contiguous())


def prompt_applies(model: nn.Module, tokens: int) -> bool:
    """Does a prompt of `tokens` go through `native_prompt` (and so may start from a cached
    prefix: the native pass computes each token alike, read from the start or not)?"""
    decoder = _decoder_of(model)
    return (decoder is not None and decoder.has_head() and model.model.layers[0].attention_sink is None
            and _prompt_fits(model, tokens))


def _prompt_fits(model: nn.Module, tokens: int) -> bool:
    """Do all the layers' projections take `tokens` rows through their native kernel?"""
    projections = [m for layer in model.model.layers for m in (layer.qkv, layer.o, layer.gate_up, layer.down)]
    return all(getattr(m, "native_prompt_rows", 0) >= tokens for m in projections)


def step_line(model: nn.Module) -> str | None:
    """How decode steps run now, for people: "native step, int4 x int16 rows (AVX2)",
    "native step, torch int4 kernel", "native step, int8 x int16 rows (AVX2)" (int8
    layers), "Python step" (attached, extension not built or unavailable), or None (no
    native step for this model)."""
    if getattr(model, _ATTRIBUTE, None) is None:
        return None
    module = builder.module()
    if module is None:  # (not `ready`: that builds the decoder, on the compute thread)
        return "Python step"
    int4 = [m for m in model.modules() if hasattr(m, "packed")]  # Int4WeightOnlyLinear
    usable = sorted({kernel_name(module, k) for m in int4 if (k := _tile_kernel_in_use(module, m))})
    if usable:
        return f"native step, {' / '.join(usable)}"
    if int4:
        return "native step, torch int4 kernel"
    int8 = [m for m in model.modules() if hasattr(m, "weight_int8") and m is not model.lm_head]
    if int8 and all(_int8_kind(module, m) == KIND_INT8_INT16 for m in int8):
        return f"native step, int8 x int16 rows ({module.int16_rows_isa()})"
    return "native step"


def cache_dtype(model: nn.Module) -> torch.dtype:
    """What the native step's batches hold keys and values in: bf16 for a bf16 model (a step
    reads the whole cache, so half the bytes; the values are what the bf16 model's own
    layers would store), float32 otherwise."""
    return torch.bfloat16 if model.dtype == torch.bfloat16 else torch.float32


def _native_buffers(cache) -> bool:
    layers = getattr(cache, "layers", None)
    return bool(layers) and all(getattr(layer, "held_dtype", None) in (torch.float32, torch.bfloat16)
                                and layer.held_dtype == layers[0].held_dtype
                                and getattr(layer, "is_initialized", False) for layer in layers)
