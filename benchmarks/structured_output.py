"""Constrained JSON decoding: lm-format-enforcer, outlines and xgrammar, side by side.

    HF_HUB_OFFLINE=1 python -m benchmarks.structured_output [--tokens 48] [--repeats 3]

For the embedded SmolLM2 tokenizer (49k tokens) and a few JSON schemas, each library
builds a transformers LogitsProcessor (compile time), then drives a decode of
`--tokens` steps over random logits, always taking the likeliest allowed token, so
every library walks a valid JSON document: the median milliseconds one step's mask
costs, and whether the text parses. The model's own forward pass is not included
(it is the same for all three); divide by it to see the share constrained decoding adds.
Prints the CPU class first: run it on the machine you will serve from.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

SCHEMAS = {
    "flat object": {"type": "object", "properties": {"name": {"type": "string"},
                                                      "age": {"type": "integer"}},
                    "required": ["name", "age"]},
    "nested + enum + array": {
        "type": "object",
        "properties": {"user": {"type": "object", "properties": {
            "role": {"enum": ["admin", "guest"]},
            "tags": {"type": "array", "items": {"type": "string"}, "maxItems": 3}},
            "required": ["role", "tags"]},
            "score": {"type": "number", "minimum": 0, "maximum": 10}},
        "required": ["user", "score"]},
}


def builders(loaded):
    tokenizer, vocab = loaded.tokenizer, loaded.model.config.vocab_size

    def lmfe(schema):
        from lmformatenforcer import JsonSchemaParser
        from lmformatenforcer.integrations.transformers import (
            build_transformers_prefix_allowed_tokens_fn,
        )
        from transformers import PrefixConstrainedLogitsProcessor

        fn = build_transformers_prefix_allowed_tokens_fn(tokenizer, JsonSchemaParser(schema))
        return PrefixConstrainedLogitsProcessor(fn, num_beams=1)

    def outlines_(schema):
        import outlines
        from outlines.backends.outlines_core import OutlinesCoreBackend

        backend = OutlinesCoreBackend(outlines.from_transformers(loaded.model, tokenizer))
        return backend.get_json_schema_logits_processor(json.dumps(schema))

    def xgrammar_(schema):
        import xgrammar as xgr

        info = xgr.TokenizerInfo.from_huggingface(tokenizer, vocab_size=vocab)
        compiled = xgr.GrammarCompiler(info).compile_json_schema(json.dumps(schema))
        return xgr.contrib.hf.LogitsProcessor(compiled)

    return {"lm-format-enforcer": lmfe, "outlines": outlines_, "xgrammar": xgrammar_}


def walk(processor, prompt_ids, vocab, steps, eos_ids, seed):
    """Decode `steps` tokens over random logits; returns (per-step seconds, generated ids)."""
    generator = torch.Generator().manual_seed(seed)
    ids, times = list(prompt_ids), []
    for _ in range(steps):
        scores = torch.randn((1, vocab), generator=generator)
        started = time.perf_counter()
        scores = processor(torch.tensor([ids]), scores)
        times.append(time.perf_counter() - started)
        token = int(scores.argmax(-1))
        ids.append(token)
        if token in eos_ids:
            break
    return times, ids[len(prompt_ids):]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tokens", type=int, default=48)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    from modules.config import EMBEDDED_MODEL, Settings
    from modules.engine.model_cache import ModelCache, ModelKind

    print(f"CPU: {torch.backends.cpu.get_cpu_capability()}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads")
    loaded = ModelCache(Settings(offline=True)).get(EMBEDDED_MODEL, ModelKind.CAUSAL_LM)
    vocab = loaded.model.config.vocab_size
    prompt = loaded.tokenizer("Answer in JSON: ")["input_ids"]
    eos = {loaded.tokenizer.eos_token_id}
    print(f"tokenizer: {len(loaded.tokenizer)} tokens, logits width {vocab}\n")
    print("| library | schema | compile (s) | ms per token (median) | tokens | parses |")
    print("|---|---|---|---|---|---|")
    for name, build in builders(loaded).items():
        for label, schema in SCHEMAS.items():
            try:
                started = time.perf_counter()
                processor = build(schema)
                compile_s = time.perf_counter() - started
                runs = []
                for repeat in range(args.repeats):
                    processor = build(schema) if repeat else processor
                    runs.append(walk(processor, prompt, vocab, args.tokens, eos, repeat))
            except Exception as error:  # a library that cannot run here: say why
                print(f"| {name} | {label} | failed: {type(error).__name__}: {str(error)[:80]} | | | |")
                continue
            per_token = statistics.median(t for times, _ in runs for t in times) * 1000
            text = loaded.tokenizer.decode(runs[0][1], skip_special_tokens=True)
            try:
                json.loads(text)
                parses = "yes"
            except json.JSONDecodeError:
                parses = "no (cut at --tokens)" if len(runs[0][1]) >= args.tokens else "no"
            print(f"| {name} | {label} | {compile_s:.2f} | {per_token:.2f} | "
                  f"{len(runs[0][1])} | {parses} |", flush=True)


if __name__ == "__main__":
    main()
