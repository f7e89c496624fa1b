"""The native decode step on the embedded model: one row against four, per int4 kernel and
KV-cache dtype, at two cache lengths.

    HF_HUB_OFFLINE=1 python -m benchmarks.native_step_rows [--repeats 60]

Two decoders over the same loaded model run interleaved, step by step, in one process:
int4 layers on the native step's own kernel (AMX tiles where this CPU has AMX-BF16, else
int16 rows: AVX512-VNNI, AVX-VNNI or AVX2) and on torch's int4 kernel. Each is fed
batches of 1 and 4 rows whose caches hold 160 and 600 random prompt
tokens, in float32 and in bf16 (what native batches of a bf16 model keep). Each figure
is the median ms of one step (all layers, final norm and int8 head). Four rows against
one is what decides how much four users gain from sharing a batch (*Many users*).
Run under `ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2` for the AVX2 class (int16 rows
with AVX2 instructions against torch's AVX2 int4 kernel).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from benchmarks.decode_speed import load  # noqa: E402
from modules.engine.batching import _BatchCache  # noqa: E402
from modules.engine.cpu_profile import cpu_capability, cpu_model  # noqa: E402
from modules.engine.kernels import native_step  # noqa: E402
from modules.engine.kernels.fused_llama import signed_sin  # noqa: E402
from modules.engine.kv_cache import growing_cache  # noqa: E402

ROWS, LENGTHS, DTYPES = (1, 4), (160, 600), (torch.float32, torch.bfloat16)


def decoders(model) -> dict[str, object]:
    """{kernel name: a native Decoder over `model`}: the layers' own native kernel (AMX or
    int16 rows) where they have one, and torch's."""
    module = native_step.builder.module()
    tiled = [m for m in model.modules() if getattr(m, "tile_kernel", None)]
    found = {}
    if tiled:  # the native step's own int4 kernel (AMX tiles, or int16 rows)
        found[native_step.kernel_name(module, native_step.TILE_KERNELS[tiled[0].tile_kernel])] = \
            native_step._decoder(module, model)
    kept = [(m, m.tile_kernel) for m in tiled]
    for m, _ in kept:
        m.tile_kernel = None
    found["torch int4"] = native_step._decoder(module, model)
    for m, kernel in kept:
        m.tile_kernel = kernel
    return found


def step_arguments(model, rows: int, length: int, dtype: torch.dtype) -> tuple:
    """What `Decoder.step` takes for `rows` rows after `length` random prompt tokens each."""
    batch, inner = _BatchCache(), model.model
    generator = torch.Generator().manual_seed(length)
    for _ in range(rows):
        cache = growing_cache(model.config, dtype)
        ids = torch.randint(100, 20000, (1, length), generator=generator)
        model(input_ids=ids, past_key_values=cache, use_cache=True, logits_to_keep=1)
        batch.add(cache)
    hidden = inner.embed_tokens(torch.full((rows, 1), 42)).float().view(rows, -1)
    cos, sin = inner.rotary_emb(hidden, position_ids=batch.positions())
    sin = signed_sin(sin, sin.shape[-1] // 2)
    buffers = [layer.room_for(length) for layer in batch.cache.layers]
    return (hidden, cos.reshape(rows, -1).contiguous(), sin.reshape(rows, -1).contiguous(),
            [keys for keys, _ in buffers], [values for _, values in buffers], length, [])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=60)
    args = parser.parse_args()
    loaded = load("auto", fast_decode=True)
    model = loaded.model
    found = decoders(model)
    cases = {(rows, length, dtype): step_arguments(model, rows, length, dtype)
             for rows in ROWS for length in LENGTHS for dtype in DTYPES}
    times: dict[tuple, list[float]] = {}
    with torch.inference_mode():
        for _ in range(args.repeats):
            for key, arguments in cases.items():
                for name, decoder in found.items():
                    start = time.perf_counter()
                    decoder.logits(decoder.step(*arguments))
                    times.setdefault((name, *key), []).append(time.perf_counter() - start)
    print(f"CPU: {cpu_model()}, torch {cpu_capability()}, {torch.get_num_threads()} threads; "
          f"{loaded.description}; median ms per step of {args.repeats}, interleaved")
    print("| int4 kernel | KV cache | cached tokens | 1 row | 4 rows | 4 rows / 1 row |")
    print("|---|---|---|---|---|---|")
    for name in found:
        for dtype in DTYPES:
            for length in LENGTHS:
                one, four = (statistics.median(times[(name, rows, length, dtype)]) * 1e3 for rows in ROWS)
                print(f"| {name} | {str(dtype)[6:]} | {length} | {one:.2f} | {four:.2f} | {four / one:.2f} |")


if __name__ == "__main__":
    main()
