"""Chinese text breaks nothing: sentence splitting on 。！？, the explorer's token chips for
tokens that hold part of a character, the surprise colouring, and export file names.

The explorer checks run on the real embedded SmolLM2-135M-Instruct, whose byte-level BPE
splits most CJK characters (3 bytes in UTF-8) into pieces: '大家好' is '大', two pieces of
'家' and two of '好'."""

from __future__ import annotations

import csv
import math

import pytest

from modules.tasks import next_token as nt
from modules.tasks.explorer import scoring
from modules.tasks.sentences import split_sentences
from modules.tasks.translation import TranslatedTexts, write_results_csv

CHINESE_PROMPT = "早上好，我很好。大家好！"


# --- sentences ----------------------------------------------------------------------------
@pytest.mark.parametrize("text, expected", [
    ("你好。我很好！你呢？", ["你好。", "我很好！", "你呢？"]),
    ("真的吗？！太好了。。。", ["真的吗？！", "太好了。。。"]),  # runs of marks end one sentence
    ("他问：“你来吗？”我说：“来！”", ["他问：“你来吗？”", "我说：“来！”"]),  # quotes stay
    ("早上好。Good morning! 我很好？I am good.",
     ["早上好。", "Good morning!", "我很好？", "I am good."]),  # mixed scripts
    ("没有句号的一句话", ["没有句号的一句话"]),
])
def test_chinese_sentences_split_on_full_width_marks(text, expected):
    pieces = split_sentences(text)
    assert [piece.strip() for piece in pieces] == expected
    assert "".join(pieces).replace(" ", "") == text.replace(" ", "")  # nothing lost


# --- export file names ---------------------------------------------------------------------
@pytest.mark.parametrize("upload, expected_name", [
    ("/tmp/上传/顾客评论.txt", "顾客评论-zh-en.csv"),
    ("/tmp/x/评论 (第2版).txt", "评论-第2版-zh-en.csv"),
    (None, "translations-zh-en.csv"),
])
def test_the_csv_export_keeps_a_chinese_file_name_and_opens_in_excel(upload, expected_name):
    result = TranslatedTexts(["你好。", "谢谢！"], ["Hello.", "Thanks!"])
    path = write_results_csv(result, "zh-en", upload)
    assert path.name == expected_name and path.exists()
    assert path.read_bytes().startswith(b"\xef\xbb\xbf")  # the BOM Excel needs for UTF-8
    with open(path, encoding="utf-8-sig", newline="") as file:
        assert list(csv.reader(file)) == [["source", "translation"], *result.rows()]


def test_a_name_of_only_punctuation_falls_back_to_the_default():
    path = write_results_csv(TranslatedTexts(["好"], ["good"]), "zh-en", "/tmp/。！？.txt")
    assert path.name == "translations-zh-en.csv"


# --- explorer: chips and surprise on the real byte-level BPE -------------------------------
@pytest.fixture(scope="module")
def chinese_state(embedded_chat_model):
    return nt.start(embedded_chat_model, CHINESE_PROMPT)


def piece_bytes(tokenizer, token_id: int) -> bytes:
    """The UTF-8 bytes one byte-level BPE token stands for."""
    byte_of_char = {char: byte for byte, char in nt.bytes_to_unicode().items()}
    return bytes(byte_of_char[char] for char in tokenizer.convert_ids_to_tokens(token_id))


def test_chips_of_split_characters_show_their_bytes(embedded_chat_model, chinese_state):
    tokenizer = embedded_chat_model.tokenizer
    pieces = nt.token_pieces(tokenizer, chinese_state.prompt_ids)
    assert b"".join(piece_bytes(tokenizer, p.id) for p in pieces).decode() == CHINESE_PROMPT
    split = [p for p in pieces if p.label.startswith("⟨")]
    assert split, "SmolLM2 splits some of these characters into byte pieces"
    for piece in pieces:
        assert piece.label and "\ufffd" not in piece.label  # no replacement characters
        raw = piece_bytes(tokenizer, piece.id)
        try:
            whole = raw.decode("utf-8")
        except UnicodeDecodeError:  # part of a character: its bytes, in hex
            assert piece.label == "⟨" + " ".join(f"{b:02x}" for b in raw) + "⟩"
        else:
            assert piece.label == nt.visible_text(whole)
    assert "大" in [p.label for p in pieces]  # a whole character is one chip with itself


def test_surprise_colours_every_chinese_token_once(embedded_chat_model, chinese_state):
    tokenizer = embedded_chat_model.tokenizer
    surprise = nt.prompt_surprise(tokenizer, chinese_state)
    labels = [p.label for p in nt.token_pieces(tokenizer, chinese_state.prompt_ids)]
    assert [label for label, _p in surprise.pieces] == labels
    assert surprise.pieces[0][1] is None  # nothing before the first token
    assert all(0 < p <= 1 for _label, p in surprise.pieces[1:])
    assert surprise.perplexity is not None and math.isfinite(surprise.perplexity)


def test_scoring_a_chinese_text_gives_one_score_per_token(embedded_chat_model):
    result = scoring.text_surprise(embedded_chat_model, CHINESE_PROMPT)
    ids = embedded_chat_model.tokenizer(CHINESE_PROMPT, add_special_tokens=False)["input_ids"]
    assert len(result.tokens) == len(ids) - 1
    for score in result.tokens:
        assert math.isclose(score.surprise_bits, -math.log2(score.probability), rel_tol=1e-6)
        assert score.token == nt.token_label(embedded_chat_model.tokenizer, score.id)
