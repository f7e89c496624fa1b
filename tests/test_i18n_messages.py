"""Errors and status lines built by the tasks: Chinese on the page (the reader's language, through
the UI's adapters), English for the API (str(), and the /v1 error body whatever the client's
language)."""

from __future__ import annotations

import contextlib

import gradio as gr
import httpx
import pytest
from gradio.context import LocalContext

from modules.app_context import AppContext
from modules.engine.model_refs import parse_model_ref
from modules.errors import InvalidInputError, InvalidModelError
from modules.messages import message, text
from modules.serving.launch import create_app, serve_in_thread
from modules.tasks import next_token as nt
from modules.tasks.chat import validate_messages
from modules.tasks.chat.prompt import PreparedPrompt
from modules.ui.chat import display
from modules.ui.errors import shows_user_errors
from modules.ui.i18n import COOKIE, in_reader_language
from modules.ui.layout import build_demo
from tests.conftest import make_settings

CHINESE_READER = {"accept-language": "zh-CN,zh;q=0.9"}
NOT_DOWNLOADED = "nobody-here/not-downloaded-model"


@contextlib.contextmanager
def reading(headers: dict[str, str]):
    """Code run as if serving a page request with these headers."""
    token = LocalContext.request.set(gr.Request(headers=headers))
    try:
        yield
    finally:
        LocalContext.request.reset(token)


def toast_of(task, *args) -> str:
    """The red toast the page shows when `task(*args)` fails, through the one UI adapter."""
    with pytest.raises(gr.Error) as caught:
        shows_user_errors(task)(*args)
    return caught.value.message


def test_a_sampling_error_is_chinese_on_the_page_and_english_for_the_api():
    bad = nt.SamplingSettings(temperature=-1.0)
    with reading(CHINESE_READER):
        chinese = toast_of(bad.validated)
    assert chinese.startswith("温度必须大于 0") and "-1.0" in chinese
    with pytest.raises(InvalidInputError) as caught:
        bad.validated()
    assert str(caught.value) == f"Temperature must be above 0 and at most {nt.MAX_TEMPERATURE:g} (got -1.0)."


def test_a_model_name_error_is_chinese_throughout_including_its_nested_hint():
    with reading(CHINESE_READER):
        chinese = toast_of(parse_model_ref, "")
    assert chinese.startswith("没有给出模型。") and "本地模型文件夹" in chinese
    with pytest.raises(InvalidModelError) as caught:
        parse_model_ref("")
    assert str(caught.value).startswith("No model given. Use a Hub id like")


def test_a_chat_error_follows_the_switch_over_the_browser():
    empty = [{"role": "user", "content": "  "}]
    with reading({"accept-language": "en-US", "cookie": f"{COOKIE}=zh-CN"}):
        assert toast_of(validate_messages, empty) == text("chat.message_empty", "zh-CN")
    with reading({"accept-language": "zh-CN", "cookie": f"{COOKIE}=en"}):
        assert toast_of(validate_messages, empty) == "The message is empty: type something first."


def test_the_stats_line_and_context_meter_read_in_the_readers_language():
    stats = {"completion_tokens": 20, "tokens_per_s": 40.0, "first_token_s": 0.25, "finish": "length"}
    history = [{"role": "assistant", "content": "x",
                "stats": {"prompt_tokens": 100, "completion_tokens": 20, "context_window": 1000}}]
    with reading(CHINESE_READER):
        assert display.stats_line(stats) == "20 个词元 · 40.0 词元/秒 · 首词元 0.25 秒 · 结束：length"
        assert display.context_meter(history) == "上下文：120 / 1,000 个词元（12 %）"
        assert "首词元 0.25 秒 · 提示中 1,500 个词元来自缓存 · 结束" in display.stats_line({**stats, "cached_tokens": 1500})
    assert display.stats_line(stats) == "20 tokens · 40.0 tok/s · first token 0.25 s · finish: length"
    assert display.context_meter(history) == "Context: 120 / 1,000 tokens (12 %)"


def test_a_notice_is_an_english_string_that_the_page_renders_in_chinese():
    notice = PreparedPrompt([1, 2], dropped_turns=3, max_new_tokens=8).notice
    assert notice == "Dropped the 3 oldest turns to fit the context window."  # a str: API header
    assert isinstance(notice, str)
    with reading(CHINESE_READER):
        assert in_reader_language(notice) == "为了放进上下文窗口，删去了最早的 3 轮对话。"
    assert in_reader_language("a plain note") == "a plain note"


def test_a_status_message_nested_in_another_renders_in_one_language():
    loading = message("models.loading", model="org/model").english()
    line = message("app.loading", status=loading, seconds="3")
    assert str(line) == "⏳ Loading org/model… (3 s)"
    assert line.text("zh-CN") == "⏳ 正在加载 org/model…（3 秒）"


@pytest.fixture(scope="module")
def api_url(tiny_causal_lm_dir, shared_cache):
    settings = make_settings(chat_model=str(tiny_causal_lm_dir), extra_chat_models=(NOT_DOWNLOADED,))
    context = AppContext.create(settings, shared_cache)
    with serve_in_thread(create_app(build_demo(context), context)) as url:
        yield url + "/v1"


@pytest.mark.parametrize("headers", [CHINESE_READER, {"cookie": f"{COOKIE}=zh-CN"}])
def test_the_api_answers_in_english_whatever_the_clients_language(api_url, tiny_causal_lm_dir, headers):
    empty = {"model": str(tiny_causal_lm_dir), "messages": [{"role": "user", "content": "  "}]}
    response = httpx.post(f"{api_url}/chat/completions", json=empty, headers=headers, timeout=60)
    assert response.status_code == 400
    assert response.json()["error"]["message"] == "The message is empty: type something first."
    offline = {"model": NOT_DOWNLOADED, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}
    response = httpx.post(f"{api_url}/chat/completions", json=offline, headers=headers, timeout=60)
    assert response.status_code == 503
    assert "is not on this machine" in response.json()["error"]["message"]
