"""Fuzz /v1 from its own OpenAPI schema (/v1/openapi.json) with schemathesis.

About 50 generated requests per operation, in process (ASGI): no 5xx, and every answer,
success or error, has a status and a body its schema promises. Replies are capped at 4
tokens so the fuzzing stays quick."""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from modules.app_context import AppContext
from modules.serving.openai_api import create_api
from tests.conftest import make_settings

EXAMPLES = 50
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance,
          response_schema_conformance]


@pytest.fixture(scope="module")
def api_schema(tiny_causal_lm_dir, shared_cache):
    context = AppContext.create(make_settings(chat_model=str(tiny_causal_lm_dir), max_new_tokens=4),
                                shared_cache)
    return schemathesis.openapi.from_asgi("/openapi.json", create_api(context))


def operations(api_schema) -> list:
    return [result.ok() for result in api_schema.get_all_operations()]


@pytest.mark.parametrize("label", ["GET /models", "GET /models/{model_id}", "POST /chat/completions",
                                   "POST /completions"])
def test_v1_answers_within_its_schema(api_schema, label):
    """(schemathesis' own pytest plugin does not run under pytest 9: driven with hypothesis.)"""
    [operation] = [op for op in operations(api_schema) if op.label.replace(":path", "") == label]

    @settings(max_examples=EXAMPLES, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(operation.as_strategy())
    def answers_within_schema(case):
        case.call_and_validate(checks=CHECKS)

    answers_within_schema()


@pytest.mark.parametrize("label,body", [
    ("POST /chat/completions", {"messages": [{"role": "user", "content": "Hi"}], "stream": True}),
    ("POST /completions", {"prompt": "Hi", "stream": True}),
])
def test_a_streamed_answer_is_within_its_schema(api_schema, tiny_causal_lm_dir, label, body):
    """Every event of a stream, checked against the schema (the fuzzing reaches one by chance)."""
    [operation] = [op for op in operations(api_schema) if op.label == label]
    case = operation.Case(body={"model": str(tiny_causal_lm_dir), "max_tokens": 3, **body},
                          media_type="application/json")
    response = case.call_and_validate(checks=CHECKS)
    assert response.status_code == 200 and response.text.startswith("data: ")
