"""GET /metrics: Prometheus text that a scraper parses, counting what /v1 really did."""

from __future__ import annotations

import httpx
import openai
from prometheus_client.parser import text_string_to_metric_families

from modules.config import EMBEDDED_MODEL
from tests.test_openai_api import API_KEY, running_app


def scrape(url: str, **headers) -> dict[str, list]:
    response = httpx.get(url + "/metrics", headers=headers, timeout=30)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return {f.name: f.samples for f in text_string_to_metric_families(response.text)}


def value(samples, name: str, **labels) -> float:
    return sum(s.value for s in samples if s.name == name
               and all(s.labels.get(k) == v for k, v in labels.items()))


def test_metrics_count_requests_tokens_and_timings(tiny_causal_lm_dir, shared_cache, monkeypatch):
    monkeypatch.delenv("PLAYGROUND_METRICS_KEY", raising=False)
    monkeypatch.delenv("PLAYGROUND_PROTECT_METRICS", raising=False)
    with running_app(shared_cache, chat_model=str(tiny_causal_lm_dir), api_key=API_KEY) as (url, _, _):
        client = openai.OpenAI(base_url=url + "/v1", api_key=API_KEY, max_retries=0, timeout=120)
        reply = client.chat.completions.create(
            model=str(tiny_causal_lm_dir), messages=[{"role": "user", "content": "Hi"}],
            max_tokens=5, temperature=0)
        streamed = list(client.chat.completions.create(
            model=str(tiny_causal_lm_dir), messages=[{"role": "user", "content": "Hi"}],
            max_tokens=5, temperature=0, stream=True, stream_options={"include_usage": True}))
        try:
            client.chat.completions.create(model="no/such-model", messages=[{"role": "user", "content": "x"}])
        except openai.NotFoundError:
            pass
        metrics = scrape(url)  # no key needed by default, like /health
    samples = [s for family in metrics.values() for s in family]
    chat = "/v1/chat/completions"
    assert value(samples, "playground_requests_total", endpoint=chat, status="200") == 2
    assert value(samples, "playground_requests_total", endpoint=chat, status="404") == 1
    assert value(samples, "playground_completion_tokens_total") == 2 * reply.usage.completion_tokens
    assert value(samples, "playground_prompt_tokens_total") == 2 * reply.usage.prompt_tokens
    assert value(samples, "playground_cached_prompt_tokens_total") == (
        reply.usage.prompt_tokens_details.cached_tokens + streamed[-1].usage.prompt_tokens_details.cached_tokens)
    assert value(samples, "playground_time_to_first_token_seconds_count") == 2
    assert value(samples, "playground_request_duration_seconds_count", endpoint=chat) == 3
    if reply.usage.completion_tokens > 1:
        assert value(samples, "playground_inter_token_latency_seconds_count") > 0
    assert value(samples, "playground_models_loaded") >= 1
    assert value(samples, "playground_model_bytes", model=str(tiny_causal_lm_dir)) > 0
    assert value(samples, "playground_requests_running") == 0


def test_metrics_show_each_chat_models_prefix_cache(shared_cache, embedded_chat_model, monkeypatch):
    monkeypatch.delenv("PLAYGROUND_METRICS_KEY", raising=False)
    monkeypatch.delenv("PLAYGROUND_PROTECT_METRICS", raising=False)
    with running_app(shared_cache, chat_model=EMBEDDED_MODEL, api_key=API_KEY) as (url, _, _):
        client = openai.OpenAI(base_url=url + "/v1", api_key=API_KEY, max_retries=0, timeout=120)
        client.chat.completions.create(model=EMBEDDED_MODEL, max_tokens=2, temperature=0,
                                       messages=[{"role": "user", "content": "Metrics test: hello"}])
        samples = [s for family in scrape(url).values() for s in family]
    held = [s for s in samples if s.name == "playground_prefix_cache_bytes" and s.labels["model"] == EMBEDDED_MODEL]
    assert len(held) == 1 and held[0].value == embedded_chat_model.scheduler.prefixes.nbytes


def test_metrics_can_require_a_key(tiny_causal_lm_dir, shared_cache, monkeypatch):
    monkeypatch.setenv("PLAYGROUND_PROTECT_METRICS", "1")
    with running_app(shared_cache, chat_model=str(tiny_causal_lm_dir), api_key=API_KEY) as (url, _, _):
        assert httpx.get(url + "/metrics", timeout=30).status_code == 401
        scrape(url, Authorization=f"Bearer {API_KEY}")
