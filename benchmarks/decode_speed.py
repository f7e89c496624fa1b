"""CPU decode speed of the embedded chat model, configuration by configuration.

    HF_HUB_OFFLINE=1 python -m benchmarks.decode_speed [--tokens 64] [--repeats 3]

Prints the CPU class torch uses (get_cpu_capability: AVX512, AVX2, ...), the speed
plan the app picked for this machine (modules/engine/cpu_profile.py), then two tables
from one run:

1. Greedy agreement with the float32 reference on 10 fixed prompts (20 tokens):
   how many prompts give the same first 20 tokens, and the shortest common prefix.
2. Speed: for each configuration (dtype, int8 weights, threads, bare generate or
   the streamed chat path) the median decode tokens/s and time to first token for a
   ~200-token prompt, each as a ratio to llama.cpp measured in the same rounds
   (`llama-bench` tg128 / pp<prompt> on the same GGUF file, same thread count) when
   its binaries are found: $LLAMA_CPP_BIN, or the folder ../shared/tools/llama-cpp
   builds. Emulating AVX2 (ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2) changes
   torch only: a natively built llama.cpp keeps its own instruction set.

The machine is shared, so configurations run interleaved, round after round, and
only medians and ratios within one run mean anything. The OpenMP wait policy is
fixed when torch loads: run once with OMP_WAIT_POLICY=ACTIVE and once with
PASSIVE to compare those.
"""

from __future__ import annotations

import argparse
import dataclasses
import glob
import json
import os
import shutil
import statistics
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from transformers.generation.streamers import BaseStreamer  # noqa: E402

from benchmarks.chat_throughput import as_in_the_app, forget_prompts  # noqa: E402
from modules.config import EMBEDDED_MODEL, Settings  # noqa: E402
from modules.engine.compute import release_openmp_team  # noqa: E402
from modules.engine.cpu_profile import cpu_capability  # noqa: E402
from modules.engine.kernels.fast_decode import quantize_linears_int8  # noqa: E402
from modules.engine.kernels import native_step  # noqa: E402
from modules.engine.kernels.decode_step import decode_step  # noqa: E402
from modules.engine.kv_cache import growing_cache  # noqa: E402
from modules.engine.model_cache import LoadedModel, ModelCache, ModelKind  # noqa: E402
from modules.engine.model_refs import embedded_gguf_path  # noqa: E402

LLAMA_CPP_DECODE_TOKENS = 128
AGREEMENT_TOKENS = 20
FIXED_PROMPTS = [
    "What is the capital of France?",
    "Write a haiku about the sea.",
    "Explain photosynthesis to a ten-year-old.",
    "List three uses of a paperclip.",
    "How do I reverse a list in Python?",
    "What is 17 times 23?",
    "Give me a tip for sleeping better.",
    "Translate 'good morning' into Spanish.",
    "Why is the sky blue?",
    "Write the opening line of a mystery novel.",
]
LONG_PROMPT = (
    "You are helping me plan a trip. I will spend two weeks travelling by train "
    "through France, Switzerland and northern Italy in late spring. I like old "
    "towns, mountains, museums about science and history, and simple local food; "
    "I do not like crowded beaches or nightclubs. My budget is moderate, I speak "
    "a little French, and I will carry one backpack. I want to see Lyon, Annecy, "
    "Geneva, Zermatt, Lake Como and Turin, but I am open to swapping one of them "
    "for somewhere quieter. Please write a detailed day-by-day itinerary with the "
    "train connections, what to see in each place, one dish to try in each town, "
    "and a short note about what to pack for the mountains at that time of year. "
    "Finish with three mistakes first-time travellers often make on such a trip "
    "and how I can avoid them."
)


class _FirstTokenClock(BaseStreamer):
    """Records when generate produced its first new token (the first put is the prompt)."""

    def __init__(self) -> None:
        self.puts = 0
        self.first_token_at: float | None = None

    def put(self, value) -> None:
        self.puts += 1
        if self.puts == 2:
            self.first_token_at = time.perf_counter()

    def end(self) -> None:
        pass


def prompt_ids(loaded: LoadedModel, text: str) -> torch.Tensor:
    messages = [{"role": "user", "content": text}]
    ids = loaded.tokenizer.apply_chat_template(messages, add_generation_prompt=True)
    ids = ids["input_ids"] if hasattr(ids, "keys") else ids
    return torch.tensor([list(ids)])


