"""The tiny fixture models load through the Auto classes and behave like the
real checkpoints they stand in for (SmolLM2/Qwen2-style chat LM, opus-mt,
distilbert sst-2)."""

from __future__ import annotations

import json
import warnings

import pytest
import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForSeq2SeqLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
)

from testing.tiny_models import (
    CAUSAL_LM_MAX_LENGTH,
    build_tiny_causal_lm,
    build_tiny_distilbert,
    build_tiny_marian,
)


def _marian_tokenizer(folder):
    with warnings.catch_warnings():  # "Recommended: pip install sacremoses."
        warnings.filterwarnings("ignore", message=".*sacremoses.*")
        return AutoTokenizer.from_pretrained(folder)


# --- causal LM ----------------------------------------------------------------


@pytest.fixture(scope="module")
def causal_lm(tiny_causal_lm_dir):
    tokenizer = AutoTokenizer.from_pretrained(tiny_causal_lm_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_causal_lm_dir)
    return model, tokenizer


def test_causal_lm_reloads_with_auto_classes(causal_lm, tiny_causal_lm_dir):
    model, tokenizer = causal_lm
    assert type(model).__name__ == "LlamaForCausalLM"
    assert tokenizer.is_fast
    assert tokenizer.model_max_length == CAUSAL_LM_MAX_LENGTH
    assert model.config.max_position_embeddings == CAUSAL_LM_MAX_LENGTH
    assert model.config.vocab_size == len(tokenizer)
    assert tokenizer.convert_tokens_to_ids(["<|endoftext|>", "<|im_start|>", "<|im_end|>"]) == [0, 1, 2]
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.eos_token_id == 2
    assert tokenizer.pad_token == "<|endoftext|>" and tokenizer.pad_token_id == 0
    assert {"<|endoftext|>", "<|im_start|>", "<|im_end|>"} <= set(tokenizer.all_special_tokens)
    assert model.generation_config.eos_token_id == 2
    assert model.generation_config.pad_token_id == 0
    saved = json.loads((tiny_causal_lm_dir / "generation_config.json").read_text())
    assert (saved["eos_token_id"], saved["pad_token_id"]) == (2, 0)


def test_chat_template_renders_chatml_with_generation_prompt(causal_lm):
    _, tokenizer = causal_lm
    messages = [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": "你好!"},
        {"role": "assistant", "content": "Hi."},
        {"role": "user", "content": "Tell me a joke."},
    ]
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert text == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\n你好!<|im_end|>\n"
        "<|im_start|>assistant\nHi.<|im_end|>\n"
        "<|im_start|>user\nTell me a joke.<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    without = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=False)
    assert without + "<|im_start|>assistant\n" == text

    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_dict=False)
    assert ids == tokenizer(text, add_special_tokens=False)["input_ids"]
    assert ids.count(1) == 5 and ids.count(2) == 4  # <|im_start|>, <|im_end|>


def test_any_unicode_round_trips(causal_lm):
    _, tokenizer = causal_lm
    text = "Héllo wörld — 你好，世界！ 😀 ∑ 龘"
    ids = tokenizer(text)["input_ids"]
    assert tokenizer.unk_token_id is None or tokenizer.unk_token_id not in ids
    assert tokenizer.decode(ids) == text


def test_typed_special_token_text_is_still_tokenizable(causal_lm):
    _, tokenizer = causal_lm
    typed = "please print <|im_start|>system and <|im_end|> literally"
    ids = tokenizer(typed)["input_ids"]
    assert tokenizer.decode(ids) == typed
    # Splitting special tokens turns the typed markers into plain bytes.
    split = tokenizer(typed, split_special_tokens=True)["input_ids"]
    assert 1 not in split and 2 not in split
    assert tokenizer.decode(split) == typed
    # And typed markers inside a chat message still render and encode.
    rendered = tokenizer.apply_chat_template(
        [{"role": "user", "content": typed}], tokenize=False, add_generation_prompt=True
    )
    assert typed in rendered


def test_causal_lm_generates_within_context_window(causal_lm):
    model, tokenizer = causal_lm
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Hello"}], tokenize=False, add_generation_prompt=True
    )
    inputs = tokenizer(prompt, return_tensors="pt")
    out = model.generate(**inputs, max_new_tokens=8, do_sample=False)
    assert out.shape[1] <= inputs["input_ids"].shape[1] + 8
    long = tokenizer("word " * 400, truncation=True)["input_ids"]
    assert len(long) == CAUSAL_LM_MAX_LENGTH


def test_causal_lm_is_deterministic(tmp_path, tiny_causal_lm_dir):
    again = build_tiny_causal_lm(tmp_path / "again")
    assert (again / "model.safetensors").read_bytes() == (tiny_causal_lm_dir / "model.safetensors").read_bytes()
    assert (again / "tokenizer.json").read_text() == (tiny_causal_lm_dir / "tokenizer.json").read_text()


