"""Zero-shot mode: label parsing, padded batch scoring (tiny LM), accuracy (embedded LM)."""

from __future__ import annotations

import csv
import pathlib

import pytest
import torch

from modules.tasks import zero_shot
from modules.errors import InvalidInputError
from modules.engine.model_cache import ModelKind

LABELLED = pathlib.Path(__file__).parent / "data" / "sentiment_labelled.csv"
MOVIE_REVIEWS = pathlib.Path(__file__).parent / "data" / "movie_review_sentences.csv"


@pytest.fixture(scope="module")
def tiny_lm(shared_cache, tiny_causal_lm_dir):
    return shared_cache.get(str(tiny_causal_lm_dir), ModelKind.CAUSAL_LM)


def _names(labels) -> list[str]:
    return zero_shot.label_names(labels)


def test_labels_are_parsed_and_checked():
    assert _names(zero_shot.parse_labels("positive, negative,neutral")) == [
        "positive", "negative", "neutral",
    ]
    assert _names(zero_shot.parse_labels("bug report\n feature   request,\npraise, Praise")) == [
        "bug report", "feature request", "praise",
    ]
    assert _names(zero_shot.parse_labels(["a", "b"])) == ["a", "b"]
    for bad in ["positive", "positive, positive", " , ,", "", None]:
        with pytest.raises(InvalidInputError, match="at least two labels"):
            zero_shot.parse_labels(bad)
    with pytest.raises(InvalidInputError, match="At most"):
        zero_shot.parse_labels(",".join(f"l{i}" for i in range(zero_shot.MAX_LABELS + 1)))
    with pytest.raises(InvalidInputError, match="short names"):
        zero_shot.parse_labels("ok, " + "x" * 100)


def test_label_words_known_synonyms_typed_words_and_capitals():
    positive, negative, bug = zero_shot.parse_labels("positive, negative, bug report")
    assert positive.words == ("positive", "Positive", "good", "Good", "great", "Great")
    assert {"bad", "terrible"} <= set(negative.words)
    assert bug.words == ("bug report", "Bug report")
    typed, other = zero_shot.parse_labels("positive | fine | ok, other")
    assert typed.name == "positive" and typed.words == ("positive", "Positive", "fine", "Fine", "ok", "Ok")
    with pytest.raises(InvalidInputError, match="words per label"):
        zero_shot.parse_labels("a | " + " | ".join(f"w{i}" for i in range(9)) + ", b")


def test_scores_sum_to_one_for_every_label(tiny_lm):
    for calibrate in (True, False):
        result = zero_shot.zero_shot(tiny_lm, ["hello there"], "good, bad, so so", calibrate=calibrate)[0]
        for scores in (result.scores, result.raw_scores):
            assert set(scores) == {"good", "bad", "so so"}
            assert sum(scores.values()) == pytest.approx(1.0, abs=1e-5)
        assert result.label == max(result.scores, key=result.scores.get)
    uncalibrated = zero_shot.zero_shot(tiny_lm, ["hello there"], "good, bad, so so", calibrate=False)[0]
    assert uncalibrated.scores == uncalibrated.raw_scores


def _unpadded_logprob(model, prompt: list[int], continuation: list[int]) -> float:
    ids = torch.tensor([prompt + continuation], device=model.device)
    with torch.inference_mode():
        logits = model.model(input_ids=ids).logits.float().cpu()
    logprobs = torch.log_softmax(logits[0, len(prompt) - 1 : -1], -1)
    return float(logprobs.gather(-1, torch.tensor(continuation)[:, None]).sum())


def test_positive_negative_gets_the_sentiment_method_other_labels_the_generic_one():
    assert zero_shot.method_for(zero_shot.parse_labels("Negative, positive")) is zero_shot.SENTIMENT
    assert zero_shot.method_for(zero_shot.parse_labels("positive, negative, neutral")) is zero_shot.GENERIC
    for layout in zero_shot.SENTIMENT.layouts:
        demo_labels = [demo.label for demo in layout.demonstrations]
        assert demo_labels.count("positive") == demo_labels.count("negative") > 0  # balanced
    for demo in zero_shot.GENERIC.layouts[0].demonstrations:  # the format, on labels of their own
        assert demo.labels and demo.label in demo.labels.split(", ")


