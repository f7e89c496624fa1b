"""The app as an MCP server, driven by the official `mcp` client over streamable HTTP."""

from __future__ import annotations

import asyncio
import json

from mcp import ClientSession
from mcp.client.streamable_http import streamablehttp_client

from modules.serving.mcp import MCP_PATH, TOOL_NAMES
from tests.test_openai_api import running_app


async def session_run(url: str, calls: list[tuple[str, dict]]):
    """List the tools, then make `calls` in one session: (tools, [results])."""
    async with streamablehttp_client(url + MCP_PATH) as (read, write, _):
        async with ClientSession(read, write) as session:
            await session.initialize()
            tools = (await session.list_tools()).tools
            return tools, [await session.call_tool(name, args) for name, args in calls]


def test_tools_listed_with_descriptions_and_answering(tiny_causal_lm_dir, tiny_distilbert_dir,
                                                      shared_cache):
    with running_app(shared_cache, chat_model=str(tiny_causal_lm_dir),
                     sentiment_model=str(tiny_distilbert_dir)) as (url, _, _):
        tools, (feeling, reply, score) = asyncio.run(session_run(url, [
            ("sentiment", {"text": "I loved this film."}),
            ("chat_reply", {"message": "Hi", "max_tokens": 4}),
            ("score_continuation", {"prompt": "The cat sat on the", "continuation": " mat"}),
        ]))
        _, (refused,) = asyncio.run(session_run(url, [("translate", {"text": "Hi", "direction": "xx-yy"})]))
    described = {tool.name: tool for tool in tools}
    assert set(described) == set(TOOL_NAMES)  # the tabs' own events are not tools
    assert "sentiment" in described["sentiment"].description.lower()
    assert "text" in described["sentiment"].inputSchema["properties"]
    assert "labels" in described["zero_shot_classify"].inputSchema["properties"]
    assert not (feeling.isError or reply.isError or score.isError)
    scores = json.loads(feeling.content[0].text)
    assert abs(sum(scores.values()) - 1) < 1e-3 and all(0 <= v <= 1 for v in scores.values())
    assert isinstance(reply.content[0].text, str)
    scored = json.loads(score.content[0].text)
    assert scored["log_probability"] < 0 and scored["tokens"]
    assert refused.isError and "No translation model for xx" in refused.content[0].text  # clear, named
