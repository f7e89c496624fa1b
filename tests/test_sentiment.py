"""Classifier mode on a tiny random DistilBERT: scores, windows, occlusion, batches, CSV."""

from __future__ import annotations

import csv

import pytest
import torch

from modules.tasks import sentiment
from modules.errors import InvalidInputError, InvalidModelError, ModelOfflineError
from modules.engine.model_cache import ModelCache
from tests.conftest import make_settings

LABELS = {"NEGATIVE", "POSITIVE"}
SENTENCES = [
    "This movie was wonderful and I loved every minute of it.",
    "The service was slow and the room was dirty.",
    "I think the food at this restaurant is great.",
    "The weather is nice today.",
]


@pytest.fixture(scope="module")
def classifier(shared_cache, tiny_distilbert_dir):
    return sentiment.load_classifier(shared_cache, str(tiny_distilbert_dir))


def _first_window_probs(classifier, text: str) -> torch.Tensor:
    batch = classifier.tokenizer(text, truncation=True, max_length=512, return_tensors="pt")
    with torch.inference_mode():
        return torch.softmax(classifier.model(**batch.to(classifier.device)).logits.float(), -1)[0].cpu()


def test_scores_cover_all_labels_and_sum_to_one(classifier):
    result = sentiment.classify_text(classifier, SENTENCES[0])
    assert set(result.scores) == LABELS
    assert sum(result.scores.values()) == pytest.approx(1.0, abs=1e-5)
    assert result.label == max(result.scores, key=result.scores.get)
    assert result.notice is None


def test_batch_keeps_order_and_matches_one_by_one(classifier):
    texts = SENTENCES + ["Short.", SENTENCES[1]]
    batched = sentiment.classify(classifier, texts, batch_texts=4)
    assert len(batched) == len(texts)
    for text, result in zip(texts, batched):
        alone = sentiment.classify_text(classifier, text)
        for label in LABELS:
            assert result.scores[label] == pytest.approx(alone.scores[label], abs=1e-5)
    # the random model does tell the texts apart, so order mistakes would show
    assert len({round(r.scores["POSITIVE"], 6) for r in batched[:4]}) == 4


def test_long_text_is_split_and_averaged_not_cut(classifier):
    long_text = "I loved it, wonderful. " * 150 + "The service was slow and the room was dirty. " * 150
    result = sentiment.classify_text(classifier, long_text)
    assert result.notice and "split into" in result.notice and "512-token" in result.notice
    assert sum(result.scores.values()) == pytest.approx(1.0, abs=1e-5)
    first = _first_window_probs(classifier, long_text)
    labels = [classifier.model.config.id2label[i] for i in range(2)]
    truncated = dict(zip(labels, first.tolist()))
    # the second half of the text counts: the result is not the first window's
    assert abs(result.scores["POSITIVE"] - truncated["POSITIVE"]) > 1e-3


def test_explanation_covers_each_word(classifier):
    text = "  The   service was slow,\nbut the  staff were kind!  "
    explanation = sentiment.explain(classifier, text)
    assert "".join(piece for piece, _ in explanation.pieces) == text
    words = [(piece, effect) for piece, effect in explanation.pieces if piece.strip()]
    assert [w for w, _ in words] == text.split()
    assert all(isinstance(effect, float) and -1 <= effect <= 1 for _, effect in words)
    assert max(abs(effect) for _, effect in words) == pytest.approx(1.0)
    assert explanation.label == sentiment.classify_text(classifier, " ".join(text.split())).label
    assert explanation.notice is None


def test_explanation_effect_is_what_removing_the_word_does(classifier):
    text = SENTENCES[0]
    explanation = sentiment.explain(classifier, text)
    words = [(p, e) for p, e in explanation.pieces if p.strip()]
    strongest = max(range(len(words)), key=lambda i: words[i][1])
    without = " ".join(w for i, (w, _) in enumerate(words) if i != strongest)
    full = sentiment.classify_text(classifier, text).scores[explanation.label]
    dropped = sentiment.classify_text(classifier, without).scores[explanation.label]
    assert (full - dropped) * words[strongest][1] > 0  # same direction as the colour