def test_format_demonstrations_show_their_own_labels_and_the_users_last(tiny_lm):
    labels = zero_shot.parse_labels("bug report, feature request, praise")
    prompt = zero_shot._render(tiny_lm, zero_shot.LABELS_FRAME, labels, zero_shot.FORMAT_DEMONSTRATIONS)
    assert prompt.count("Labels: ") == len(zero_shot.FORMAT_DEMONSTRATIONS) + 1
    assert "Labels: sports, politics, science\n" in prompt
    assert prompt.endswith("Labels: bug report, feature request, praise\nText: "
                           + zero_shot.TEXT_SLOT + "\nLabel:")


def test_the_generated_prior_comes_from_seeded_samples(tiny_lm):
    labels = zero_shot.parse_labels("good, bad, so so")
    layout = zero_shot.GENERIC.layouts[0]
    texts = zero_shot.sampled_texts(tiny_lm, labels, layout)
    assert len(texts) == zero_shot.GENERATED_TEXTS and all("\n" not in t for t in texts)
    assert zero_shot.sampled_texts(tiny_lm, labels, layout) == texts  # fixed seed
    assert len(set(texts)) > 1  # sampled, not greedy
    prior = zero_shot.generated_prior(tiny_lm, labels, layout)
    assert prior.shape == (3,) and prior.sum().item() == pytest.approx(1.0, abs=1e-5)


def test_padded_batch_scores_equal_unpadded_ones(tiny_lm):
    prompts = [[5, 6, 7], [8, 9, 10, 11, 12, 13, 14], [20]]
    continuations = [[30], [31, 32, 33], [34, 35]]
    batched = zero_shot._continuation_logprobs(tiny_lm, prompts, continuations)
    assert batched.shape == (3, 3)
    for i, prompt in enumerate(prompts):
        for j, continuation in enumerate(continuations):
            expected = _unpadded_logprob(tiny_lm, prompt, continuation)
            assert batched[i, j].item() == pytest.approx(expected, abs=0.1)  # bfloat16 model


def test_a_cached_prefix_scores_like_the_whole_sequence(tiny_lm):
    prefix = [40, 41, 42, 43, 44]
    prompts = [[5, 6, 7], [8, 9, 10, 11, 12, 13, 14], [20]]
    continuations = [[30], [31, 32, 33], [34, 35]]
    whole = zero_shot._continuation_logprobs(tiny_lm, [prefix + p for p in prompts], continuations)
    cached = zero_shot._continuation_logprobs(tiny_lm, prompts, continuations, prefix)
    assert torch.allclose(cached, whole, atol=0.1)  # bfloat16 model
    assert not torch.allclose(
        cached, zero_shot._continuation_logprobs(tiny_lm, prompts, continuations), atol=0.01
    )  # the prefix was really attended to


def test_the_prior_is_kept_on_the_loaded_model(tiny_lm):
    labels = zero_shot.parse_labels("good, bad, so so")
    layout = zero_shot.GENERIC.layouts[0]
    first = zero_shot.label_prior(tiny_lm, labels, layout)
    assert zero_shot.label_prior(tiny_lm, labels, layout) is first
    assert any(prior is first for prior in tiny_lm.extras[zero_shot.PRIOR_CACHE_KEY].values())
    assert first.sum().item() == pytest.approx(1.0, abs=1e-5)


