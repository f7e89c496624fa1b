"""Serve the app: the Gradio page at /, the OpenAI-compatible API at /v1, GET /health, GET /metrics.

`create_app(demo, context)` builds the one FastAPI app; `launch` runs it with uvicorn
on a background thread, starts loading the default chat model, and lends the main
thread to generation (modules/engine/compute.py). With --share, Gradio's share tunnel
forwards a public link to this same server, so the link keeps /v1, the login and the
main-thread generation; if the share server cannot be reached, one line says so and
the app keeps serving locally.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import secrets
import socket
import threading
import time
from collections.abc import Iterator

import gradio as gr
import uvicorn
from fastapi import FastAPI
from gradio import networking

from modules.app_context import AppContext
from modules.config import Settings
from modules.engine.compute import lend_main_thread_while
from modules.serving.health import health_router
from modules.serving.mcp import add_mcp_tools, keep_only_tools
from modules.serving.metrics import metrics_router
from modules.serving.openai_api import create_api
from modules.tasks.warm_start import start_loading_chat_model

log = logging.getLogger(__name__)
API_PREFIX = "/v1"


def create_app(demo: gr.Blocks, context: AppContext,
               auth: tuple[str, str] | None = None) -> FastAPI:
    """One FastAPI app on one context (one model cache): /health, /metrics, /v1, the page at /,
    and the MCP server at /gradio_api/mcp/ (modules/serving/mcp.py).

    `auth` guards the page only: /v1 has its own key, and probes must reach /health."""
    app = FastAPI(title="Transformers Playground", docs_url=None, redoc_url=None,
                  openapi_url=None)
    app.include_router(health_router(context, demo))
    app.include_router(metrics_router(context))
    app.mount(API_PREFIX, create_api(context))  # before "/", which matches everything
    add_mcp_tools(demo, context)
    app = gr.mount_gradio_app(app, demo, path="/", auth=auth, show_error=True, mcp_server=True)
    keep_only_tools(demo)
    return app


def launch(demo: gr.Blocks, context: AppContext) -> None:
    """Serve on the settings' host and port until Ctrl+C; the main thread generates meanwhile."""
    settings = context.settings
    _warn_about_open_doors(settings)
    server = uvicorn.Server(uvicorn.Config(
        create_app(demo, context, auth=settings.auth),
        host=settings.host, port=settings.port, log_level="warning"))
    _print_addresses(settings)

    def serve() -> None:  # runs once the main thread takes jobs, so the load runs there
        start_loading_chat_model(settings, context.cache, context.chat_model.ref)
        if settings.share:
            threading.Thread(target=_open_share_link, args=(settings, server),
                             name="share-link", daemon=True).start()
        server.run()

    try:
        lend_main_thread_while(serve)
    except KeyboardInterrupt:
        print("\nStopping.", flush=True)
    finally:
        server.should_exit = True


def _print_addresses(settings: Settings) -> None:
    """The addresses to open, as log lines (nothing opens a browser: a server, a Space, a container)."""
    local = f"http://{_url_host(settings.host)}:{settings.port}"
    print(f"* Running on local URL:  {local}\n* OpenAI-compatible API: {local}{API_PREFIX}",
          flush=True)
    if settings.public_url:
        print(f"* Public URL: {settings.public_url}\n"
              f"* Public OpenAI-compatible API: {settings.public_url}{API_PREFIX}", flush=True)


def _warn_about_open_doors(settings: Settings) -> None:
    if settings.share and settings.auth is None:
        log.warning("Sharing without --auth: anyone with the link can use this app.")
    exposed = settings.share or settings.auth or not _is_loopback(settings.host)
    if settings.api_key is None and exposed:
        log.warning("The /v1 API needs no key (--auth covers the page only): "
                    "set --api-key (PLAYGROUND_API_KEY) to protect it.")


def _open_share_link(settings: Settings, server: uvicorn.Server) -> None:
    """Ask Gradio's share server for a tunnel to our own server; one line either way."""
    while not server.started:
        if server.should_exit:
            return
        time.sleep(0.1)
    local = f"http://{_url_host(settings.host)}:{settings.port}"
    try:
        url = networking.setup_tunnel(
            local_host=_url_host(settings.host), local_port=settings.port,
            share_token=secrets.token_urlsafe(32), share_server_address=None,
            share_server_tls_certificate=None,
        )
    except Exception as error:  # unreachable share server, no frpc binary, refused tunnel
        reason = (str(error).strip().splitlines() or [type(error).__name__])[0]
        log.warning("Share link unavailable (Gradio's share server could not be reached: %s); "
                    "serving locally only at %s", reason, local)
        return
    print(f"* Running on public URL: {url}\n* Public OpenAI-compatible API: {url}{API_PREFIX}",
          flush=True)


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
