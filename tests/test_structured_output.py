"""response_format by constrained decoding: replies parse and validate, every time.

The tiny test model has random weights, so only the constraint makes its replies JSON:
a reply that validates shows the constraint at work. Strings are bounded (maxLength, enums)
because random weights would otherwise fill a string up to max_tokens."""

from __future__ import annotations

import json

import jsonschema
import openai
import pytest

from tests.test_openai_api import API_KEY, running_app

NAME = {"type": "string", "maxLength": 8}
SCHEMAS = [
    {"type": "object", "properties": {"name": NAME}, "required": ["name"]},
    {"type": "object", "properties": {"age": {"type": "integer", "minimum": 0, "maximum": 120}},
     "required": ["age"]},
    {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"]},
    {"type": "object", "properties": {"color": {"enum": ["red", "green", "blue"]}},
     "required": ["color"]},
    {"type": "object", "properties": {"x": {"type": "number", "minimum": -1.5, "maximum": 2.5}},
     "required": ["x"]},
    {"type": "object", "properties": {"tags": {"type": "array", "items": NAME, "minItems": 1,
                                               "maxItems": 3}}, "required": ["tags"]},
    {"type": "object", "properties": {"user": {"type": "object", "properties": {
        "name": NAME, "role": {"enum": ["admin", "guest"]}}, "required": ["name", "role"]}},
     "required": ["user"]},
    {"type": "object", "properties": {"scores": {"type": "array", "items": {
        "type": "integer", "minimum": 1, "maximum": 5}, "maxItems": 4}}, "required": ["scores"]},
    {"type": "object", "properties": {"kind": {"const": "point"}, "at": {"type": "array",
     "prefixItems": [{"type": "integer"}, {"type": "integer"}], "items": False}},
     "required": ["kind", "at"]},
    {"type": "object", "properties": {"value": {"anyOf": [{"type": "integer"}, {"type": "null"}]}},
     "required": ["value"]},
    {"type": "object", "properties": {"code": {"type": "string", "pattern": "^[A-Z]{3}[0-9]{2}$"}},
     "required": ["code"]},
    {"type": "object", "properties": {"a": {"type": "object", "properties": {"b": {
        "type": "object", "properties": {"c": {"type": "integer", "exclusiveMinimum": 0,
                                               "exclusiveMaximum": 10}}, "required": ["c"]}},
        "required": ["b"]}}, "required": ["a"]},
    {"type": "object", "properties": {"items": {"type": "array", "maxItems": 2, "items": {
        "type": "object", "properties": {"id": {"type": "integer"}, "label": NAME},
        "required": ["id", "label"]}}}, "required": ["items"]},
    {"type": "object", "$defs": {"pt": {"type": "object", "properties": {
        "x": {"type": "integer"}, "y": {"type": "integer"}}, "required": ["x", "y"]}},
     "properties": {"start": {"$ref": "#/$defs/pt"}, "end": {"$ref": "#/$defs/pt"}},
     "required": ["start", "end"]},
    {"type": "object", "properties": {"level": {"enum": [1, 2, 3]}, "note": NAME},
     "required": ["level"]},
    {"type": "object", "properties": {"ratio": {"type": "number", "minimum": 0, "maximum": 1}},
     "required": ["ratio"]},
    {"type": "object", "properties": {"flags": {"type": "array", "items": {"type": "boolean"},
                                                "minItems": 2, "maxItems": 2}},
     "required": ["flags"]},
    {"type": "object", "properties": {"name": NAME, "email": {"type": "string", "maxLength": 12}},
     "required": ["name", "email"], "additionalProperties": False},
    {"type": "object", "properties": {"matrix": {"type": "array", "maxItems": 2, "items": {
        "type": "array", "maxItems": 2, "items": {"type": "integer", "minimum": 0, "maximum": 9}}}},
     "required": ["matrix"]},
    {"type": "object", "properties": {"answer": {"enum": ["yes", "no"]},
                                      "confidence": {"type": "integer", "minimum": 0, "maximum": 100},
                                      "reasons": {"type": "array", "items": NAME, "maxItems": 2}},
     "required": ["answer", "confidence", "reasons"]},
]


@pytest.fixture(scope="module")
def client(tiny_causal_lm_dir, shared_cache):
    with running_app(shared_cache, chat_model=str(tiny_causal_lm_dir), api_key=API_KEY) as (url, _, _):
        yield openai.OpenAI(base_url=url + "/v1", api_key=API_KEY, max_retries=0, timeout=120)


def ask(client, model: str, response_format: dict, seed: int, **options):
    return client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "Describe it in JSON."}],
        max_tokens=200, temperature=1.0, seed=seed, response_format=response_format, **options)


@pytest.mark.parametrize("index", range(len(SCHEMAS)))
def test_every_reply_parses_and_validates(client, tiny_ref, index):
    schema = SCHEMAS[index]
    jsonschema.Draft202012Validator.check_schema(schema)
    reply = ask(client, tiny_ref, {"type": "json_schema",
                                   "json_schema": {"name": f"s{index}", "schema": schema}}, index)
    assert reply.choices[0].finish_reason == "stop"
    jsonschema.validate(json.loads(reply.choices[0].message.content), schema)


def test_json_object_streamed_with_logprobs(client, tiny_ref):
    schema = SCHEMAS[6]
    chunks = list(client.chat.completions.create(
        model=tiny_ref, messages=[{"role": "user", "content": "JSON please"}], max_tokens=200,
        temperature=0.8, seed=1, stream=True, logprobs=True,
        response_format={"type": "json_schema", "json_schema": {"name": "u", "schema": schema}}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks)
    jsonschema.validate(json.loads(text), schema)
    tokens = [t for c in chunks for t in (c.choices[0].logprobs.content or [])]
    # logprobs of the constrained tokens; a character split over tokens is whole in their bytes
    assert b"".join(bytes(t.bytes) for t in tokens).decode() == text


def test_json_object_mode_gives_an_object(client):
    from modules.config import EMBEDDED_MODEL

    reply = client.chat.completions.create(
        model=EMBEDDED_MODEL, max_tokens=80, temperature=0,
        messages=[{"role": "user", "content": "Give the capital of France as JSON with a key 'capital'."}],
        response_format={"type": "json_object"})
    assert isinstance(json.loads(reply.choices[0].message.content), dict)


@pytest.mark.parametrize("schema, part", [
    ({"type": "object", "properties": {"tags": {"type": "array", "uniqueItems": True}}},
     "'uniqueItems' at $.properties.tags"),
    ({"type": "object", "not": {"type": "string"}}, "'not' at $"),
    ({"type": "integer", "multipleOf": 3}, "'multipleOf' at $"),
    ({"anyOf": [{"type": "string", "format": "email"}]}, "'format' at $.anyOf[0]"),
])
def test_an_unsupported_schema_is_400_naming_the_part(client, tiny_ref, schema, part):
    with pytest.raises(openai.BadRequestError) as caught:
        ask(client, tiny_ref, {"type": "json_schema", "json_schema": {"name": "x", "schema": schema}}, 0)
    assert caught.value.param == "response_format" and part in caught.value.message
