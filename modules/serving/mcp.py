"""The app's tools over MCP, with Gradio's own MCP server (served at /gradio_api/mcp/).

`add_mcp_tools(demo, context)` adds one `gr.api` endpoint per tool to the page's Blocks;
Gradio reads each function's type hints and docstring (the `Args:` section) into the
tool's description and input schema. `create_app` mounts the page with `mcp_server=True`
and `keep_only_tools` then narrows Gradio's tool list to these: the tabs' own events
(button clicks, refreshes) stay Gradio API endpoints for the page, not agent tools.
"""

from __future__ import annotations

import functools
import json
import threading
from collections.abc import Callable

import gradio as gr

from modules.app_context import AppContext
from modules.engine.compute import on_request_thread
from modules.engine.model_cache import ModelKind
from modules.errors import PlaygroundError
from modules.tasks import next_token
from modules.tasks.chat import GenerationParams
from modules.tasks.explorer.scoring import score_continuation
from modules.tasks.sentiment import classify_text, load_classifier
from modules.tasks.translation import load_translator, translate_text
from modules.tasks.zero_shot import zero_shot

MCP_PATH = "/gradio_api/mcp/"
ENDPOINT_PREFIX = "mcp_"  # the tools' Gradio endpoints: apart from the tabs' (explorer's score_continuation)
TOOL_NAMES = ("chat_reply", "translate", "sentiment", "zero_shot_classify",
              "next_token_distribution", "score_continuation")


def add_mcp_tools(demo: gr.Blocks, context: AppContext) -> None:
    """Register the tools on `demo` (before it is mounted)."""
    settings, cache = context.settings, context.cache

    @on_request_thread
    def chat_reply(message: str, system_prompt: str = "", max_tokens: int = 256) -> str:
        """Ask the chat model one question and get its whole reply (greedy, not streamed).

        Args:
            message: the user's message.
            system_prompt: optional instructions for the model.
            max_tokens: the most tokens the reply may have.
        """
        messages = ([{"role": "system", "content": system_prompt}] if system_prompt else [])
        messages.append({"role": "user", "content": message})
        params = GenerationParams(max_new_tokens=max_tokens, temperature=0).validated(
            settings.max_new_tokens)
        last = None
        for last in context.chat_backend.stream(messages, params, threading.Event()):
            pass
        return last.text if last else ""

    @on_request_thread
    def translate(text: str, direction: str = "zh-en") -> str:
        """Translate text with a Helsinki-NLP opus-mt model.

        Args:
            text: the text to translate (several lines are kept apart).
            direction: source and target language codes, e.g. "zh-en" or "en-de".
        """
        return translate_text(load_translator(cache, settings, direction), text)

    @on_request_thread
    def sentiment(text: str) -> str:
        """Classify the sentiment of a text with the sentiment model.

        Args:
            text: the text to classify.

        Returns:
            JSON: each label's probability, best first.
        """
        return json.dumps(classify_text(load_classifier(cache, settings.sentiment_model), text).scores)

    @on_request_thread
    def zero_shot_classify(text: str, labels: str) -> str:
        """Classify a text into labels you choose, scored by the chat model (zero-shot).

        Args:
            text: the text to classify.
            labels: the labels, comma-separated, e.g. "sports, politics, science".

        Returns:
            JSON: each label's probability, best first.
        """
        loaded = cache.get(context.chat_model.ref, ModelKind.CAUSAL_LM)
        return json.dumps(zero_shot(loaded, [text], labels)[0].scores)

    @on_request_thread
    def next_token_distribution(prompt: str, top: int = 10, temperature: float = 1.0) -> str:
        """The chat model's most likely next tokens after a prompt, with probabilities.

        Args:
            prompt: the text so far (no chat template is applied).
            top: how many candidates to return (1 to 50).
            temperature: divides the logits before the softmax.

        Returns:
            JSON: a list of {token, probability, rank}, likeliest first.
        """
        loaded = cache.get(context.chat_model.ref, ModelKind.CAUSAL_LM)
        distribution = next_token.next_token_distribution(
            loaded, prompt, temperature=temperature, shown=top,
            max_input_tokens=settings.max_input_tokens)
        return json.dumps([{"token": c.token, "probability": c.probability, "rank": c.rank}
                           for c in distribution.candidates], ensure_ascii=False)

    @on_request_thread
    def score_continuation_tool(prompt: str, continuation: str) -> str:
        """How likely the chat model finds a continuation of a prompt, token by token.

        Args:
            prompt: the text before the continuation.
            continuation: the text to score.

        Returns:
            JSON: log_probability (natural log), probability, perplexity, and each token's
            probability, rank and surprise.
        """
        loaded = cache.get(context.chat_model.ref, ModelKind.CAUSAL_LM)
        ids = next_token.encode_prompt(loaded, prompt)
        score = score_continuation(loaded, ids, continuation, settings.max_input_tokens)
        return json.dumps(score.as_dict(), ensure_ascii=False)

    score_continuation_tool.__name__ = "score_continuation"
    with demo:
        for tool in map(_clear_errors, (chat_reply, translate, sentiment, zero_shot_classify,
                     next_token_distribution, score_continuation_tool)):
            gr.api(tool, api_name=ENDPOINT_PREFIX + tool.__name__, queue=True)


def _clear_errors(tool: Callable) -> Callable:
    """A PlaygroundError (bad input, a model that cannot load) is the tool's error message,
    without a traceback in the log; anything else is a bug and propagates."""
    @functools.wraps(tool)
    def run(*args, **kwargs):
        try:
            return tool(*args, **kwargs)
        except PlaygroundError as error:
            raise gr.Error(str(error), print_exception=False) from error

    return run


def keep_only_tools(demo: gr.Blocks) -> None:
    """Narrow the mounted MCP server's tool list to TOOL_NAMES (the UI events stay off it)."""
    server = getattr(demo, "mcp_server_obj", None)
    if server is not None:
        endpoints = set(server.tool_to_endpoint.values())
        server.tool_to_endpoint = {name: f"/{ENDPOINT_PREFIX}{name}" for name in TOOL_NAMES
                                   if f"/{ENDPOINT_PREFIX}{name}" in endpoints}
