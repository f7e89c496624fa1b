"""GET /health: the probe Spaces, Docker and Kubernetes call.

200 once the default chat model is ready, 503 while it loads or converts (or if it
failed). Served beside /v1, never behind the API key or the page's login.
"""

from __future__ import annotations

import gradio as gr
from fastapi import APIRouter
from fastapi.responses import JSONResponse

from modules.app_context import AppContext
from modules.config import VERSION
from modules.tasks.warm_start import chat_model_progress

HEALTH_PATH = "/health"


def health_router(context: AppContext, demo: gr.Blocks) -> APIRouter:
    router = APIRouter()

    @router.get(HEALTH_PATH, include_in_schema=False)
    def health() -> JSONResponse:
        progress = chat_model_progress(context.settings, context.cache, context.chat_model.ref)
        ready = progress.state == "ready"
        body = {
            "status": "ok" if ready else progress.state,
            "models_loaded": context.cache.loaded_names(),
            "queue_length": queue_length(demo),
            "version": VERSION,
        }
        if not ready:
            body["detail"] = progress.message
        return JSONResponse(body, status_code=200 if ready else 503)

    return router


def queue_length(demo: gr.Blocks) -> int:
    """Requests waiting in Gradio's queue (its `Queue` counts them with len())."""
    queue = getattr(demo, "_queue", None)
    return len(queue) if queue is not None else 0
