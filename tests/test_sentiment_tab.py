"""The sentiment tab through its public API, as a client would use it."""

from __future__ import annotations

import csv

import pytest
from gradio_client import Client, handle_file

from modules.app_context import AppContext
from modules.config import EMBEDDED_MODEL
from modules.ui.layout import build_demo
from modules.ui.sentiment_tab import CLASSIFIER, ZERO_SHOT
from tests.conftest import free_port, make_settings



@pytest.fixture(scope="module")
def served(shared_cache, tiny_distilbert_dir, tiny_causal_lm_dir):
    settings = make_settings(
        sentiment_model=str(tiny_distilbert_dir), chat_model=str(tiny_causal_lm_dir)
    )
    demo = build_demo(AppContext.create(settings, shared_cache))
    demo.launch(
        server_name="127.0.0.1", server_port=free_port(), prevent_thread_lock=True,
        quiet=True,
    )
    try:
        yield Client(demo.local_url, verbose=False), str(tiny_distilbert_dir)
    finally:
        demo.close()


def _confidences(label_output: dict) -> dict[str, float]:
    return {c["label"]: c["confidence"] for c in label_output["confidences"]}


def test_sentiment_endpoint_returns_all_labels_and_an_explanation(served):
    client, model = served
    scores, why, notice = client.predict(
        "The service was slow and the room was dirty.", CLASSIFIER, model, "", True, True,
        api_name="/sentiment",
    )
    confidences = _confidences(scores)
    assert set(confidences) == {"NEGATIVE", "POSITIVE"}
    assert sum(confidences.values()) == pytest.approx(1.0, abs=1e-4)
    assert scores["label"] == max(confidences, key=confidences.get)
    words = [piece for piece in why if piece["token"].strip()]
    assert [w["token"] for w in words] == "The service was slow and the room was dirty.".split()
    assert all(isinstance(w["class_or_confidence"], float) for w in words)


def test_bad_input_gives_a_clear_error_and_the_server_keeps_serving(served):
    client, model = served
    with pytest.raises(Exception, match="Type or paste some text"):
        client.predict("   ", CLASSIFIER, model, "", True, True, api_name="/sentiment")
    with pytest.raises(Exception, match="at least two labels"):
        client.predict("Nice!", ZERO_SHOT, model, "positive", True, True, api_name="/sentiment")
    with pytest.raises(Exception, match="not a valid model id|not found"):
        client.predict("Nice!", CLASSIFIER, "no such model!!", "", True, True, api_name="/sentiment")
    scores, _, _ = client.predict("Nice!", CLASSIFIER, model, "", True, False, api_name="/sentiment")
    assert set(_confidences(scores)) == {"NEGATIVE", "POSITIVE"}


def test_zero_shot_through_the_api_uses_the_chat_model(served):
    client, model = served
    scores, why, notice = client.predict(
        "Please add a dark mode.", ZERO_SHOT, model, "bug report, feature request, praise",
        True, True, api_name="/sentiment",
    )
    confidences = _confidences(scores)
    assert set(confidences) == {"bug report", "feature request", "praise"}
    assert sum(confidences.values()) == pytest.approx(1.0, abs=1e-4)
    assert "Before calibration" in notice
    assert why is None  # word importance is a classifier-mode feature
    scores, why, notice = client.predict(
        "Please add a dark mode.", ZERO_SHOT, model, "bug report, feature request, praise",
        False, True, api_name="/sentiment",
    )
    assert len(_confidences(scores)) == 3 and why is None and "calibration" not in notice


def test_batch_endpoint_with_a_csv_file(served, tmp_path):
    client, model = served
    source = tmp_path / "in.csv"
    texts = ["I loved it.", "Terrible, never again.", "It is a chair.", "Great value!"]
    with source.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["n", "comment"])
        writer.writerows(enumerate(texts))
    table, chart, download = client.predict(
        "", handle_file(str(source)), "comment", CLASSIFIER, model, "", True,
        api_name="/sentiment_batch",
    )
    assert [row[0] for row in table["data"]] == texts
    assert {row[1] for row in table["data"]} <= {"NEGATIVE", "POSITIVE"}
    with open(download, encoding="utf-8", newline="") as handle:
        rows = list(csv.reader(handle))
    assert rows[0] == ["text", "label", "score"]
    assert [r[:2] for r in rows[1:]] == [row[:2] for row in table["data"]]
    bad = tmp_path / "latin1.csv"
    bad.write_bytes("text\nCafé crème\n".encode("cp1252"))
    with pytest.raises(Exception, match="not UTF-8"):
        client.predict("", handle_file(str(bad)), "", CLASSIFIER, model, "", True,
                       api_name="/sentiment_batch")


def test_offline_without_the_classifier_preselects_zero_shot():
    demo = build_demo(AppContext.create(make_settings(chat_model=EMBEDDED_MODEL)))  # default classifier not cached
    radios = [b for b in demo.blocks.values() if getattr(getattr(b, "label", None), "key", None) == "sentiment.mode"]
    assert [r.value for r in radios] == [ZERO_SHOT]
    notes = [b.value for b in demo.blocks.values() if getattr(b, "elem_id", None) == "sentiment-mode-note"]
    assert "zero-shot" in notes[0] and "not on this machine" in notes[0]
