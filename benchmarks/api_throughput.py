"""Does the /v1 API cost speed? Tokens/s and time to first token, same model and prompt:

* in-process: `modules.tasks.chat.stream_chat` called directly (what the Chat tab runs);
* /v1: the app served by uvicorn on 127.0.0.1, streamed through the official `openai`
  client (SSE over HTTP, the same `stream_chat` underneath).

Run: `python -m benchmarks.api_throughput [--max-tokens 64] [--model REF]`. Greedy
decoding, so both paths produce the same tokens. One run each after a warm-up; the
numbers are for this machine only.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import time  # noqa: E402
from dataclasses import dataclass  # noqa: E402

import openai  # noqa: E402

from benchmarks.chat_throughput import as_in_the_app, forget_prompts  # noqa: E402
from modules.app_context import AppContext  # noqa: E402
from modules.tasks.chat import GenerationParams, stream_chat  # noqa: E402
from modules.config import EMBEDDED_MODEL, Settings  # noqa: E402
from modules.serving.launch import create_app, serve_in_thread  # noqa: E402
from modules.engine.model_cache import ModelCache, ModelKind  # noqa: E402
from modules.ui.layout import build_demo  # noqa: E402

PROMPT = "Explain in a few sentences why the sky is blue."


@dataclass(frozen=True)
class Measurement:
    path: str
    first_token_s: float
    completion_tokens: int
    total_s: float
    text: str

    @property
    def tokens_per_second(self) -> float:
        """Decoding speed after the first token, as inference servers report it."""
        decoding = self.total_s - self.first_token_s
        return (self.completion_tokens - 1) / decoding if decoding > 0 else float("nan")


def measure_in_process(loaded, messages, max_tokens: int) -> Measurement:
    started, first, final = time.perf_counter(), None, None
    for chunk in stream_chat(loaded, messages, GenerationParams(max_new_tokens=max_tokens,
                                                                temperature=0.0)):
        if chunk.delta and first is None:
            first = time.perf_counter() - started
        final = chunk
    total = time.perf_counter() - started
    return Measurement("in-process stream_chat", first or total, final.usage.completion_tokens,
                       total, final.text)


def measure_api(base_url: str, model: str, messages, max_tokens: int) -> Measurement:
    client = openai.OpenAI(base_url=base_url, api_key="unused", max_retries=0, timeout=600)
    started, first, text, usage = time.perf_counter(), None, "", None
    stream = client.chat.completions.create(
        model=model, messages=messages, max_tokens=max_tokens, temperature=0, stream=True,
        stream_options={"include_usage": True},
    )
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            if choice.delta.content:
                first = first if first is not None else time.perf_counter() - started
                text += choice.delta.content
    total = time.perf_counter() - started
    return Measurement("/v1 via openai client (SSE)", first or total, usage.completion_tokens,
                       total, text)


def print_table(rows: list[Measurement]) -> None:
    print(f"{'path':<30} {'first token s':>13} {'tokens':>7} {'tokens/s':>9} {'total s':>8}")
    for row in rows:
        print(f"{row.path:<30} {row.first_token_s:>13.3f} {row.completion_tokens:>7d} "
              f"{row.tokens_per_second:>9.2f} {row.total_s:>8.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=EMBEDDED_MODEL)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--prompt", default=PROMPT)
    args = parser.parse_args()

    settings = dataclasses.replace(Settings.from_env(), offline=True, chat_model=args.model,
                                   api_key=None)
    cache = ModelCache(settings)
    context = AppContext.create(settings, cache)
    loaded = cache.get(args.model, ModelKind.CAUSAL_LM)
    messages = [{"role": "user", "content": args.prompt}]
    measure_in_process(loaded, messages, 4)  # warm-up: first-call costs out of the way
    print(f"model: {loaded.description}; prompt: {args.prompt!r}; "
          f"max_tokens={args.max_tokens}, greedy; {os.cpu_count()} CPUs; one run each\n")
    # Both as `python app.py` serves them: generation on the lent main thread.
    forget_prompts(loaded)  # each path reads the prompt from the start
    local = as_in_the_app(measure_in_process, loaded, messages, args.max_tokens)
    forget_prompts(loaded)
    with serve_in_thread(create_app(build_demo(context), context)) as url:
        remote = as_in_the_app(measure_api, url + "/v1", args.model, messages, args.max_tokens)
    print_table([local, remote])
    print(f"\nsame text on both paths: {local.text == remote.text}")


if __name__ == "__main__":
    main()