def greedy(loaded: LoadedModel, ids: torch.Tensor, tokens: int, **kwargs) -> torch.Tensor:
    with torch.inference_mode():
        out = loaded.model.generate(
            ids, attention_mask=torch.ones_like(ids), max_new_tokens=tokens, do_sample=False,
            temperature=None, top_p=None, top_k=None,
            pad_token_id=loaded.tokenizer.pad_token_id, **kwargs,
        )
    return out[0, ids.shape[1]:]


def bare_run(loaded: LoadedModel, ids: torch.Tensor, tokens: int) -> tuple[float, float]:
    """(time to first token, decode tokens/s) for one greedy generate of exactly `tokens`."""
    clock = _FirstTokenClock()
    start = time.perf_counter()
    out = greedy(loaded, ids, tokens, min_new_tokens=tokens, streamer=clock)
    end = time.perf_counter()
    return clock.first_token_at - start, (len(out) - 1) / (end - clock.first_token_at)


def chat_run_in_app(loaded: LoadedModel, text: str, tokens: int) -> tuple[float, float]:
    """`chat_run` as `python app.py` serves it: generation on the lent main thread."""
    return as_in_the_app(chat_run, loaded, text, tokens)


def chat_run_on_daemon(loaded: LoadedModel, text: str, tokens: int) -> tuple[float, float]:
    """`chat_run` as a process that imports `demo` and launches it itself serves it: jobs on
    the daemon compute thread, this (main) thread only reading the stream. The bare
    `generate` rows ran torch here, so this thread frees its OpenMP team first, as a main
    thread that never ran torch would have none (modules/engine/compute.py)."""
    release_openmp_team()
    return chat_run(loaded, text, tokens)


def chat_run(loaded: LoadedModel, text: str, tokens: int) -> tuple[float, float]:
    """The same figures as users see them: `stream_chat`, consumer side."""
    from modules.tasks.chat import GenerationParams, stream_chat

    params = GenerationParams(do_sample=False, max_new_tokens=tokens)
    forget_prompts(loaded)  # the prompt is read from the start, as llama-bench reads it
    start = time.perf_counter()
    first = None
    deltas = 0
    usage = None
    for chunk in stream_chat(loaded, [{"role": "user", "content": text}], params):
        if chunk.delta and first is None:
            first = time.perf_counter()
        deltas += bool(chunk.delta)
        usage = chunk.usage or usage
    end = time.perf_counter()
    tokens_out = usage.completion_tokens if usage else deltas
    return first - start, (tokens_out - 1) / (end - first)


def agreement(reference: list[list[int]], candidate: list[list[int]]) -> tuple[int, str]:
    """(prompts whose greedy tokens match fully, first differing positions)."""
    full, firsts = 0, []
    for ref, got in zip(reference, candidate):
        if ref == got:
            full += 1
            continue
        same = 0
        while same < min(len(ref), len(got)) and ref[same] == got[same]:
            same += 1
        firsts.append(same)
    return full, ",".join(map(str, sorted(firsts))) or "-"


def teacher_forced_top1(loaded: LoadedModel, ids: torch.Tensor, continuation: list[int],
                        reference: list[int] | None = None) -> list[int]:
    """Argmax at each step when fed the reference continuation one token at a time.

    Step by step (not one long forward) so quantized layers run their decode kernel.
    """
    with torch.inference_mode():
        out = loaded.model(input_ids=ids, use_cache=True)
        picks = [int(out.logits[0, -1].argmax())]
        cache = out.past_key_values
        for token in continuation[:-1]:
            out = loaded.model(input_ids=torch.tensor([[token]]), past_key_values=cache, use_cache=True)
            cache = out.past_key_values
            picks.append(int(out.logits[0, -1].argmax()))
    return picks


def step_picks(loaded: LoadedModel, ids: torch.Tensor, tokens: int,
               forced: list[int] | None = None) -> list[int]:
    """Greedy picks through the decode step the scheduler runs (`decode_step(..., native=True)`
    on a float32 growing cache): fed its own picks up to an end token, as `generate` stops,
    or `forced` (teacher forcing)."""
    model = loaded.model
    cache = growing_cache(model.config, torch.float32)
    ends = set(loaded.end_token_ids())
    with torch.inference_mode():
        logits = model(input_ids=ids, past_key_values=cache, use_cache=True, logits_to_keep=1).logits[:, -1]
        picks = [int(logits.argmax())]
        for i in range(tokens - 1):
            if not forced and picks[-1] in ends:
                break
            token = forced[i] if forced else picks[-1]
            logits = decode_step(model, torch.tensor([[token]]), torch.tensor([[ids.shape[1] + i]]), None,
                                 cache, native=True)
            picks.append(int(logits.argmax()))
    return picks


