"""Sentence splitting on real Chinese and English text, and cutting long sentences to fit."""

from __future__ import annotations

import pytest

from modules.tasks.sentences import split_sentences, split_to_fit


def test_chinese_sentences_split_at_full_width_marks():
    text = "今天天气很好。我们去公园散步吧！你想喝咖啡还是茶？我喝茶；他喝咖啡。"
    assert split_sentences(text) == [
        "今天天气很好。", "我们去公园散步吧！", "你想喝咖啡还是茶？", "我喝茶；", "他喝咖啡。",
    ]


def test_chinese_closing_quotes_stay_and_decimals_do_not_split():
    text = "他说：“我很好。”然后走了。圆周率约为3.14，对吗？"
    assert split_sentences(text) == ["他说：“我很好。”", "然后走了。", "圆周率约为3.14，对吗？"]


def test_english_sentences_split_at_dot_question_and_exclamation():
    text = "Hello, how are you today? I am fine, thank you. And you?  Great!"
    assert split_sentences(text) == [
        "Hello, how are you today?", "I am fine, thank you.", "And you?", "Great!",
    ]


@pytest.mark.parametrize(
    "text, expected",
    [
        ("Pi is about 3.14. It never ends.", ["Pi is about 3.14.", "It never ends."]),
        ("Dr. Smith met Mr. J. R. Jones. They talked.",
         ["Dr. Smith met Mr. J. R. Jones.", "They talked."]),
        ("We talked, e.g. about the U.S. economy. It was fine.",
         ["We talked, e.g. about the U.S. economy.", "It was fine."]),
        ("It costs approx. five dollars. See Fig. 2 for more.",
         ["It costs approx. five dollars.", "See Fig. 2 for more."]),
        ('He said "no." Then he left.', ['He said "no."', "Then he left."]),
        ("Neither do I. Visit example.com today.", ["Neither do I.", "Visit example.com today."]),
        ("Wait... What happened?! Nothing.", ["Wait...", "What happened?!", "Nothing."]),
    ],
)
def test_numbers_and_abbreviations_do_not_end_sentences(text, expected):
    assert split_sentences(text) == expected


def test_mixed_scripts_split_at_both_kinds_of_marks():
    assert split_sentences("Hello.你好。Bonjour! M. Dupont arrive.") == [
        "Hello.", "你好。", "Bonjour!", "M. Dupont arrive.",
    ]


@pytest.mark.parametrize("text", ["", "   ", "\t\n"])
def test_blank_text_has_no_sentences(text):
    assert split_sentences(text) == []


def test_text_without_end_marks_is_one_sentence():
    assert split_sentences("  no punctuation at all  ") == ["no punctuation at all"]


def test_nothing_is_lost_between_sentences():
    text = "机器翻译很有用。Machine translation is useful! 它能帮助我们？Yes. 最后一句"
    assert len(split_sentences(text)) == 5
    assert "".join(s.replace(" ", "") for s in split_sentences(text)) == text.replace(" ", "")


def test_long_sentence_is_cut_at_commas_first():
    sentence = "你好，今天过得怎么样，我很好，谢谢你，再见"
    pieces = split_to_fit(sentence, lambda piece: len(piece) <= 8)
    assert pieces == ["你好，", "今天过得怎么样，", "我很好，谢谢你，", "再见"]


def test_then_between_words_then_between_characters():
    words = split_to_fit("one two three four five six seven", lambda p: len(p) <= 10)
    assert "".join(words) == "one two three four five six seven"
    assert all(len(p) <= 10 for p in words) and "three " in words
    chars = split_to_fit("x" * 25, lambda p: len(p) <= 10)
    assert chars == ["x" * 10, "x" * 10, "x" * 5]


def test_pieces_always_fit_and_rejoin_to_the_text():
    sentence = "这是一个非常长的句子" * 40 + ", and then " + "averyveryverylongwordwithoutspaces" * 5
    pieces = split_to_fit(sentence, lambda p: len(p) <= 50)
    assert "".join(pieces) == sentence
    assert all(0 < len(p) <= 50 for p in pieces)


def test_text_that_fits_is_untouched():
    assert split_to_fit("short one.", lambda p: True) == ["short one."]
    assert split_to_fit("", lambda p: True) == []
