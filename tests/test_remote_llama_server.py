"""The remote chat backend against a real OpenAI-compatible server: llama.cpp's llama-server
serving the embedded SmolLM2 GGUF file, reached through the page's /chat and through /v1.

The binary comes from `../shared/tools/llama-cpp` (a 15-minute build, never run here or in
CI): set LLAMA_SERVER to its path, or leave it in that tool's cache folder. Without it
these tests skip and say how to get it.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import httpx
import pytest
from gradio_client import Client

from modules.engine.model_cache import ModelCache
from modules.engine.model_refs import embedded_gguf_path
from tests.conftest import free_port, make_settings
from tests.test_openai_api import CAPITAL_QUESTION, running_app

LLAMA_CPP_VERSION = "0.3.36"  # what ../shared/tools/llama-cpp builds by default
START_TIMEOUT_S = 120
SYSTEM = "You are a helpful assistant."  # the chat tab's default system prompt
QUESTION = [{"role": "system", "content": SYSTEM}, *CAPITAL_QUESTION]


def llama_server_binary() -> Path | None:
    given = os.environ.get("LLAMA_SERVER")
    root = Path(os.environ.get("LLAMA_CPP_CACHE",
                               Path.home() / f".cache/llama-cpp-{LLAMA_CPP_VERSION}"))
    path = Path(given) if given else root / "src/vendor/llama.cpp/build/bin/llama-server"
    return path if path.is_file() and os.access(path, os.X_OK) else None


@pytest.fixture(scope="module")
def llama_server(tmp_path_factory):
    """Base URL (…/v1) of a llama-server on 127.0.0.1 serving the embedded GGUF model."""
    binary = llama_server_binary()
    if binary is None:
        pytest.skip("llama-server is not built: run ../shared/tools/llama-cpp (about 15 min) "
                    "or set LLAMA_SERVER=/path/to/llama-server")
    port = free_port()
    log = tmp_path_factory.mktemp("llama-server") / "server.log"  # a pipe could fill and block it
    process = subprocess.Popen(
        # --jinja: the GGUF file's own chat template, as transformers renders it.
        # --no-repack: the repacked (AMX) weight path dies with SIGILL where the kernel has
        # not enabled AMX tiles for processes (seen on this project's VMs: `tilezero` traps).
        [str(binary), "-m", str(embedded_gguf_path()), "-t", "1", "-c", "2048",
         "--jinja", "--no-repack", "--host", "127.0.0.1", "--port", str(port)],
        stdout=subprocess.DEVNULL, stderr=log.open("w"),
    )
    base = f"http://127.0.0.1:{port}"
    try:
        _wait_healthy(base, process, log)
        yield base + "/v1"
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _wait_healthy(base: str, process: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"llama-server exited ({process.returncode}): {log.read_text()[-2000:]}")
        try:
            if httpx.get(base + "/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    pytest.fail(f"llama-server did not become healthy within {START_TIMEOUT_S} s")


@pytest.fixture(scope="module")
def app_on_llama_server(llama_server):
    """The whole app configured with --remote-base-url pointing at llama-server."""
    cache = ModelCache(make_settings())
    with running_app(cache, remote_base_url=llama_server) as (url, *_):
        yield url, cache


def test_the_page_chats_through_llama_server(app_on_llama_server):
    url, cache = app_on_llama_server
    client = Client(url, verbose=False)
    chatbot, _, _, _ = client.predict(
        message=CAPITAL_QUESTION[-1]["content"], system_prompt=SYSTEM, model="remote",
        max_new_tokens=16, temperature=0.0, top_p=0.9, top_k=50, repetition_penalty=1.0,
        do_sample=False, seed=None, api_name="/chat",
    )
    client.close()
    reply = chatbot[-1]["content"][0]["text"]
    assert chatbot[-1]["role"] == "assistant" and "Paris" in reply
    stats = chatbot[-1]["content"][1]["text"]  # the stats line under the reply
    assert "finish: stop" in stats or "finish: length" in stats
    assert cache.loaded_names() == []  # llama-server answered, not a local model


def test_v1_chats_through_llama_server(app_on_llama_server, llama_server):
    url, cache = app_on_llama_server
    served = httpx.get(llama_server + "/models").json()["data"][0]["id"]
    listed = [m["id"] for m in httpx.get(url + "/v1/models").json()["data"]]
    answer = httpx.post(url + "/v1/chat/completions", timeout=120, json={
        "messages": QUESTION, "max_tokens": 16, "temperature": 0})
    assert served in listed
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["model"] == served
    assert "Paris" in body["choices"][0]["message"]["content"]
    assert body["usage"]["prompt_tokens"] > 0 and body["usage"]["completion_tokens"] > 0
    with httpx.stream("POST", url + "/v1/chat/completions", timeout=120, json={
        "messages": QUESTION, "max_tokens": 4, "temperature": 0, "stream": True,
    }) as response:
        events = [json.loads(line[5:]) for line in response.iter_lines()
                  if line.startswith("data:") and line != "data: [DONE]"]
    assert events[-1]["choices"][0]["finish_reason"] in ("stop", "length")
    assert "".join(e["choices"][0]["delta"].get("content", "") for e in events)
    assert cache.loaded_names() == []
