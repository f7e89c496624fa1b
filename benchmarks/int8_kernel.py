"""The native step's int8 kernel against torch's `_weight_int8pack_mm`, one row and four.

    python -m benchmarks.int8_kernel [--repeats 9]

Shapes: SmolLM2-135M's LM head and gate/up projection, Qwen2.5-0.5B's q/k/v, o, gate/up
and down. Random int8 weights (speed does not depend on the values), eight copies per
shape so the weights are not all in cache. The two kernels run interleaved, round by
round; each figure is the fastest round (noise on a shared machine only adds). The
kernel's error against float64 is printed beside torch's (torch rounds to bf16).
Run under `ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2` for the AVX2 class: the
extension is then compiled with `-mavx2 -mfma` too.
"""

from __future__ import annotations

import argparse
import time

import torch

from modules.config import Settings
from modules.engine.kernels import native_step
from modules.engine.kernels.fast_decode import Int8WeightOnlyLinear

SHAPES = {"SmolLM2 LM head": (49152, 576), "SmolLM2 gate/up": (3072, 576),
          "Qwen2.5-0.5B q/k/v": (1152, 896), "Qwen2.5-0.5B o": (896, 896),
          "Qwen2.5-0.5B gate/up": (9728, 896), "Qwen2.5-0.5B down": (896, 4864)}
COPIES = 8


def fastest_rounds(first, second, repeats: int, calls: int) -> tuple[float, float]:
    """Fastest µs per call of each of two functions, timed in alternating rounds."""
    first(), second()
    best = [float("inf"), float("inf")]
    for _ in range(repeats):
        for index, function in enumerate((first, second)):
            start = time.perf_counter()
            function()
            best[index] = min(best[index], (time.perf_counter() - start) / calls * 1e6)
    return best[0], best[1]


def relative_error(got: torch.Tensor, expected: torch.Tensor) -> float:
    return ((got.double() - expected).abs().max() / expected.abs().max()).item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=9)
    args = parser.parse_args()
    module = native_step.builder.wait(Settings().cache_dir)
    if module is None:
        raise SystemExit(f"the native step is unavailable: {native_step.builder.error}")
    print(f"CPU capability: {torch.backends.cpu.get_cpu_capability()}, {torch.get_num_threads()} threads")
    print(f"{'shape':<22} {'n x k':>11} {'rows':>4} {'int8 kernel µs':>15} {'torch µs':>9} "
          f"{'ratio':>6} {'error':>8} {'torch error':>11}")
    generator = torch.Generator().manual_seed(0)
    for name, (n, k) in SHAPES.items():
        copies = 2 if n * k > 10_000_000 else COPIES
        layers = [Int8WeightOnlyLinear(torch.randn(n, k, generator=generator) * 0.05)
                  for _ in range(copies)]
        for rows in (1, 4):
            x = torch.randn(rows, k, generator=generator)
            x_bf16 = x.bfloat16()
            ours, theirs = fastest_rounds(
                lambda: [module.int8_matmul(x, layer.weight_int8, layer.scale) for layer in layers],
                lambda: [torch._weight_int8pack_mm(x_bf16, layer.weight_int8, layer.scale)
                         for layer in layers], args.repeats, copies)
            layer = layers[0]
            exact = x.double() @ (layer.weight_int8.double() * layer.scale.double()[:, None]).T
            error = relative_error(module.int8_matmul(x, layer.weight_int8, layer.scale), exact)
            torch_error = relative_error(torch._weight_int8pack_mm(x_bf16, layer.weight_int8, layer.scale),
                                         exact)
            print(f"{name:<22} {f'{n}x{k}':>11} {rows:>4} {ours:>15.1f} {theirs:>9.1f} "
                  f"{ours / theirs:>6.2f} {error:>8.1e} {torch_error:>11.1e}")


if __name__ == "__main__":
    main()
