"""GET /metrics: Prometheus text format, with the `prometheus_client` library.

What vLLM and TGI export, for this app: requests by endpoint and status, prompt and
completion tokens, histograms of time to first token, inter-token latency and request
duration, gauges of running and waiting sequences (the batch schedulers), and the
models loaded with their bytes.

Like /health it needs no key by default (a scraper on a private network); set
PLAYGROUND_METRICS_KEY, or PLAYGROUND_PROTECT_METRICS=1 to reuse the /v1 API key,
to require `Authorization: Bearer <key>`.

Each app context has its own registry (`metrics_for`), so two apps in one process
(the tests) do not share counts.
"""

from __future__ import annotations

import os
import secrets
import time
import weakref
from collections.abc import Iterable

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from modules.app_context import AppContext
from modules.tasks.chat import Usage

METRICS_PATH = "/metrics"
PREFIX = "playground_"
LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
TOKEN_GAP_BUCKETS = (0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 1, 2.5)
_by_context: dict[int, Metrics] = {}  # by id(context): contexts compare by value


class Metrics:
    """The app's counters and histograms; gauges are read from the model cache when scraped."""

    def __init__(self, context: AppContext) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(PREFIX + "requests", "HTTP requests to /v1 by endpoint and status.",
                                ["endpoint", "status"], registry=r)
        self.prompt_tokens = Counter(PREFIX + "prompt_tokens", "Prompt tokens processed.",
                                     registry=r)
        self.completion_tokens = Counter(PREFIX + "completion_tokens", "Tokens generated.",
                                         registry=r)
        self.cached_prompt_tokens = Counter(
            PREFIX + "cached_prompt_tokens", "Prompt tokens not read again: the prefix cache held them.",
            registry=r)
        self.time_to_first_token = Histogram(
            PREFIX + "time_to_first_token_seconds", "From request to its first generated token.",
            buckets=LATENCY_BUCKETS, registry=r)
        self.inter_token_latency = Histogram(
            PREFIX + "inter_token_latency_seconds",
            "Time between generated tokens (each request's mean gap, once per gap).",
            buckets=TOKEN_GAP_BUCKETS, registry=r)
        self.request_duration = Histogram(
            PREFIX + "request_duration_seconds", "Whole /v1 requests, by endpoint.",
            ["endpoint"], buckets=LATENCY_BUCKETS, registry=r)
        r.register(_CacheCollector(context))

    def observe_usage(self, usage: Usage | None) -> None:
        """One finished generation's tokens and timings."""
        if usage is None:
            return
        self.prompt_tokens.inc(usage.prompt_tokens)
        self.completion_tokens.inc(usage.completion_tokens)
        self.cached_prompt_tokens.inc(usage.cached_tokens)
        if usage.time_to_first_token_s is not None:
            self.time_to_first_token.observe(usage.time_to_first_token_s)
        if usage.tokens_per_second and usage.completion_tokens > 1:
            gap = 1.0 / usage.tokens_per_second
            for _ in range(usage.completion_tokens - 1):
                self.inter_token_latency.observe(gap)

    def observe_request(self, endpoint: str, status: int, seconds: float) -> None:
        self.requests.labels(endpoint, str(status)).inc()
        self.request_duration.labels(endpoint).observe(seconds)


class _CacheCollector(Collector):
    """Gauges read when scraped: sequences running and waiting, models loaded and their bytes,
    and the bytes each chat model's prefix cache holds."""

    def __init__(self, context: AppContext) -> None:
        self.cache = context.cache

    def collect(self) -> Iterable[GaugeMetricFamily]:
        models = self.cache.loaded_models()
        running = waiting = 0
        for loaded in models:
            scheduler = getattr(loaded, "scheduler", None)
            if scheduler is not None:
                now_running = scheduler.running
                running += now_running
                waiting += max(0, scheduler.live() - now_running)
        yield GaugeMetricFamily(PREFIX + "requests_running", "Sequences generating now.",
                                value=running)
        yield GaugeMetricFamily(PREFIX + "requests_waiting",
                                "Sequences waiting for a place in a batch.", value=waiting)
        yield GaugeMetricFamily(PREFIX + "models_loaded", "Models held in memory.",
                                value=len(models))
        sizes = GaugeMetricFamily(PREFIX + "model_bytes", "Bytes of each loaded model's weights.",
                                  labels=["model", "kind"])
        for loaded in models:
            sizes.add_metric([str(loaded.ref.text), str(getattr(loaded.kind, "value", loaded.kind))],
                             loaded.nbytes)
        yield sizes
        prefixes = GaugeMetricFamily(PREFIX + "prefix_cache_bytes",
                                     "Bytes of keys and values each chat model keeps for later prompts.",
                                     labels=["model"])
        for loaded in models:
            scheduler = getattr(loaded, "scheduler", None)
            if scheduler is not None:
                prefixes.add_metric([str(loaded.ref.text)], scheduler.prefixes.nbytes)
        yield prefixes


def metrics_for(context: AppContext) -> Metrics:
    """The one Metrics of this app context."""
    metrics = _by_context.get(id(context))
    if metrics is None:
        metrics = _by_context[id(context)] = Metrics(context)
        weakref.finalize(context, _by_context.pop, id(context), None)
    return metrics


def metrics_key(context: AppContext) -> str | None:
    """The key /metrics demands: PLAYGROUND_METRICS_KEY, or the API key when
    PLAYGROUND_PROTECT_METRICS=1; None (open, like /health) otherwise."""
    key = os.environ.get("PLAYGROUND_METRICS_KEY") or None
    if key is None and os.environ.get("PLAYGROUND_PROTECT_METRICS", "").strip() in ("1", "true"):
        key = context.settings.api_key
    return key


def metrics_router(context: AppContext) -> APIRouter:
    router = APIRouter()
    metrics = metrics_for(context)
    key = metrics_key(context)

    @router.get(METRICS_PATH, include_in_schema=False)
    def scrape(request: Request) -> Response:
        if key is not None:
            scheme, _, given = request.headers.get("authorization", "").partition(" ")
            if scheme.lower() != "bearer" or not secrets.compare_digest(given.strip().encode(),
                                                                        key.encode()):
                return JSONResponse({"error": {"message": "Missing or wrong metrics key.",
                                               "type": "invalid_request_error", "param": None,
                                               "code": "invalid_api_key"}}, status_code=401)
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return router


class RequestMetricsMiddleware:
    """ASGI middleware on /v1: counts each request by endpoint and status, and times it."""

    def __init__(self, app, context: AppContext) -> None:
        self.app, self.metrics = app, metrics_for(context)

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started, status = time.perf_counter(), [500]

        async def send_and_note(message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_note)
        finally:
            endpoint = _endpoint(scope.get("path", ""))
            self.metrics.observe_request(endpoint, status[0], time.perf_counter() - started)


def _endpoint(path: str) -> str:
    """A bounded label: known routes by name, anything else 'other' (no unbounded label values)."""
    path = "/" + path.rstrip("/").split("/v1/", 1)[-1].lstrip("/")
    for known in ("/chat/completions", "/completions", "/models"):
        if path == known or (known == "/models" and path.startswith("/models/")):
            return "/v1" + known
    return "other"