# --- Marian -------------------------------------------------------------------


@pytest.fixture(scope="module")
def marian(tiny_marian_dir):
    tokenizer = _marian_tokenizer(tiny_marian_dir)
    model = AutoModelForSeq2SeqLM.from_pretrained(tiny_marian_dir)
    return model, tokenizer


def test_marian_reloads_with_auto_classes(marian, tiny_marian_dir):
    model, tokenizer = marian
    assert type(model).__name__ == "MarianMTModel"
    assert type(tokenizer).__name__ == "MarianTokenizer"
    assert tokenizer.model_max_length == 512
    assert model.config.max_position_embeddings == 512
    for name in ("source.spm", "target.spm", "vocab.json"):
        assert (tiny_marian_dir / name).is_file()
    vocab = json.loads((tiny_marian_dir / "vocab.json").read_text(encoding="utf-8"))
    assert vocab["</s>"] == 0 and vocab["<unk>"] == 1 and vocab["<pad>"] == len(vocab) - 1
    assert model.config.vocab_size == len(vocab)
    assert model.config.decoder_start_token_id == model.config.pad_token_id == tokenizer.pad_token_id


@pytest.mark.parametrize("text", ["你好，今天天气很好。", "Hello, how are you today?"])
def test_marian_generates_for_chinese_and_english(marian, text):
    model, tokenizer = marian
    inputs = tokenizer([text], return_tensors="pt")
    ids = inputs["input_ids"][0].tolist()
    assert ids[-1] == tokenizer.eos_token_id
    assert tokenizer.unk_token_id not in ids  # corpus characters are all known
    out = model.generate(**inputs, max_new_tokens=8)
    assert out.shape[0] == 1 and 1 < out.shape[1] <= 9
    assert isinstance(tokenizer.decode(out[0], skip_special_tokens=True), str)


def test_marian_outputs_depend_on_input(marian):
    model, tokenizer = marian
    outputs = set()
    for text in ["你好，今天天气很好。", "Hello, how are you today?", "我喜欢吃苹果"]:
        out = model.generate(**tokenizer([text], return_tensors="pt"), max_new_tokens=8)
        outputs.add(tuple(out[0].tolist()))
    assert len(outputs) > 1


def test_marian_unknown_characters_map_to_unk(marian):
    _, tokenizer = marian
    ids = tokenizer("龘", add_special_tokens=False)["input_ids"]
    assert tokenizer.unk_token_id in ids


# --- DistilBERT ---------------------------------------------------------------


def test_distilbert_gives_two_logits(tiny_distilbert_dir):
    tokenizer = AutoTokenizer.from_pretrained(tiny_distilbert_dir)
    model = AutoModelForSequenceClassification.from_pretrained(tiny_distilbert_dir)
    assert type(model).__name__ == "DistilBertForSequenceClassification"
    assert tokenizer.is_fast
    assert tokenizer.model_max_length == 512
    assert model.config.max_position_embeddings == 512
    assert model.config.id2label == {0: "NEGATIVE", 1: "POSITIVE"}
    assert model.config.label2id == {"NEGATIVE": 0, "POSITIVE": 1}

    batch = tokenizer(["This movie was WONDERFUL!", "这部电影很无聊"], padding=True, return_tensors="pt")
    assert tokenizer.convert_ids_to_tokens(batch["input_ids"][0])[:3] == ["[CLS]", "this", "movie"]
    assert batch["input_ids"][0, 0] == tokenizer.cls_token_id
    with torch.no_grad():
        logits = model(**batch).logits
    assert logits.shape == (2, 2)
    assert not torch.allclose(logits[0], logits[1])  # input matters

    long = tokenizer("good " * 1000, truncation=True)["input_ids"]
    assert len(long) == 512
    with torch.no_grad():
        assert model(input_ids=torch.tensor([long])).logits.shape == (1, 2)


def test_config_files_name_the_real_architectures(tiny_causal_lm_dir, tiny_marian_dir, tiny_distilbert_dir):
    assert AutoConfig.from_pretrained(tiny_causal_lm_dir).model_type == "llama"
    assert AutoConfig.from_pretrained(tiny_marian_dir).model_type == "marian"
    assert AutoConfig.from_pretrained(tiny_distilbert_dir).model_type == "distilbert"


def test_builders_return_the_folder_they_filled(tmp_path):
    for build in (build_tiny_causal_lm, build_tiny_marian, build_tiny_distilbert):
        target = tmp_path / build.__name__ / "nested"
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*sacremoses.*")
            assert build(target) == target
        assert (target / "config.json").is_file()
        assert (target / "model.safetensors").is_file()
