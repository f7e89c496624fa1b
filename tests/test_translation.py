"""Translation logic on the tiny random Marian model: its output is gibberish, so these
tests check structure (order, counts, line breaks, what reaches the model), not wording."""

from __future__ import annotations

import csv
import io
import re
from collections import Counter
import unicodedata

import pytest
import torch

from modules.config import Settings
from modules.errors import InvalidInputError, ModelNotFoundError, ModelOfflineError
from modules.engine.model_cache import ModelCache
from modules.tasks.sentences import split_sentences
from modules.tasks.translation import (
    MAX_TEXT_CHARS,
    normalize_text,
    default_direction,
    direction_choices,
    env_var_for,
    load_translator,
    pick_target_token,
    read_text_file,
    results_csv,
    load_and_stream_translation,
    texts_from_lines,
    translate_many,
    stream_translated_text,
    translate_all,
    translate_text,
    write_results_csv,
)
from tests.conftest import make_settings
from testing.tiny_models import CHINESE_CORPUS, ENGLISH_CORPUS

SENTENCES = [
    "你好，今天过得怎么样？",
    "Hello, how are you today?",
    "这部电影非常精彩，我很喜欢。",
    "The weather is nice today, let's go for a walk in the park.",
    "谢谢你的帮助，再见！",
    "Good morning! Would you like some coffee or tea?",
    "北京是中国的首都，上海是一个大城市。",
]
NOT_CACHED = "Helsinki-NLP/opus-mt-xx-yy"  # a Hub id no machine has


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Tiny models gain nothing from threads, and on a busy shared CPU they lose a lot."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def settings(tiny_marian_dir):
    return make_settings(translation_models={
        "zh-en": str(tiny_marian_dir), "en-zh": str(tiny_marian_dir), "ja-en": NOT_CACHED,
    })


@pytest.fixture
def translator(shared_cache, settings):
    return load_translator(shared_cache, settings, "zh-en", batch_size=4)


@pytest.fixture
def model_inputs(translator):
    """Every sequence the encoder receives, as token-id lists (padding removed)."""
    seen: list[list[int]] = []

    def record(module, args, kwargs):
        ids, mask = kwargs["input_ids"], kwargs["attention_mask"]
        seen.extend(row[m.bool()].tolist() for row, m in zip(ids, mask))

    hook = translator.loaded.model.get_encoder().register_forward_pre_hook(record, with_kwargs=True)
    yield seen
    hook.remove()


def comparable(text: str) -> str:
    """What survives a sentencepiece round trip: NFKC, no whitespace."""
    return re.sub(r"\s+", "", unicodedata.normalize("NFKC", text))


def test_batches_keep_order_and_count(translator):
    one_by_one = [translator.translate_pieces([s])[0] for s in SENTENCES]
    assert len(set(one_by_one)) == len(SENTENCES), "inputs should be told apart"
    batched = translator.translate_pieces(SENTENCES)  # batches of 4, sorted by length inside
    assert batched == one_by_one


def test_paragraph_breaks_and_indentation_survive(translator):
    text = "今天天气很好。我们去公园散步吧！\n\n  Hello, how are you today? I am fine.\n你好。\n\n\n谢谢！"
    result = translate_text(translator, text)
    source_lines, result_lines = text.split("\n"), result.split("\n")
    assert len(result_lines) == len(source_lines)
    for source, translated in zip(source_lines, result_lines):
        assert bool(source.strip()) == bool(translated.strip())
    assert result_lines[2].startswith("  ") and not result_lines[2].startswith("   ")


def test_long_input_reaches_the_model_whole(translator, model_inputs):
    run_on = " ".join(ENGLISH_CORPUS).replace(".", "").replace("?", "").replace("!", "")
    paragraphs = ["".join(CHINESE_CORPUS) * 2, " ".join(ENGLISH_CORPUS) * 2, run_on * 2]
    text = "\n\n".join(paragraphs * 2)
    assert len(text) > 5_000
    sentences = sum(len(split_sentences(p)) for p in paragraphs * 2)

    result = translate_text(translator, text)

    tokenizer = translator.loaded.tokenizer
    assert all(len(ids) <= translator.max_piece_tokens for ids in model_inputs)
    received = "".join(tokenizer.decode(ids, skip_special_tokens=True) for ids in model_inputs)
    # Every letter reaches the model (in some order: batches are length-sorted); what
    # does not is letterless, like the "2, " between commas, and is kept as it is.
    assert sorted(ch for ch in comparable(received) if ch.isalpha()) == sorted(
        ch for ch in comparable(text) if ch.isalpha()
    )
    assert Counter(comparable(received)) <= Counter(comparable(text))
    assert len(model_inputs) > sentences  # the run-on paragraphs had to be cut further
    assert len(result.split("\n")) == len(text.split("\n"))


def test_each_sentence_is_one_model_input(translator, model_inputs):
    text = "".join(CHINESE_CORPUS[:3])
    sentences = split_sentences(text)
    assert len(sentences) == 4
    translate_text(translator, text)
    decoded = [translator.loaded.tokenizer.decode(ids, skip_special_tokens=True) for ids in model_inputs]
    assert sorted(map(comparable, decoded)) == sorted(map(comparable, sentences))


def test_long_text_streams_in_growing_parts_with_progress(translator):
    one_sentence_lines = [s for line in CHINESE_CORPUS for s in split_sentences(line)][:12]
    text = "\n".join(one_sentence_lines)  # 12 sentences, batches of 4
    progress = []
    parts = list(stream_translated_text(translator, text, lambda done, total: progress.append((done, total))))
    assert len(parts) == 3
    assert all(later.startswith(earlier) for earlier, later in zip(parts, parts[1:]))
    assert [len(p.split("\n")) for p in parts] == [4, 8, 12]
    assert progress[-1] == (12, 12) and [d for d, _ in progress] == sorted(d for d, _ in progress)


