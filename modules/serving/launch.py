"""Serve the app: the Gradio page at / and the OpenAI-compatible API at /v1, one process.

`create_app(demo)` builds the FastAPI app (a Space still serves `demo` itself);
`launch` runs it with uvicorn on a background thread and lends the main thread to
generation (modules/engine/compute.py). A share link needs Gradio's own launcher, so with
--share (and the share server reachable) the page is served without /v1.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterator

import gradio as gr
import uvicorn
from fastapi import FastAPI

from modules.engine.compute import lend_main_thread_while
from modules.config import Settings
from modules.serving.openai_api import create_api

log = logging.getLogger(__name__)
SHARE_SERVER = ("api.gradio.app", 443)
API_PREFIX = "/v1"


def share_server_reachable(timeout: float = 3.0) -> bool:
    try:
        with socket.create_connection(SHARE_SERVER, timeout=timeout):
            return True
    except OSError:
        return False


def create_app(demo: gr.Blocks, auth: tuple[str, str] | None = None) -> FastAPI:
    """One FastAPI app: /v1 on the demo's context (same cache), the Gradio page at /."""
    app = FastAPI(title="Transformers Playground", docs_url=None, redoc_url=None,
                  openapi_url=None)
    app.mount(API_PREFIX, create_api(demo.playground))  # before "/", which matches everything
    return gr.mount_gradio_app(app, demo, path="/", auth=auth, show_error=True)


def launch(demo: gr.Blocks, settings: Settings, **kwargs) -> None:
    """Serve `demo` and /v1 on the settings' host and port (with login, or a share link)."""
    if settings.share and share_server_reachable():
        _launch_with_share_link(demo, settings, **kwargs)
        return
    if settings.share:
        log.warning(
            "Share link unavailable (the Gradio share server cannot be reached); "
            "serving locally only at http://%s:%d", settings.host, settings.port,
        )
    if settings.api_key is None and (settings.auth or not _is_loopback(settings.host)):
        log.warning("The /v1 API needs no key (--auth covers the page only): "
                    "set --api-key (PLAYGROUND_API_KEY) to protect it.")
    app = create_app(demo, auth=settings.auth)
    url = f"http://{_url_host(settings.host)}:{settings.port}"
    print(f"* Running on local URL:  {url}\n* OpenAI-compatible API: {url}{API_PREFIX}", flush=True)
    _serve(app, settings.host, settings.port)


def _serve(app: FastAPI, host: str, port: int) -> None:
    """uvicorn on a background thread; this (main) thread runs generation jobs meanwhile."""
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, name="uvicorn", daemon=True)
    thread.start()
    _lend_main_thread(thread.join)
    server.should_exit = True
    thread.join(timeout=10)


def _lend_main_thread(serving: Callable[[], None]) -> None:
    """Run generation on this thread (modules/engine/compute.py) until `serving()` returns; Ctrl+C ends it."""
    try:
        lend_main_thread_while(serving)
    except KeyboardInterrupt:
        print("\nStopping.", flush=True)


def _launch_with_share_link(demo: gr.Blocks, settings: Settings, **kwargs) -> None:
    log.warning("Serving a share link through Gradio's launcher: the /v1 API is not served "
                "in this mode (run without --share to get it).")
    if settings.auth is None:
        log.warning("Sharing without --auth: anyone with the link can use this app.")
    demo.launch(server_name=settings.host, server_port=settings.port, share=True,
                auth=settings.auth, show_error=True, prevent_thread_lock=True, **kwargs)
    _lend_main_thread(lambda: _wait_while(lambda: demo.is_running))
    demo.close()


def _wait_while(condition: Callable[[], bool]) -> None:
    while condition():
        time.sleep(0.5)


@contextlib.contextmanager
def serve_in_thread(app: FastAPI, host: str = "127.0.0.1", port: int = 0) -> Iterator[str]:
    """Run `app` with uvicorn on a background thread; yields its base URL (tests, benchmarks).

    port 0 picks a free port."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=2))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]},
                              name="uvicorn", daemon=True)
    thread.start()
    try:
        while not server.started:
            if not thread.is_alive():
                raise RuntimeError("The server failed to start.")
            threading.Event().wait(0.02)
        yield f"http://{host}:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def _url_host(host: str) -> str:
    return "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