def load(dtype: str, fast_decode: bool, native: bool = True) -> LoadedModel:
    """The embedded model through the app's own cache (and its fast-decode hook); `native`:
    its decode steps go through the native step (built first, if this machine can)."""
    settings = dataclasses.replace(Settings(offline=True), dtype=dtype, fast_decode=fast_decode,
                                   native_step=native)
    loaded = ModelCache(settings).get(EMBEDDED_MODEL, ModelKind.CAUSAL_LM)
    if native and fast_decode:
        native_step.builder.wait(settings.cache_dir)
    return loaded


def load_int8_only() -> LoadedModel:
    """The previous default, for the record: transformers' layers, every linear int8."""
    loaded = load("bfloat16", fast_decode=False)
    quantize_linears_int8(loaded.model, torch.bfloat16)
    return loaded


def llama_bench_binaries() -> list[str]:
    """Every llama-bench to compare with: those in $LLAMA_CPP_BIN (folders, ':'-separated) when
    set, else every build under the cache ../shared/tools/llama-cpp builds into (its native
    `build`, and e.g. a `build-avx2` made with GGML_NATIVE=OFF GGML_AVX2=ON), else PATH's."""
    if os.environ.get("LLAMA_CPP_BIN"):
        folders = os.environ["LLAMA_CPP_BIN"].split(":")
    else:
        folders = sorted(glob.glob(str(Path.home() / ".cache/llama-cpp-*/src/vendor/llama.cpp/build*/bin")))
    found = [str(Path(folder) / "llama-bench") for folder in folders
             if folder and os.access(Path(folder) / "llama-bench", os.X_OK)]
    return found or [binary for binary in [shutil.which("llama-bench")] if binary]


def llama_bench_run(binary: str, threads: int, prompt_tokens: int,
                    extra: tuple[str, ...] = ()) -> tuple[float, float]:
    """(prefill seconds for `prompt_tokens`, decode tokens/s): one llama-bench repetition."""
    result = subprocess.run(
        [binary, "-m", str(embedded_gguf_path()), "-t", str(threads), "-p", str(prompt_tokens),
         "-n", str(LLAMA_CPP_DECODE_TOKENS), "-r", "1", "-o", "json", *extra],
        capture_output=True, text=True, check=True, timeout=600)
    tests = json.loads(result.stdout)
    prefill = next(t for t in tests if t["n_prompt"] and not t["n_gen"])
    decode = next(t for t in tests if t["n_gen"] and not t["n_prompt"])
    return prompt_tokens / prefill["avg_ts"], decode["avg_ts"]


def llama_bench_options(binary: str) -> tuple[str, ...] | None:
    """Options under which llama-bench runs here: none, else `--repack 0` (a native build's AMX
    path dies of SIGILL on VMs that do not grant AMX state), else None (says why)."""
    for extra in ((), ("--repack", "0")):
        try:
            subprocess.run([binary, "-m", str(embedded_gguf_path()), "-t", "1", "-p", "2",
                            "-n", "2", "-r", "1", "-o", "json", *extra],
                           capture_output=True, check=True, timeout=120)
            return extra
        except (subprocess.SubprocessError, OSError) as error:
            print(f"(llama.cpp {' '.join(extra) or 'as built'} does not run here: {error})")
    return None


def runnable_llama_benches() -> list[tuple[str, tuple[str, ...]]]:
    """(llama-bench, the options it runs with here) for every build found that runs."""
    binaries = llama_bench_binaries()
    if not binaries:
        print("(no llama.cpp binaries found: run ../shared/tools/llama-cpp or set LLAMA_CPP_BIN)")
    return [(binary, options) for binary in binaries
            if (options := llama_bench_options(binary)) is not None]


def embedded_models() -> dict[str, LoadedModel]:
    return {
        "fp32": load("float32", fast_decode=False),
        "bf16": load("bfloat16", fast_decode=False),
        "int8 linears": load_int8_only(),
        "fused int4 bf16": load("bfloat16", fast_decode=True),  # the previous default
        "app default": load("auto", fast_decode=True),  # the plan probed for this machine
        "app default, Python step": load("auto", fast_decode=True, native=False),
    }