def test_translate_many_keeps_order_and_count(translator):
    texts = ["你好。", "", "Hello, how are you today?", "谢谢你的帮助，再见！", "🎉"]
    results = translate_many(translator, texts)
    assert len(results) == len(texts)
    assert results == [translate_text(translator, t) for t in texts]
    assert results[1] == "" and results[4] == "🎉"


@pytest.mark.parametrize("text", ["", "   ", "\n\t \n", "\u200b\u200b"])
def test_blank_text_gives_empty_output_without_loading(text):
    settings = make_settings(translation_models={"zh-en": NOT_CACHED})
    cache = ModelCache(settings)
    assert list(load_and_stream_translation(cache, settings, text, "zh-en")) == [""]
    assert cache.loads == 0


def test_odd_unicode_survives(translator):
    text = "你\u200b好，world 🌍！مرحبا\n🎉👨\u200d👩\u200d👧\n\u202eright-to-left\u202c ok."
    lines = translate_text(translator, text).split("\n")
    assert len(lines) == 3 and lines[0] and lines[2]
    assert lines[1] == "🎉👨\u200d👩\u200d👧"  # nothing to translate: kept as is
    assert normalize_text("a\u200bb\x00c\r\nd") == "abc\nd"


def test_text_over_the_limit_is_refused_with_a_reason(translator):
    with pytest.raises(InvalidInputError, match="limit"):
        list(stream_translated_text(translator, "好" * (MAX_TEXT_CHARS + 1)))


def test_offline_and_not_cached_says_how_to_provide_the_model(settings):
    with pytest.raises(ModelOfflineError) as caught:
        list(load_and_stream_translation(ModelCache(settings), settings, "こんにちは。", "ja-en"))
    message = str(caught.value)
    assert "not on this machine" in message and "PLAYGROUND_TRANSLATION_JA_EN" in message
    assert "\n" not in message and "Traceback" not in message


def test_missing_local_folder_names_the_env_var(tmp_path):
    settings = make_settings(translation_models={"de-en": str(tmp_path / "missing")})
    with pytest.raises(ModelNotFoundError, match="PLAYGROUND_TRANSLATION_DE_EN"):
        load_translator(ModelCache(settings), settings, "de-en")


@pytest.mark.parametrize("direction, expected", [
    ("xx-yy", "PLAYGROUND_TRANSLATION_XX_YY"), ("zh", "source-target"), ("", "source-target"),
])
def test_unknown_direction_is_a_clear_error(settings, direction, expected):
    with pytest.raises(InvalidInputError, match=expected):
        list(load_and_stream_translation(ModelCache(settings), settings, "你好", direction))


def test_env_var_points_a_direction_at_a_local_folder(tiny_marian_dir, shared_cache):
    env = {"PLAYGROUND_TRANSLATION_KO_EN": str(tiny_marian_dir), "HF_HUB_OFFLINE": "1"}
    settings = Settings.from_env(env)
    assert env_var_for("ko-en") in env
    assert ("Korean → English", "ko-en") in direction_choices(settings)
    assert default_direction(settings) == "zh-en"
    translator = load_translator(shared_cache, settings, "KO-EN")
    assert translate_text(translator, "你好。")


def test_multi_target_models_get_their_language_token():
    codes = [">>cmn_Hant<<", ">>cmn_Hans<<", ">>yue<<"]
    assert pick_target_token(codes, "zh") == ">>cmn_Hans<<"
    assert pick_target_token([">>fra<<", ">>spa<<"], "fr") == ">>fra<<"
    assert pick_target_token([], "zh") is None


def test_batch_input_files_and_csv(tmp_path):
    assert texts_from_lines("a\n\n  b  \r\nc\n") == ["a", "b", "c"]
    utf8 = tmp_path / "utf8.txt"
    utf8.write_bytes("\ufeff你好\nHello\n".encode())
    utf16 = tmp_path / "utf16.txt"
    utf16.write_text("你好\nHello\n", encoding="utf-16")
    assert read_text_file(str(utf8)) == read_text_file(str(utf16)) == "你好\nHello\n"
    latin = tmp_path / "latin.txt"
    latin.write_bytes("caf\xe9".encode("latin-1"))
    with pytest.raises(InvalidInputError, match="UTF-8"):
        read_text_file(str(latin))
    rows = list(csv.reader(io.StringIO(results_csv(["a, b", "c\nd"], ["x", "y \"z\""]))))
    assert rows == [["source", "translation"], ["a, b", "x"], ["c\nd", 'y "z"']]


def test_translate_all_joins_typed_lines_and_a_file(shared_cache, settings, translator, tmp_path):
    upload = tmp_path / "more.txt"
    upload.write_text("谢谢你的帮助，再见！\n\n", encoding="utf-8")
    result = translate_all(shared_cache, settings, "你好。\n\n🎉\n", str(upload), "zh-en")
    assert result.sources == ["你好。", "🎉", "谢谢你的帮助，再见！"]
    assert result.translations == translate_many(translator, result.sources)
    assert result.rows()[1] == ["🎉", "🎉"]
    path = write_results_csv(result, "zh-en")
    with open(path, encoding="utf-8-sig", newline="") as file:
        assert list(csv.reader(file)) == [["source", "translation"], *result.rows()]


def test_translate_all_of_nothing_loads_nothing():
    settings = make_settings(translation_models={"zh-en": NOT_CACHED})
    cache = ModelCache(settings)
    assert translate_all(cache, settings, " \n\u200b\n", None, "zh-en").sources == []
    assert cache.loads == 0