def test_explanation_of_long_text_says_what_it_covers(classifier):
    text = "good day " * 400
    explanation = sentiment.explain(classifier, text)
    scored = [e for p, e in explanation.pieces if p.strip() and e is not None]
    unscored = [p for p, e in explanation.pieces if p.strip() and e is None]
    assert scored and unscored and len(scored) + len(unscored) == 800
    assert "first" in explanation.notice and "groups of" in explanation.notice


@pytest.mark.parametrize("text", ["", "   \n\t", None])
def test_empty_text_is_refused(classifier, text):
    with pytest.raises(InvalidInputError, match="text"):
        sentiment.classify(classifier, [text])
    with pytest.raises(InvalidInputError):
        sentiment.explain(classifier, text)


def test_odd_characters_are_classified(classifier):
    odd = "😀 مرحبا\u200b <script> [CLS] [SEP] \x07 ok"
    result = sentiment.classify_text(classifier, odd)
    assert set(result.scores) == LABELS
    assert "".join(p for p, _ in sentiment.explain(classifier, odd).pieces) == odd


def test_csv_round_trip(classifier, tmp_path):
    source = tmp_path / "reviews.csv"
    with source.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "review", "stars"])
        for i, text in enumerate(SENTENCES + ["Café crème, très bon, «merci»"]):
            writer.writerow([i, text, 3])
    column, texts = sentiment.csv_texts(source)
    assert column == "review"
    assert texts == SENTENCES + ["Café crème, très bon, «merci»"]
    results = sentiment.classify(classifier, texts)
    rows = sentiment.result_rows(texts, results)
    out = sentiment.write_results_csv(rows, tmp_path / "out.csv")
    with out.open(encoding="utf-8", newline="") as handle:
        back = list(csv.reader(handle))
    assert back[0] == list(sentiment.RESULT_COLUMNS)
    assert [r[0] for r in back[1:]] == texts
    assert [r[1] for r in back[1:]] == [r.label for r in results]
    assert [float(r[2]) for r in back[1:]] == pytest.approx([r.score for r in results], abs=1e-4)
    counts = sentiment.label_counts(results)
    assert set(counts) == LABELS and sum(counts.values()) == len(texts)


def test_csv_column_can_be_picked_and_semicolons_work(tmp_path):
    source = tmp_path / "semi.csv"
    source.write_text("title;body\nFirst;Hello there, nice day\nSecond;Bad day\n", encoding="utf-8")
    assert sentiment.csv_texts(source, "title") == ("title", ["First", "Second"])
    assert sentiment.csv_texts(source)[0] == "body"
    with pytest.raises(InvalidInputError, match="no column 'missing'"):
        sentiment.csv_texts(source, "missing")


def test_csv_without_a_text_column_is_refused(tmp_path):
    source = tmp_path / "numbers.csv"
    source.write_text("a,b\n1,2\n3,4\n", encoding="utf-8")
    with pytest.raises(InvalidInputError, match="No column"):
        sentiment.csv_texts(source)


@pytest.mark.parametrize(
    "content, message",
    [("Café,crème\n".encode("cp1252"), "not UTF-8"), (b"", "empty"), (b"\xff\xfe\x00\x01", "not UTF-8")],
)
def test_unreadable_csv_is_refused(tmp_path, content, message):
    source = tmp_path / "bad.csv"
    source.write_bytes(content)
    with pytest.raises(InvalidInputError, match=message):
        sentiment.csv_texts(source)


def test_lines_split_and_limits():
    assert sentiment.split_lines("a\n\n  b  \r\nc") == ["a", "b", "c"]
    with pytest.raises(InvalidInputError):
        sentiment.split_lines(" \n ")
    with pytest.raises(InvalidInputError, match="too many"):
        sentiment.split_lines("x\n" * (sentiment.MAX_BATCH_ROWS + 1))
    with pytest.raises(InvalidInputError, match="characters"):
        sentiment.validated_text("x" * (sentiment.MAX_TEXT_CHARS + 1))


def test_offline_default_classifier_suggests_zero_shot():
    cache = ModelCache(make_settings())
    with pytest.raises(ModelOfflineError, match="zero-shot"):
        sentiment.load_classifier(cache, make_settings().sentiment_model)


def test_a_chat_model_is_not_taken_for_a_classifier(tiny_causal_lm_dir):
    cache = ModelCache(make_settings())
    with pytest.raises(InvalidModelError, match="not a text classifier"):
        sentiment.load_classifier(cache, str(tiny_causal_lm_dir))
    assert cache.loaded_names() == []
