"""Chat clients for the throughput benchmarks, run in a process of their own.

Real users' clients (browsers, OpenAI SDKs) never share the server's interpreter. In
the server's process, gradio_client's per-update work would hold the GIL that the
model's decode loop needs between operations, and the page would look slower than it
is. So `users_at_once` starts this module as a separate process:

    python -m benchmarks.clients {v1,page} URL MODEL USERS TOKENS

and reads one JSON line per reply: send time, chunk arrival times, completion tokens,
end time (perf_counter seconds in this process; only differences are used).
Only the standard library and gradio_client are imported here, never torch.

On a 2-core machine the clients' CPU comes out of the server's, which remote users'
clients never take. So the /v1 users of a run share one asyncio loop over plain HTTP/1.1
connections: a thread per user reading through httpx took ~230 µs of CPU per streamed
chunk, this ~35 µs (one /v1 user on the Zen 5 host: 289 → 323 tok/s, four users 796 →
864, alternated against one `python app.py`).
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import asdict, dataclass
from typing import Any, TypeVar
from urllib.parse import urlsplit

T = TypeVar("T")
USER_PROMPTS = [
    "Write a long story about a brave little dragon who learns to fly.",
    "Explain how a rainbow forms, in detail.",
    "Describe a day in the life of a lighthouse keeper.",
    "Write a long letter to a friend about your travels in Italy.",
]
# What the Chat tab shows for a reply before its first text (modules/ui/chat/handlers.py).
PLACEHOLDER = "…"
# Asked before each measured run (benchmarks.chat_throughput), never measured: like an
# earlier visitor's question, it leaves the system prompt in the prefix cache.
EARLIER_VISITOR = "Hello! What can you do?"


@dataclass
class Reply:
    sent: float
    chunks: list[float]  # arrival times of content chunks
    tokens: int
    done: float

    @property
    def ttft(self) -> float:
        return (self.chunks[0] if self.chunks else self.done) - self.sent

    @property
    def e2e(self) -> float:
        return self.done - self.sent

    @property
    def tpot(self) -> float:
        return (self.e2e - self.ttft) / max(1, self.tokens - 1)


def users_at_once(kind: str, url: str, model: str, users: int, tokens: int, prompt: str | None = None
                  ) -> list[Reply]:
    """`users` clients of `kind` ("v1" or "page") sending at the same moment, from another
    process; each its own of USER_PROMPTS, or all `prompt`."""
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks.clients", kind, url, model, str(users), str(tokens),
         *([prompt] if prompt else [])],
        capture_output=True, text=True, check=True, timeout=1800)
    return [Reply(**json.loads(line)) for line in result.stdout.splitlines() if line.startswith("{")]


def prompt_of(index: int) -> str:
    return USER_PROMPTS[index % len(USER_PROMPTS)]


async def stream_events(base_url: str, model: str, messages: list[dict], tokens: int) -> AsyncIterator[dict]:
    """The events of one streamed greedy /v1 chat completion, usage included."""
    body = json.dumps({"model": model, "messages": messages, "max_tokens": tokens, "temperature": 0,
                       "stream": True, "stream_options": {"include_usage": True}}).encode()
    url = urlsplit(base_url)
    reader, writer = await asyncio.open_connection(url.hostname, url.port or 80)
    writer.write(f"POST {url.path}/chat/completions HTTP/1.1\r\nHost: {url.netloc}\r\n"
                 f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
                 "Connection: close\r\n\r\n".encode() + body)
    try:
        status = await reader.readline()
        if status.split(b" ")[1:2] != [b"200"]:
            raise RuntimeError(f"{base_url}: {status.decode(errors='replace').strip()} "
                               f"{(await reader.read(2000)).decode(errors='replace')}")
        chunked = False
        while (line := await reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode("latin-1").partition(":")
            chunked |= name.strip().lower() == "transfer-encoding" and "chunked" in value.lower()
        pending = b""
        async for data in _body(reader, chunked):
            pending = (pending + data).replace(b"\r\n", b"\n")  # SSE allows either line end
            while b"\n\n" in pending:
                event, pending = pending.split(b"\n\n", 1)
                payload = event[5:].lstrip(b" ") if event.startswith(b"data:") else b""
                if payload and payload != b"[DONE]":
                    yield json.loads(payload)
    finally:
        writer.close()


async def _body(reader: asyncio.StreamReader, chunked: bool) -> AsyncIterator[bytes]:
    """A response body as it arrives: chunked transfer encoding, or up to the connection's end."""
    while True:
        if chunked:
            size = int((await reader.readline()).split(b";")[0], 16)
            if size == 0:
                return
            data = (await reader.readexactly(size + 2))[:-2]
        elif not (data := await reader.read(65536)):
            return
        yield data