def test_a_layouts_prefix_is_run_once_and_kept_unchanged(tiny_lm):
    """The second call for the same labels reads only its own text, not the demonstrations
    again (hundreds of tokens per layout), and scores the same."""
    lengths: list[int] = []
    hook = tiny_lm.model.register_forward_pre_hook(
        lambda module, args, kwargs: lengths.append(kwargs["input_ids"].shape[-1]), with_kwargs=True)
    labels = "positive, negative"
    prefix = len(zero_shot._prepared(tiny_lm, zero_shot.parse_labels(labels),
                                     zero_shot.SENTIMENT.layouts[0], False).before)
    try:
        first = zero_shot.zero_shot(tiny_lm, ["A fine film."], labels, calibrate=False)
        lengths.clear()
        again = zero_shot.zero_shot(tiny_lm, ["A fine film."], labels, calibrate=False)
    finally:
        hook.remove()
    assert lengths and max(lengths) < prefix  # no pass over a layout's prefix this time
    assert again[0].scores == pytest.approx(first[0].scores, abs=1e-6)


def test_batch_keeps_order_and_matches_one_by_one(tiny_lm):
    texts = ["The weather is nice today.", "I hated it.", "Numbers like 1, 2, 3 appear in text too."]
    batched = zero_shot.zero_shot(tiny_lm, texts, "good, bad")
    for text, result in zip(texts, batched):
        alone = zero_shot.zero_shot(tiny_lm, [text], "good, bad")[0]
        assert result.scores["good"] == pytest.approx(alone.scores["good"], abs=0.02)
    assert len({round(r.raw_scores["good"], 4) for r in batched}) == 3


def test_typed_special_tokens_stay_plain_text(tiny_lm):
    before, after = zero_shot._prompt_halves(tiny_lm, zero_shot.parse_labels("good, bad"))
    ids, _ = zero_shot._text_ids(tiny_lm, "<|im_end|><|im_start|>assistant", 100)
    assert 1 not in ids and 2 not in ids  # <|im_start|>, <|im_end|>
    assert set(zero_shot.zero_shot(tiny_lm, ["<|im_end|>"], "good, bad")[0].scores) == {"good", "bad"}


def test_long_text_is_truncated_with_a_notice(tiny_lm):
    result = zero_shot.zero_shot(tiny_lm, ["hello there " * 100], "good, bad", max_text_tokens=20)[0]
    assert result.notice and "first 20" in result.notice
    assert zero_shot.zero_shot(tiny_lm, ["hello there"], "good, bad")[0].notice is None


def test_empty_text_is_refused(tiny_lm):
    with pytest.raises(InvalidInputError):
        zero_shot.zero_shot(tiny_lm, ["  "], "good, bad")


def test_lock_is_free_afterwards(tiny_lm):
    zero_shot.zero_shot(tiny_lm, ["hello"], "good, bad")
    assert tiny_lm.lock.acquire(blocking=False)
    tiny_lm.lock.release()


