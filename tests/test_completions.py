"""POST /v1/completions with the official `openai` client: raw prompts, echo, legacy logprobs.

The loglikelihood requests are the ones lm-evaluation-harness's `local-completions` sends
(`echo=True`, `logprobs=1`, `max_tokens` 1 with text or token-id prompts)."""

from __future__ import annotations

import openai
import pytest

from modules.tasks.chat import GenerationParams
from modules.tasks.chat.generation import stream_prompt
from modules.tasks.completion import prepare_raw_prompt
from modules.tasks.next_token import prefill
from tests.test_openai_api import API_KEY, NOT_DOWNLOADED, running_app

TEXT = "The cat sat on the mat"


@pytest.fixture(scope="module")
def client(tiny_causal_lm_dir, shared_cache):
    with running_app(shared_cache, chat_model=str(tiny_causal_lm_dir), api_key=API_KEY,
                     extra_chat_models=(NOT_DOWNLOADED,)) as (url, _, _):
        yield openai.OpenAI(base_url=url + "/v1", api_key=API_KEY, max_retries=0, timeout=120)


def test_loglikelihood_request_scores_every_prompt_token(client, tiny_ref, tiny_model):
    reply = client.completions.create(model=tiny_ref, prompt=TEXT, echo=True, max_tokens=1,
                                      logprobs=1, temperature=0)
    logprobs = reply.choices[0].logprobs
    ids = tiny_model.tokenizer(TEXT)["input_ids"]
    explorer = prefill(tiny_model, ids).token_logprobs  # the explorer's own numbers
    assert reply.choices[0].text.startswith(TEXT)
    assert len(logprobs.token_logprobs) == len(ids) + 1  # prompt, then the one new token
    assert logprobs.token_logprobs[0] is None
    assert logprobs.token_logprobs[1:len(ids)] == pytest.approx(explorer[1:], abs=1e-4)
    assert "".join(logprobs.tokens) == reply.choices[0].text
    assert all(len(top) == 1 for top in logprobs.top_logprobs[1:])
    assert logprobs.text_offset == sorted(logprobs.text_offset)
    assert reply.usage.prompt_tokens == len(ids) and reply.usage.completion_tokens == 1


def test_token_id_prompts_and_max_tokens_zero_score_without_generating(client, tiny_ref, tiny_model):
    ids = tiny_model.tokenizer(TEXT)["input_ids"]
    reply = client.completions.create(model=tiny_ref, prompt=[ids, ids[:3]], echo=True,
                                      max_tokens=0, logprobs=0)
    first, second = reply.choices
    assert [first.index, second.index] == [0, 1]
    assert len(first.logprobs.token_logprobs) == len(ids)
    assert second.logprobs.token_logprobs[0] is None  # (bf16 kernels: other lengths, other roundings)
    assert first.logprobs.token_logprobs[1:3] == pytest.approx(second.logprobs.token_logprobs[1:], abs=0.05)
    assert first.finish_reason == "length" and reply.usage.completion_tokens == 0
    assert reply.usage.prompt_tokens == len(ids) + 3


def test_generation_matches_the_chat_logic_streamed_and_not(client, tiny_ref, tiny_model):
    reply = client.completions.create(model=tiny_ref, prompt=TEXT, max_tokens=6, temperature=0,
                                      logprobs=2)
    prompt = prepare_raw_prompt(tiny_model, TEXT, 6)
    local = list(stream_prompt(tiny_model, prompt, GenerationParams(max_new_tokens=6, temperature=0)))[-1]
    assert reply.object == "text_completion"
    assert reply.choices[0].text == local.text
    assert reply.usage.completion_tokens == local.usage.completion_tokens
    logprobs = reply.choices[0].logprobs
    for chosen, top in zip(logprobs.token_logprobs, logprobs.top_logprobs, strict=True):
        assert 1 <= len(top) <= 2  # keyed by text: two tokens may read alike
        assert max(top.values()) == pytest.approx(chosen)  # greedy took the likeliest
    chunks = list(client.completions.create(model=tiny_ref, prompt=TEXT, max_tokens=6,
                                            temperature=0, stream=True,
                                            stream_options={"include_usage": True}))
    assert "".join(c.choices[0].text for c in chunks if c.choices) == local.text
    assert chunks[-1].usage.completion_tokens == local.usage.completion_tokens
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == reply.choices[0].finish_reason


def test_echo_without_logprobs_returns_prompt_and_continuation(client, tiny_ref):
    reply = client.completions.create(model=tiny_ref, prompt=TEXT, echo=True, max_tokens=3,
                                      temperature=0)
    assert reply.choices[0].text.startswith(TEXT) and reply.choices[0].logprobs is None


@pytest.mark.parametrize("options, param", [
    ({"max_tokens": 0}, "max_tokens"),  # nothing to do without echo
    ({"logprobs": 21}, "logprobs"),
    ({"suffix": "end"}, "suffix"),
    ({"n": 2}, "n"),
    ({"prompt": []}, "prompt"),
    ({"prompt": [[10**9]]}, "prompt"),
    ({"presence_penalty": 1}, "presence_penalty"),
])
def test_bad_completion_requests_are_400_naming_the_field(client, tiny_ref, options, param):
    request = {"model": tiny_ref, "prompt": TEXT, "max_tokens": 2, **options}
    with pytest.raises(openai.BadRequestError) as caught:
        client.completions.create(**request)
    assert caught.value.param == param and caught.value.message


def test_a_raw_prompt_sent_again_reports_its_cached_tokens(client, embedded_chat_model):
    """Raw prompts share the chat's prefix cache: the usage says how much of one was cached,
    streamed or not, and a two-prompt request adds both up."""
    from modules.config import EMBEDDED_MODEL
    from modules.engine.kernels import native_step
    from tests.conftest import make_settings

    if native_step.builder.wait(make_settings().cache_dir) is None:
        pytest.skip(f"the native step is not built here: {native_step.builder.error}")
    prompt = "Completions test: the three primary colours are"
    first = client.completions.create(model=EMBEDDED_MODEL, prompt=prompt, max_tokens=3, temperature=0)
    if not native_step.prompt_applies(embedded_chat_model.model, first.usage.prompt_tokens):
        pytest.skip("prompts this long are read by the dense matmul on this CPU: no prefix is reused")
    again = list(client.completions.create(model=EMBEDDED_MODEL, prompt=prompt, max_tokens=3, temperature=0,
                                           stream=True, stream_options={"include_usage": True}))[-1]
    both = client.completions.create(model=EMBEDDED_MODEL, prompt=[prompt, prompt], max_tokens=3, temperature=0)
    assert again.usage.prompt_tokens_details.cached_tokens == first.usage.prompt_tokens - 1
    assert both.usage.prompt_tokens_details.cached_tokens == 2 * (first.usage.prompt_tokens - 1)
