"""A conversation's later turns with and without the prefix cache: first-token times through /v1.

    HF_HUB_OFFLINE=1 python -m benchmarks.prefix_cache [--turns 4] [--reply-tokens 64]
        [--document-chars 6000]

The app is served as `python app.py` serves it. One conversation grows turn by turn, as a
chat client sends it: a pasted document (the start of this project's README) and a
question, then follow-up questions, each request carrying the whole conversation with the
greedy replies so far. Every turn is sent twice, alternating: to the embedded model's
scheduler with its prefix cache (modules/engine/prefix_cache.py, the default), and to one
without (PLAYGROUND_PREFIX_CACHE_MB=0), so background load on a shared machine hits both
alike. The table gives each turn's prompt tokens, the tokens the cache gave, both
first-token times (request sent → first content chunk) and whether the replies match.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import argparse  # noqa: E402
import asyncio  # noqa: E402
import dataclasses  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402

from benchmarks.chat_throughput import as_in_the_app, forget_prompts  # noqa: E402
from benchmarks.clients import content_of, stream_events  # noqa: E402
from modules.app_context import AppContext  # noqa: E402
from modules.config import EMBEDDED_MODEL, Settings  # noqa: E402
from modules.engine.batching import BatchScheduler  # noqa: E402
from modules.engine.model_cache import ModelCache, ModelKind  # noqa: E402
from modules.serving.launch import create_app, serve_in_thread  # noqa: E402
from modules.tasks.chat import GenerationParams, stream_chat  # noqa: E402
from modules.ui.layout import build_demo  # noqa: E402

FOLLOW_UPS = ["What is the app called?", "Which tabs does it have?", "Does it need a GPU?",
              "Who is it for?", "Name one model it can run.", "Thank you!"]


@dataclasses.dataclass
class Answer:
    ttft: float
    text: str
    prompt_tokens: int
    cached_tokens: int


def ask(base_url: str, messages: list[dict], tokens: int) -> Answer:
    """One streamed greedy chat completion."""
    return asyncio.run(_ask(base_url, messages, tokens))


async def _ask(base_url: str, messages: list[dict], tokens: int) -> Answer:
    sent, first, parts, usage = time.perf_counter(), None, [], {}
    async for event in stream_events(base_url, EMBEDDED_MODEL, messages, tokens):
        usage = event.get("usage") or usage
        if content := content_of(event):
            first = first or time.perf_counter()
            parts.append(content)
    return Answer((first or time.perf_counter()) - sent, "".join(parts), usage.get("prompt_tokens", 0),
                  (usage.get("prompt_tokens_details") or {}).get("cached_tokens", 0))


def document(chars: int) -> str:
    text = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")
    return text[:chars]


def first_question(chars: int) -> list[dict]:
    return [{"role": "user", "content": "Here is a document:\n\n" + document(chars)
             + "\n\nIn one sentence, what is it about?"}]


def later_turn(loaded, chars: int = 6000, tokens: int = 32) -> tuple[float, float, int]:
    """In this process, as the app runs it: a document conversation's second turn, its first
    token timed from the prefix cache (the first turn left it) and read whole (the cache
    emptied): (cached s, whole s, prompt tokens)."""
    return as_in_the_app(_later_turn, loaded, chars, tokens)


def _later_turn(loaded, chars: int, tokens: int) -> tuple[float, float, int]:
    forget_prompts(loaded)
    messages = first_question(chars)
    _, reply, _ = _turn(loaded, messages, tokens)
    messages += [{"role": "assistant", "content": reply}, {"role": "user", "content": FOLLOW_UPS[0]}]
    cached, _, usage = _turn(loaded, messages, tokens)
    forget_prompts(loaded)
    whole, _, _ = _turn(loaded, messages, tokens)
    return cached, whole, usage.prompt_tokens


def _turn(loaded, messages: list[dict], tokens: int):
    """(first-token seconds, reply text, usage) of one greedy in-process reply."""
    params = GenerationParams(do_sample=False, max_new_tokens=tokens)
    start, first, last = time.perf_counter(), None, None
    for chunk in stream_chat(loaded, messages, params, max_input_tokens=8192):
        if first is None and chunk.delta:
            first = time.perf_counter() - start
        last = chunk
    return first, last.text, last.usage


def run(args, context, loaded) -> list[tuple[Answer, Answer]]:
    schedulers = {on: BatchScheduler(loaded.model, loaded.lock, prefix_cache_bytes=(256 << 20) * on)
                  for on in (True, False)}
    messages = first_question(args.document_chars)
    turns = []
    with serve_in_thread(create_app(build_demo(context), context)) as url:
        for on, scheduler in schedulers.items():  # warm-up, then the cache starts empty
            loaded.scheduler = scheduler
            ask(url + "/v1", [{"role": "user", "content": "Hi"}], 4)
            scheduler.prefixes.clear()
        for turn in range(args.turns):
            answers = {}
            for on in ((True, False) if turn % 2 == 0 else (False, True)):
                loaded.scheduler = schedulers[on]
                answers[on] = ask(url + "/v1", messages, args.reply_tokens)
            turns.append((answers[True], answers[False]))
            print(f"  turn {turn + 1}: {answers[True].prompt_tokens} prompt tokens", flush=True)
            messages += [{"role": "assistant", "content": answers[True].text},
                         {"role": "user", "content": FOLLOW_UPS[turn % len(FOLLOW_UPS)]}]
    return turns


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--turns", type=int, default=4)
    parser.add_argument("--reply-tokens", type=int, default=64)
    parser.add_argument("--document-chars", type=int, default=6000)
    args = parser.parse_args()
    settings = dataclasses.replace(Settings.from_env(), offline=True, chat_model=EMBEDDED_MODEL, api_key=None,
                                   max_input_tokens=8192)
    cache = ModelCache(settings)
    context = AppContext.create(settings, cache)
    loaded = cache.get(EMBEDDED_MODEL, ModelKind.CAUSAL_LM)
    print(f"model: {loaded.description}; CPU: {torch.backends.cpu.get_cpu_capability()}, "
          f"{torch.get_num_threads()} torch threads; {args.reply_tokens} reply tokens a turn, greedy", flush=True)
    turns = as_in_the_app(run, args, context, loaded)
    print("| turn | prompt tokens | cached tokens | first token, cache (s) | first token, no cache (s) "
          "| × faster | same reply |")
    print("|---|---|---|---|---|---|---|")
    for number, (cached, fresh) in enumerate(turns, 1):
        print(f"| {number} | {cached.prompt_tokens} | {cached.cached_tokens} | {cached.ttft:.3f} | "
              f"{fresh.ttft:.3f} | {fresh.ttft / cached.ttft:.1f} | {'yes' if cached.text == fresh.text else 'NO'} |")


if __name__ == "__main__":
    main()
