"""The translation tab as a client sees it: `/translate` and `/translate_batch` through
gradio_client, on the tiny random Marian model (gibberish, so structure is checked)."""

from __future__ import annotations

import csv

import pytest
import torch
from gradio_client import Client

from modules.app_context import AppContext
from modules.ui.layout import build_demo
from tests.conftest import free_port, make_settings

NOT_CACHED = "Helsinki-NLP/opus-mt-xx-yy"



@pytest.fixture(scope="module")
def app(tiny_marian_dir, shared_cache):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny model; threads only contend on a busy CPU
    models = {"zh-en": str(tiny_marian_dir), "en-zh": str(tiny_marian_dir), "ja-en": NOT_CACHED}
    demo = build_demo(AppContext.create(make_settings(translation_models=models), shared_cache))
    demo.launch(prevent_thread_lock=True, server_name="127.0.0.1", server_port=free_port(),
                quiet=True)
    yield demo
    demo.close()
    torch.set_num_threads(threads)


@pytest.fixture
def client(app):
    return Client(app.local_url, verbose=False)


def handler(demo, name):
    return next(f.fn for f in demo.fns.values() if f.fn is not None and f.fn.__name__ == name)


def test_translate_endpoint_keeps_line_structure(client):
    text = "今天天气很好。我们去公园散步吧！\n\nHello, how are you today?"
    result = client.predict(text, "zh-en", api_name="/translate")
    lines = result.split("\n")
    assert len(lines) == 3 and lines[0] and lines[1] == "" and lines[2]


def test_blank_text_gives_empty_output(client):
    assert client.predict("  \n ", "zh-en", api_name="/translate") == ""


def test_missing_model_is_one_clear_message_and_server_keeps_serving(client):
    with pytest.raises(Exception, match="PLAYGROUND_TRANSLATION_JA_EN") as caught:
        client.predict("こんにちは。", "ja-en", api_name="/translate")
    assert "Traceback" not in str(caught.value)
    with pytest.raises(Exception, match="PLAYGROUND_TRANSLATION_KO_EN"):
        client.predict("안녕하세요.", "ko-en", api_name="/translate")
    assert client.predict("你好。", "zh-en", api_name="/translate")


def test_batch_endpoint_returns_rows_and_a_csv(client):
    table, csv_path = client.predict(
        "你好。\n\nHello, how are you today?\n🎉", None, "zh-en", api_name="/translate_batch"
    )
    rows = table["data"]
    assert [row[0] for row in rows] == ["你好。", "Hello, how are you today?", "🎉"]
    assert rows[2][1] == "🎉" and all(row[1] for row in rows)
    with open(csv_path, encoding="utf-8-sig", newline="") as file:  # a BOM, for Excel
        assert list(csv.reader(file)) == [["source", "translation"], *rows]
    empty_table, no_file = client.predict(" \n ", None, "zh-en", api_name="/translate_batch")
    assert empty_table["data"] in ([], [["", ""]]) and no_file is None


def test_swap_reverses_direction_and_texts(app):
    swap = handler(app, "swap_direction")
    assert swap("zh-en", "你好", "hello") == ("en-zh", "hello", "你好")
    direction, *_ = swap("zh-en", "你好", "")
    assert direction == "en-zh"
    with pytest.warns(UserWarning, match="PLAYGROUND_TRANSLATION_EN_JA"):
        swap("ja-en", "こんにちは", "hello")
