"""OpenAPI descriptions of /v1's requests and responses (served at /v1/openapi.json).

The handlers parse bodies themselves (so every mistake gets OpenAI's error shape and the
field's name); these JSON schemas describe the same contract for clients and for the
schemathesis fuzz test, which checks every answer against them."""

from __future__ import annotations

from typing import Any

NULLABLE_STRING = {"type": ["string", "null"]}
ERROR = {"type": "object", "required": ["error"], "properties": {"error": {
    "type": "object", "required": ["message", "type", "param", "code"],
    "properties": {"message": {"type": "string"}, "type": {"type": "string"},
                   "param": NULLABLE_STRING, "code": NULLABLE_STRING}}}}
USAGE = {"type": ["object", "null"], "required": ["prompt_tokens", "completion_tokens", "total_tokens"],
         "properties": {**{k: {"type": "integer", "minimum": 0}
                           for k in ("prompt_tokens", "completion_tokens", "total_tokens")},
                        "prompt_tokens_details": {"type": "object", "required": ["cached_tokens"], "properties": {
                            "cached_tokens": {"type": "integer", "minimum": 0}}}}}
TEXT_PART = {"type": "object", "required": ["type", "text"],
             "properties": {"type": {"const": "text"}, "text": {"type": "string"}}}
MESSAGE = {"type": "object", "required": ["role", "content"], "properties": {
    "role": {"enum": ["system", "user", "assistant", "developer"]},
    "content": {"anyOf": [{"type": "string"}, {"type": "array", "items": TEXT_PART}]}}}
SAMPLING = {
    "model": {"type": "string"},
    "max_tokens": {"type": ["integer", "null"], "minimum": 1},
    "max_completion_tokens": {"type": ["integer", "null"], "minimum": 1},
    "temperature": {"type": ["number", "null"], "minimum": 0, "maximum": 2},
    "top_p": {"type": ["number", "null"], "exclusiveMinimum": 0, "maximum": 1},
    "top_k": {"type": ["integer", "null"], "minimum": 0, "maximum": 1000},
    "repetition_penalty": {"type": ["number", "null"], "minimum": 0.5, "maximum": 2},
    "seed": {"type": ["integer", "null"], "minimum": 0, "maximum": 2**32 - 1},
    "stop": {"anyOf": [{"type": "string", "minLength": 1},
                       {"type": "array", "maxItems": 4, "items": {"type": "string", "minLength": 1}},
                       {"type": "null"}]},
    "presence_penalty": {"type": ["number", "null"], "const": 0},
    "frequency_penalty": {"type": ["number", "null"], "const": 0},
    "user": {"type": "string"},
    "stream": {"type": ["boolean", "null"]},
}
CHAT_REQUEST = {"type": "object", "required": ["messages"], "properties": {
    **SAMPLING,
    "messages": {"type": "array", "minItems": 1, "items": MESSAGE},
    "n": {"type": ["integer", "null"], "minimum": 1, "maximum": 4},
    "logprobs": {"type": ["boolean", "null"]},
    "top_logprobs": {"type": ["integer", "null"], "minimum": 0, "maximum": 20},
    "response_format": {"type": "object", "required": ["type"],
                        "properties": {"type": {"enum": ["text", "json_object", "json_schema"]}}},
}}
COMPLETION_REQUEST = {"type": "object", "required": ["prompt"], "properties": {
    **SAMPLING,
    "prompt": {"anyOf": [{"type": "string", "minLength": 1},
                         {"type": "array", "minItems": 1, "maxItems": 32,
                          "items": {"type": "string", "minLength": 1}}]},
    "echo": {"type": ["boolean", "null"]},
    "n": {"type": ["integer", "null"], "const": 1},
    "logprobs": {"type": ["integer", "null"], "minimum": 0, "maximum": 20},
}}
CHOICE_LOGPROBS = {"type": ["object", "null"]}
CHAT_COMPLETION = {"type": "object", "required": ["id", "object", "created", "model", "choices"],
                   "properties": {
    "object": {"const": "chat.completion"}, "model": {"type": "string"},
    "choices": {"type": "array", "items": {"type": "object", "required": [
        "index", "message", "finish_reason"], "properties": {
        "message": {"type": "object", "required": ["role", "content"],
                    "properties": {"role": {"const": "assistant"}, "content": {"type": "string"}}},
        "logprobs": CHOICE_LOGPROBS, "finish_reason": {"enum": ["stop", "length"]}}}},
    "usage": USAGE}}
TEXT_COMPLETION = {"type": "object", "required": ["id", "object", "created", "model", "choices"],
                   "properties": {
    "object": {"const": "text_completion"}, "model": {"type": "string"},
    "choices": {"type": "array", "items": {"type": "object", "required": [
        "index", "text", "finish_reason"], "properties": {
        "text": {"type": "string"}, "logprobs": CHOICE_LOGPROBS,
        "finish_reason": {"enum": ["stop", "length"]}}}},
    "usage": USAGE}}
MODEL = {"type": "object", "required": ["id", "object", "owned_by"],
         "properties": {"id": {"type": "string"}, "object": {"const": "model"}}}
MODEL_LIST = {"type": "object", "required": ["object", "data"],
              "properties": {"object": {"const": "list"}, "data": {"type": "array", "items": MODEL}}}
ERROR_STATUSES = (400, 401, 404, 429, 500, 503)


# Before Open API 3.2 an event stream's `schema` describes one event: its SSE fields, where
# `data` holds a JSON chunk (or "[DONE]").
SSE_EVENT = {"type": "object", "required": ["data"],
             "properties": {"data": {"type": "string"}, "event": {"type": "string"},
                            "id": {"type": "string"}}}


def responses(ok: dict[str, Any], streams: bool = False) -> dict[int | str, Any]:
    """FastAPI `responses=`: the 200 body (and event stream) and the error shape."""
    content: dict[str, Any] = {"application/json": {"schema": ok}}
    if streams:
        content["text/event-stream"] = {"schema": SSE_EVENT}
    return {200: {"description": "OK", "content": content},
            **{status: {"description": "Error, in OpenAI's shape",
                        "content": {"application/json": {"schema": ERROR}}}
               for status in ERROR_STATUSES}}


def request_body(schema: dict[str, Any]) -> dict[str, Any]:
    """FastAPI `openapi_extra=` for a JSON body the handler reads itself."""
    return {"requestBody": {"required": True,
                            "content": {"application/json": {"schema": schema}}}}
