"""Start the server; degrade a share link that cannot be made to one clear line."""

from __future__ import annotations

import logging
import socket

import gradio as gr

from modules.config import Settings

log = logging.getLogger(__name__)
SHARE_SERVER = ("api.gradio.app", 443)


def share_server_reachable(timeout: float = 3.0) -> bool:
    try:
        with socket.create_connection(SHARE_SERVER, timeout=timeout):
            return True
    except OSError:
        return False


def launch(demo: gr.Blocks, settings: Settings, **kwargs) -> None:
    """Launch `demo` with the settings' host, port, share link and login."""
    share = settings.share
    if share and not share_server_reachable():
        log.warning(
            "Share link unavailable (the Gradio share server cannot be reached); "
            "serving locally only at http://%s:%d", settings.host, settings.port,
        )
        share = False
    if share and settings.auth is None:
        log.warning("Sharing without --auth: anyone with the link can use this app.")
    demo.launch(
        server_name=settings.host,
        server_port=settings.port,
        share=share,
        auth=settings.auth,
        show_error=True,
        **kwargs,
    )