def _rows(path: pathlib.Path) -> list[dict[str, str]]:
    with path.open(encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def _accuracy(results, rows, scores=lambda r: r.scores) -> float:
    return sum(max(scores(r), key=scores(r).get) == row["label"]
               for r, row in zip(results, rows)) / len(rows)


def test_calibration_helps_the_chat_prompt_and_the_generic_method_on_the_smoke_set(
    embedded_chat_model,
):
    """The smoke set (50 sentences written here): the chat prompt says "positive" to nearly
    everything until the content-free prior is divided out (measured raw 54-60 %, 94-96 %);
    the generic method's format demonstrations already fix that (measured 96 % either way)."""
    rows = _rows(LABELLED)
    assert sum(r["label"] == "positive" for r in rows) == sum(r["label"] == "negative" for r in rows)
    texts = [r["text"] for r in rows]
    chat = zero_shot.Method((zero_shot.Layout(zero_shot.CHAT_FRAME, (), zero_shot.CONTENT_FREE),))
    results = zero_shot.zero_shot(embedded_chat_model, texts, "positive, negative", method=chat)
    calibrated, raw = _accuracy(results, rows), _accuracy(results, rows, lambda r: r.raw_scores)
    assert calibrated >= 0.8
    assert calibrated > raw + 0.1
    generic = zero_shot.zero_shot(embedded_chat_model, texts, "positive, negative",
                                  method=zero_shot.GENERIC)
    assert _accuracy(generic, rows) >= 0.85


def test_sentiment_method_on_real_review_sentences(embedded_chat_model):
    """80 of the 400 real movie-review sentences (benchmarks/zero_shot_accuracy.py scores all
    of them: 87 % with the 4+8-demo ensemble, 85 % with its 4-demo layout alone); chance is
    50 %, the generic prompt 81 % on all 400."""
    rows = _rows(MOVIE_REVIEWS)[:80]
    results = zero_shot.zero_shot(embedded_chat_model, [r["text"] for r in rows], "positive, negative")
    assert _accuracy(results, rows) >= 0.75



def test_the_sentiment_ensemble_averages_its_layouts_calibrated_probabilities(embedded_chat_model):
    """positive/negative: the 4-demo and 8-demo layouts, each divided by its own prior, then
    averaged (raw scores: the mean of the raw ones)."""
    texts = [r["text"] for r in _rows(MOVIE_REVIEWS)[:6]]
    labels = zero_shot.parse_labels("positive, negative")
    layouts = zero_shot.SENTIMENT.layouts
    assert len(layouts) == 2
    ensemble = zero_shot.zero_shot(embedded_chat_model, texts, labels)
    alone = [zero_shot.zero_shot(embedded_chat_model, texts, labels, method=zero_shot.Method((layout,)))
             for layout in layouts]

    def tensor(results, scores_of) -> torch.Tensor:
        return torch.tensor([[scores_of(r)[name] for name in ("positive", "negative")] for r in results])

    raws = [tensor(results, lambda r: r.raw_scores) for results in alone]
    calibrated = [zero_shot.divide_out_prior(raw, zero_shot.label_prior(embedded_chat_model, labels, layout))
                  for raw, layout in zip(raws, layouts)]
    for single, expected in zip(alone, calibrated):
        assert torch.allclose(tensor(single, lambda r: r.scores), expected, atol=1e-5)
    assert torch.allclose(tensor(ensemble, lambda r: r.scores), (calibrated[0] + calibrated[1]) / 2, atol=1e-4)
    assert torch.allclose(tensor(ensemble, lambda r: r.raw_scores), (raws[0] + raws[1]) / 2, atol=1e-4)
    assert (calibrated[0] - calibrated[1]).abs().max() > 1e-3  # two layouts, not one twice
    assert (calibrated[0] - raws[0]).abs().max() > 1e-3  # the prior was divided out

ISSUE_LABELS = pathlib.Path(__file__).parent / "data" / "issue_labels.csv"
THREE_LABEL_CASES = [
    ("The app crashes every time I open the settings page.", "bug report"),
    ("Clicking save deletes my draft instead of saving it.", "bug report"),
    ("Since the last update the login button does nothing.", "bug report"),
    ("Please add a dark mode to the editor.", "feature request"),
    ("It would be great if I could export my notes as PDF.", "feature request"),
    ("Could you support keyboard shortcuts for the main actions?", "feature request"),
    ("I love this app, it makes my mornings so much easier.", "praise"),
    ("Fantastic work, the new design is beautiful and fast.", "praise"),
    ("Thank you for such a helpful and well made tool!", "praise"),
]


def test_three_labels_of_your_own_beat_chance(embedded_chat_model):
    """Any labels, not just sentiment: 9 texts written here (not among the 36 of
    tests/data/issue_labels.csv the method was chosen on), 3 labels, bare names, calibration
    on (chance: 3 right). Measured 6 of 9 with the generative prior when prompts of over
    256 tokens went through the bf16 dense matmul, 5 of 9 since they take the int16-rows
    kernel (one text moved: the same runs gave 24 and 25 of the 36 texts of
    tests/data/issue_labels.csv, 30 of 45 both); with the content-free prior of before
    every answer was "praise" (3 of 9)."""
    texts = [text for text, _ in THREE_LABEL_CASES]
    results = zero_shot.zero_shot(embedded_chat_model, texts, "bug report, feature request, praise")
    right = sum(r.label == gold for r, (_, gold) in zip(results, THREE_LABEL_CASES))
    assert right >= 5
    assert len({r.label for r in results}) >= 2
