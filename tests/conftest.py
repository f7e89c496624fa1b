"""Shared fixtures: tiny random models built here, and the app's real model cache.

Nothing in the tests may reach the network, so the Hub is switched off before
transformers is imported anywhere.
"""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import dataclasses  # noqa: E402
import socket  # noqa: E402
import time  # noqa: E402

import pytest  # noqa: E402

from testing.tiny_models import (  # noqa: E402
    build_tiny_causal_lm,
    build_tiny_distilbert,
    build_tiny_marian,
)


@pytest.fixture(scope="session")
def tiny_causal_lm_dir(tmp_path_factory):
    """A Llama-style causal LM with a ChatML chat template (random weights)."""
    return build_tiny_causal_lm(tmp_path_factory.mktemp("tiny-causal-lm"))


@pytest.fixture(scope="session")
def tiny_marian_dir(tmp_path_factory):
    """A Marian translation model with sentencepiece tokenizers (random weights)."""
    return build_tiny_marian(tmp_path_factory.mktemp("tiny-marian"))


@pytest.fixture(scope="session")
def tiny_distilbert_dir(tmp_path_factory):
    """A DistilBERT sst-2-style classifier, labels NEGATIVE/POSITIVE (random weights)."""
    return build_tiny_distilbert(tmp_path_factory.mktemp("tiny-distilbert"))


def make_settings(**overrides):
    """Offline settings for tests; the converted embedded model is reused across runs."""
    from modules.config import Settings

    return dataclasses.replace(Settings(offline=True), **overrides)


@pytest.fixture(scope="session", autouse=True)
def native_step_built():
    """The native decode step built (or found on disk) before any test runs: a batch picks
    its kind of step when it starts, so every test sees one kind throughout."""
    from modules.engine.kernels import native_step

    native_step.builder.wait(make_settings().cache_dir)


@pytest.fixture(scope="session")
def shared_cache():
    """One ModelCache for the whole session, as in the app: the embedded model loads once."""
    from modules.engine.model_cache import ModelCache

    return ModelCache(make_settings(max_loaded_models=8))


@pytest.fixture(scope="session")
def embedded_chat_model(shared_cache):
    """The real embedded SmolLM2-135M-Instruct, loaded through the app's cache."""
    from modules.config import EMBEDDED_MODEL
    from modules.engine.model_cache import ModelKind

    return shared_cache.get(EMBEDDED_MODEL, ModelKind.CAUSAL_LM)


@pytest.fixture
def slow_steps(monkeypatch) -> list:
    """Every batch decode step takes at least 10 ms (the schedulers that ran one, a list),
    so what a test watches mid-reply happens mid-reply on fast CPUs too: on an AMD Zen 5
    the tiny model wrote 200 tokens (1,700 tok/s) before a Stop sent after the third
    update, and a 48-token page reply showed two lengths while streaming."""
    from modules.engine.batching import BatchScheduler

    decode_step = BatchScheduler._decode_step
    steps = []

    def slow_decode_step(self):
        time.sleep(0.01)
        steps.append(self)
        decode_step(self)

    monkeypatch.setattr(BatchScheduler, "_decode_step", slow_decode_step)
    return steps


def free_port() -> int:
    """A loopback port nobody listens on now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def tiny_ref(tiny_causal_lm_dir):
    """The tiny chat model's reference, as a user would type it."""
    return str(tiny_causal_lm_dir)


@pytest.fixture(scope="module")
def tiny_model(shared_cache, tiny_ref):
    """The tiny chat model, loaded through the shared cache."""
    from modules.engine.model_cache import ModelKind

    return shared_cache.get(tiny_ref, ModelKind.CAUSAL_LM)


def wait_for_generations(down_to: int = 0, timeout_s: float = 30.0) -> int:
    """How many generations are live once they fall to `down_to`, or when time is up."""
    from modules.tasks.chat import live_generation_threads

    deadline = time.monotonic() + timeout_s
    while live_generation_threads() > down_to and time.monotonic() < deadline:
        time.sleep(0.02)
    return live_generation_threads()