def qwen_shaped(dtype: torch.dtype, fast: bool) -> LoadedModel:
    """A random-weight model with Qwen2.5-0.5B-Instruct's exact shape (no download), prepared by
    the app's own hook when `fast`. Random weights run at the speed of real ones."""
    from transformers import AutoModelForCausalLM, Qwen2Config

    from modules.engine.kernels.fast_decode import prepare_chat_model
    from modules.engine.model_refs import parse_model_ref

    config = Qwen2Config(hidden_size=896, num_hidden_layers=24, num_attention_heads=14,
                         num_key_value_heads=2, intermediate_size=4864, vocab_size=151936,
                         tie_word_embeddings=True, max_position_embeddings=32768)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=dtype).eval()
    prepared = (prepare_chat_model(model, torch.device("cpu"), dtype, "qwen2.5-0.5b-shape",
                                   Settings().cache_dir, probe=True) if fast else None)
    tokenizer = load("float32", fast_decode=False).tokenizer  # ids only; any tokenizer does
    return LoadedModel(ref=parse_model_ref(EMBEDDED_MODEL), kind=ModelKind.CAUSAL_LM, model=model,
                       tokenizer=tokenizer, device=torch.device("cpu"),
                       dtype=prepared.dtype if prepared else dtype, nbytes=0,
                       quantization=prepared.quantization if prepared else None,
                       speed_plan=prepared.plan if prepared else None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", default="2", help="comma-separated torch thread counts")
    parser.add_argument("--no-chat", action="store_true", help="skip the streamed chat path rows")
    parser.add_argument("--no-agreement", action="store_true", help="skip the agreement table")
    parser.add_argument("--no-llama", action="store_true", help="skip the llama.cpp row")
    parser.add_argument("--qwen-shape", action="store_true",
                        help="a random model shaped like Qwen2.5-0.5B instead (bare generate only)")
    args = parser.parse_args()
    policy = os.environ.get("OMP_WAIT_POLICY", "(unset)")
    isa = " ".join(f"{name}={os.environ[name]}" for name in ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA")
                   if name in os.environ) or "native"
    print(f"torch {torch.__version__}, CPU capability {cpu_capability()} ({isa}), "
          f"bf16 matmul {'native' if _native_bf16() else 'emulated'}, "
          f"{os.cpu_count()} CPUs, OMP_WAIT_POLICY={policy}, load average {os.getloadavg()[0]:.1f}")

    if args.qwen_shape:
        models = {"fp32": qwen_shaped(torch.float32, False), "bf16": qwen_shaped(torch.bfloat16, False),
                  "app default": qwen_shaped(torch.bfloat16, True)}
        args.no_agreement = args.no_chat = True  # random weights: agreement means nothing
    else:
        models = embedded_models()
    native = native_step.ready(models["app default"].model)
    print(f"App default here: {models['app default'].speed_line}"
          f"{'' if native else ' (' + str(native_step.builder.error) + ')'}")
    if not args.no_agreement:
        print_agreement(models)

    ids = prompt_ids(models["bf16"], LONG_PROMPT)
    print(f"\nSpeed: prompt {ids.shape[1]} tokens, {args.tokens} new tokens, "
          f"{args.repeats} interleaved rounds, medians")
    threads = [int(t) for t in args.threads.split(",")]
    # llama.cpp's rows are for the embedded model's GGUF file
    llama_benches = [] if args.no_llama or args.qwen_shape else runnable_llama_benches()
    runs: dict[str, Callable[[], tuple[float, float]]] = {}
    for n in threads:
        for binary, options in llama_benches:
            build = Path(binary).parent.parent.name  # "build", "build-avx2", ...
            label = " ".join(("llama.cpp", build, *options, f"{n} thread(s)"))
            runs[label] = lambda n=n, b=binary, o=options: llama_bench_run(b, n, ids.shape[1], o)
        for name, loaded in models.items():
            runs[f"generate {name}, {n} thread(s)"] = _with_threads(
                n, lambda lm=loaded: bare_run(lm, ids, args.tokens))
        if not args.no_chat:
            runs[f"chat path app default, {n} thread(s)"] = _with_threads(
                n, lambda lm=models["app default"]: chat_run_in_app(lm, LONG_PROMPT, args.tokens))
            runs[f"chat path, Python step, {n} thread(s)"] = _with_threads(
                n, lambda lm=models["app default, Python step"]: chat_run_in_app(lm, LONG_PROMPT, args.tokens))
            runs[f"chat path app default, {n} thread(s), daemon compute thread"] = _with_threads(
                n, lambda lm=models["app default"]: chat_run_on_daemon(lm, LONG_PROMPT, args.tokens))
    print_speed(runs, args.repeats)


def _native_bf16() -> bool:
    """Does oneDNN run bf16 matmuls natively at the ISA torch uses (AVX-512 bf16 / AMX)?"""
    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    capped = os.environ.get("ONEDNN_MAX_CPU_ISA", "").upper() in {"AVX2", "AVX", "SSE41"}
    return not capped and cpu_capability().startswith("AVX512") and (
        "avx512_bf16" in flags or "amx_bf16" in flags)


def _with_threads(n: int, run: Callable[[], tuple[float, float]]) -> Callable[[], tuple[float, float]]:
    def wrapped() -> tuple[float, float]:
        torch.set_num_threads(n)
        return run()
    return wrapped


def print_agreement(models: dict[str, LoadedModel]) -> None:
    reference_model = models["fp32"]
    prompts = [prompt_ids(reference_model, text) for text in FIXED_PROMPTS]
    outputs = {
        name: [greedy(loaded, ids, AGREEMENT_TOKENS).tolist() for ids in prompts]
        for name, loaded in models.items()
    }
    reference = outputs["fp32"]
    forced = {
        name: [teacher_forced_top1(loaded, ids, ref) for ids, ref in zip(prompts, reference)]
        for name, loaded in models.items()
    }
    if native_step.ready(models["app default"].model):  # the rows above ran the Python step
        app = models["app default"]
        outputs["app, native step"] = [step_picks(app, ids, AGREEMENT_TOKENS) for ids in prompts]
        forced["app, native step"] = [step_picks(app, ids, len(ref), forced=ref)
                                      for ids, ref in zip(prompts, reference)]
    positions = sum(len(ref) for ref in reference)
    print(f"\nGreedy agreement with fp32, {len(prompts)} prompts × {AGREEMENT_TOKENS} tokens")
    print(f"{'configuration':<14} {'identical':>10} {'first difference at':>20} "
          f"{'top-1 = fp32 (teacher-forced)':>30}")
    for name, tokens in outputs.items():
        full, firsts = agreement(reference, tokens)
        same = sum(a == b for f, r in zip(forced[name], forced["fp32"]) for a, b in zip(f, r))
        print(f"{name:<14} {full:>7}/{len(prompts)} {firsts:>20} "
              f"{same:>20}/{positions} ({same / positions:.1%})")
    tokenizer = reference_model.tokenizer
    for i, text in enumerate(FIXED_PROMPTS):
        ref = outputs["fp32"][i]
        for name, tokens in outputs.items():
            if name != "fp32" and tokens[i] != ref:
                print(f"  differs ({name}) on {text!r}:\n    fp32: {tokenizer.decode(ref)!r}"
                      f"\n    {name}: {tokenizer.decode(tokens[i])!r}")


def print_speed(runs: dict[str, Callable[[], tuple[float, float]]], repeats: int) -> None:
    for run in runs.values():  # warm-up: first calls allocate and pack
        run()
    results: dict[str, list[tuple[float, float]]] = {name: [] for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            results[name].append(run())
    medians = {name: (statistics.median(v[0] for v in values), statistics.median(v[1] for v in values))
               for name, values in results.items()}
    llamas = [value for name, value in medians.items() if name.startswith("llama.cpp")]
    llama = max(llamas, key=lambda value: value[1]) if llamas else None  # its fastest build here
    print(f"{'configuration':<52} {'decode tok/s':>12} {'first token s':>13} "
          f"{'decode vs llama.cpp':>20} {'prefill vs llama.cpp':>21}")
    for name, (ttft, speed) in medians.items():
        ratios = (f"{speed / llama[1]:>20.0%} {llama[0] / ttft:>21.0%}" if llama
                  else f"{'-':>20} {'-':>21}")
        print(f"{name:<52} {speed:>12.1f} {ttft:>13.3f} {ratios}")
    print("(vs llama.cpp: against its fastest build above; prefill: its prompt time / ours, above"
          " 100 % is faster than it."
          f" Load average now {os.getloadavg()[0]:.1f})")


if __name__ == "__main__":
    main()