def content_of(event: dict) -> str:
    return "".join((c.get("delta") or {}).get("content") or "" for c in event.get("choices") or [])


async def stream_one(base_url: str, model: str, prompt: str, tokens: int) -> Reply:
    """One streamed /v1 chat completion, greedy, timed chunk by chunk."""
    sent, chunks, used = time.perf_counter(), [], 0
    async for event in stream_events(base_url, model, [{"role": "user", "content": prompt}], tokens):
        if event.get("usage"):
            used = event["usage"]["completion_tokens"]
        if content_of(event):
            chunks.append(time.perf_counter())
    return Reply(sent, chunks, used or len(chunks), time.perf_counter())


async def v1_replies(base_url: str, model: str, users: int, tokens: int, ask_of: Callable[[int], str]
                     ) -> list[Reply]:
    """`users` streamed /v1 chats sent together, on this one event loop."""
    return list(await asyncio.gather(*(stream_one(base_url, model, ask_of(i), tokens) for i in range(users))))


def page_replies(page_url: str, users: int, tokens: int,
                 ask_of: Callable[[int], str] | None = None) -> list[Reply]:
    """`users` browser-like clients (gradio_client) sending to the Chat tab's /chat at once,
    with the tab's own settings (sampling, repetition penalty). A chunk is an update whose
    text grew; the token count is the one the reply's stats line reports."""
    from gradio_client import Client

    clients = [Client(page_url, verbose=False) for _ in range(users)]  # before the clock starts

    def ask(index: int) -> Reply:
        sent, chunks, text, last = time.perf_counter(), [], "", None
        job = clients[index].submit((ask_of or prompt_of)(index), api_name="/chat", max_new_tokens=tokens)
        for arrived, output in _updates(job):
            last = output
            reply = _last_reply(output[0])
            if reply == PLACEHOLDER:  # shown at once, before any token
                continue
            if len(reply) > len(text):
                chunks.append(arrived)
                text = reply
        return Reply(sent, chunks, _reported_tokens(last[0] if last else None), time.perf_counter())

    return at_once(users, ask)


def _updates(job) -> Iterator[tuple[float, Any]]:
    """A gradio_client job's outputs as they arrive, each with the moment it was read.

    Not `for output in job`: gradio_client's `Job.__next__` sleeps 1 ms while holding the
    lock that its SSE thread needs to hand over each update, so updates the server sent
    on time reach that iterator in clumps (one page user's first text came 0.2-1.1 s late
    while its SSE bytes arrived every 50 ms). Here the lock is taken only to read. Its
    SSE thread still looks for new messages every 50 ms, so an update may wait up to that
    here where a browser's client does not.
    """
    seen = 0
    while True:
        done = job.done()  # before reading: every output is in once the job is done
        outputs = job.outputs()
        now = time.perf_counter()
        for output in outputs[seen:]:
            yield now, output
        seen = len(outputs)
        if done:
            return
        time.sleep(0.001)


def at_once(users: int, ask: Callable[[int], T]) -> list[T]:
    """`ask(index)` for each of `users` users, on threads released together."""
    replies: list[T | None] = [None] * users
    barrier = threading.Barrier(users)

    def user(index: int) -> None:
        barrier.wait()
        replies[index] = ask(index)

    threads = [threading.Thread(target=user, args=(i,)) for i in range(users)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return replies


def _assistant_content(chatbot):
    for message in reversed(chatbot or []):
        if isinstance(message, dict) and message.get("role") == "assistant":
            return message.get("content")
    return None


def _last_reply(chatbot) -> str:
    """The text of the last assistant message in a Chatbot value."""
    content = _assistant_content(chatbot)
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # the reply, then the stats line once it is done
        texts = [part.get("text", "") for part in content if isinstance(part, dict)]
        return texts[0] if texts else ""
    return ""


def _reported_tokens(chatbot) -> int:
    """Completion tokens from the finished reply's stats line ("<sub>128 tokens · …")."""
    content = _assistant_content(chatbot)
    parts = content if isinstance(content, list) else []
    for part in reversed(parts):
        text = part.get("text", "") if isinstance(part, dict) else ""
        words = text.replace("<sub>", " ").split()
        if len(words) > 1 and words[0].isdigit():
            return int(words[0])
    raise ValueError("the finished reply has no stats line with a token count")


def main() -> None:
    kind, url, model, users, tokens = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
    ask_of = (lambda index: sys.argv[6]) if len(sys.argv) > 6 else prompt_of
    if kind == "page":
        replies = page_replies(url, users, tokens, ask_of)
    else:
        replies = asyncio.run(v1_replies(url, model, users, tokens, ask_of))
    for reply in replies:
        print(json.dumps(asdict(reply)), flush=True)


if __name__ == "__main__":
    main()
