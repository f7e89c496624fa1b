"""JSON replies by constrained decoding (`response_format`), with xgrammar.

xgrammar compiles a JSON schema against the model's tokenizer into a grammar, and its
transformers LogitsProcessor masks every token that would break it, so the reply parses
and validates whatever the weights say (even a random test model's). It is what vLLM and
SGLang use by default. Measured against outlines and lm-format-enforcer in
benchmarks/structured_output.py: lm-format-enforcer 0.11.3 does not import with
transformers 5 (it needs `transformers.tokenization_utils`), outlines works but its mask
costs more per token; see docs/openai_api.md for the figures.

A schema keyword outside `SUPPORTED_KEYWORDS` is refused with InvalidParameterError naming
its place (`$.properties.tags.uniqueItems`): xgrammar would ignore some of them, and the
reply would then not validate. Replies are compact (no free whitespace), so a model cannot
spend its tokens on spaces.
"""

from __future__ import annotations

import json
import threading
import weakref
from typing import Any

from transformers import LogitsProcessor

from modules.engine.model_cache import LoadedModel
from modules.errors import InvalidParameterError

PARAM = "response_format"
SUPPORTED_KEYWORDS = frozenset({
    "type", "properties", "required", "items", "prefixItems", "enum", "const",
    "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "minLength", "maxLength",
    "minItems", "maxItems", "additionalProperties", "anyOf", "$ref", "$defs", "definitions",
    "title", "description", "default", "examples", "pattern", "$schema", "$id", "strict",
})
# A JSON string's characters that need no escape (a regex, written as JSON would write it).
STRING_CHARACTERS = r'^[^"\\\u0000-\u001f]'
SCHEMA_MAPS = ("properties", "$defs", "definitions")  # keyword -> {name: schema}
SCHEMA_LISTS = ("anyOf", "prefixItems")  # keyword -> [schema, ...]
_compilers: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # tokenizer -> compiler
_compilers_lock = threading.Lock()


def json_constraint(loaded: LoadedModel, response_format: Any) -> LogitsProcessor | None:
    """A LogitsProcessor that keeps the reply to `response_format`; None for plain text.

    {"type": "json_object"}: any JSON object. {"type": "json_schema", "json_schema":
    {"name", "schema", "strict"}}: that schema. Anything else: InvalidParameterError."""
    schema = schema_for(response_format)
    if schema is None:
        return None
    try:
        import xgrammar as xgr
    except ImportError:
        raise InvalidParameterError(PARAM, "JSON output needs xgrammar on the server: "
                                    "pip install --no-deps -r requirements-embedded.txt") from None

    try:
        compiled = _compiler(loaded).compile_json_schema(
            json.dumps(compilable(schema)), any_whitespace=False,
            strict_mode=response_format.get("type") == "json_schema")
    except Exception as error:  # xgrammar's own refusal, e.g. a $ref it cannot resolve
        raise InvalidParameterError(
            PARAM, f"response_format: the schema cannot be compiled: {str(error)[:200]}") from None
    return xgr.contrib.hf.LogitsProcessor(compiled)


def schema_for(response_format: Any) -> dict[str, Any] | None:
    """The JSON schema `response_format` asks for (None for text), checked."""
    if response_format is None:
        return None
    kind = response_format.get("type") if isinstance(response_format, dict) else None
    if kind == "text":
        return None
    if kind == "json_object":
        return {"type": "object"}
    if kind != "json_schema":
        raise InvalidParameterError(
            PARAM, "response_format.type must be 'text', 'json_object' or 'json_schema'.")
    spec = response_format.get("json_schema")
    schema = spec.get("schema") if isinstance(spec, dict) else None
    if not isinstance(schema, dict):
        raise InvalidParameterError(
            PARAM, "response_format.json_schema.schema must be a JSON schema object.")
    check_schema(schema)
    return schema


def check_schema(schema: Any, where: str = "$") -> None:
    """Refuse keywords constrained decoding would not enforce, naming where they are."""
    if isinstance(schema, bool):
        return
    if not isinstance(schema, dict):
        raise InvalidParameterError(PARAM, f"response_format: {where} must be a schema object.")
    for keyword, value in schema.items():
        if keyword not in SUPPORTED_KEYWORDS:
            raise InvalidParameterError(
                PARAM, f"response_format: '{keyword}' at {where} is not supported by constrained "
                "decoding here (supported: " + ", ".join(sorted(SUPPORTED_KEYWORDS)) + ").")
        if keyword in SCHEMA_MAPS and isinstance(value, dict):
            for name, sub in value.items():
                check_schema(sub, f"{where}.{keyword}.{name}")
        elif keyword in SCHEMA_LISTS and isinstance(value, list):
            for index, sub in enumerate(value):
                check_schema(sub, f"{where}.{keyword}[{index}]")
        elif keyword in ("items", "additionalProperties") and isinstance(value, (dict, bool)):
            check_schema(value, f"{where}.{keyword}")


def compilable(schema: Any) -> Any:
    """The schema as handed to xgrammar: a length-bounded string without a pattern gets one.

    xgrammar 0.2.9 compiles such a string to `[^"\\\r\n]{m,n}`, which lets raw control
    characters through (invalid JSON); the pattern `[^"\\\x00-\x1f]{m,n}` keeps the same
    lengths and only characters JSON allows unescaped."""
    if isinstance(schema, list):
        return [compilable(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    copy = {key: compilable(value) for key, value in schema.items()}
    bounded = "minLength" in copy or "maxLength" in copy
    if copy.get("type") == "string" and bounded and "pattern" not in copy:
        low, high = copy.get("minLength", 0), copy.get("maxLength", "")
        copy["pattern"] = STRING_CHARACTERS + "{" + f"{low},{high}" + "}$"
    return copy


def _compiler(loaded: LoadedModel):
    """One compiler per tokenizer (building its token table takes about a second)."""
    import xgrammar as xgr

    with _compilers_lock:
        compiler = _compilers.get(loaded.tokenizer)
        if compiler is None:
            info = xgr.TokenizerInfo.from_huggingface(
                loaded.tokenizer, vocab_size=loaded.model.config.vocab_size,
                stop_token_ids=loaded.end_token_ids())
            compiler = _compilers[loaded.tokenizer] = xgr.GrammarCompiler(info, max_threads=1)
        return compiler


