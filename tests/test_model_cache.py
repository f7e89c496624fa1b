"""The model cache: one load per model, LRU eviction, offline fallback, clear errors."""

from __future__ import annotations

import gc
import threading
import weakref

import pytest
import torch
from transformers import AutoModelForCausalLM

from modules.engine import device, gguf_conversion
from modules.config import EMBEDDED_MODEL
from modules.errors import (
    InvalidModelError,
    ModelNotFoundError,
    ModelOfflineError,
    ModelOutOfMemoryError,
)
from modules.engine.model_cache import ModelCache, ModelKind
from modules.engine.model_choice import active_chat_model, chat_model_choices
from tests.conftest import make_settings


def test_concurrent_requests_cause_one_load(tiny_causal_lm_dir):
    cache = ModelCache(make_settings())
    barrier = threading.Barrier(8)
    results = []

    def ask():
        barrier.wait()
        results.append(cache.get(str(tiny_causal_lm_dir), ModelKind.CAUSAL_LM))

    threads = [threading.Thread(target=ask) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(results) == 8
    assert cache.loads == 1
    assert all(result is results[0] for result in results)


def test_status_is_reported_while_loading(tiny_causal_lm_dir):
    messages = []
    loaded = ModelCache(make_settings()).get(
        str(tiny_causal_lm_dir), ModelKind.CAUSAL_LM, on_status=messages.append
    )
    assert any(message.startswith("Loading") for message in messages)
    assert loaded.tokenizer.chat_template
    tensors = [*loaded.model.parameters(), *loaded.model.buffers()]
    assert loaded.nbytes == sum(t.numel() * t.element_size() for t in tensors)


def test_least_recently_used_model_is_evicted_and_freed(
    tiny_causal_lm_dir, tiny_distilbert_dir, tiny_marian_dir
):
    cache = ModelCache(make_settings(), max_models=2)
    causal = cache.get(str(tiny_causal_lm_dir), ModelKind.CAUSAL_LM)
    cache.get(str(tiny_distilbert_dir), ModelKind.CLASSIFIER)
    cache.get(str(tiny_causal_lm_dir), ModelKind.CAUSAL_LM)  # now most recently used
    freed = weakref.ref(causal.model)
    survivor = weakref.ref(cache.get(str(tiny_distilbert_dir), ModelKind.CLASSIFIER).model)
    del causal
    cache.get(str(tiny_marian_dir), ModelKind.SEQ2SEQ)  # evicts the causal LM
    gc.collect()
    assert cache.loaded_names() == [str(tiny_distilbert_dir), str(tiny_marian_dir)]
    assert freed() is None, "evicted model is still in memory"
    assert survivor() is not None
    assert cache.loads == 3


def test_a_load_freezes_the_heap_and_an_eviction_still_frees_cycles(tiny_causal_lm_dir):
    """A finished load freezes the live heap out of the collector's passes (modules/engine/heap.py);
    a model dropped later is freed even where a reference cycle holds it."""
    gc.unfreeze()
    cache = ModelCache(make_settings())
    loaded = cache.get(str(tiny_causal_lm_dir), ModelKind.CAUSAL_LM)
    assert gc.get_freeze_count() > 1000
    loaded.model.cycle = [loaded.model]  # only the collector can free this
    freed = weakref.ref(loaded.model)
    del loaded
    assert cache.evict(str(tiny_causal_lm_dir), ModelKind.CAUSAL_LM)
    assert freed() is None, "an evicted model in a reference cycle is still in memory"


@pytest.mark.parametrize("bf16_native", [True, False])
def test_translation_loads_in_bf16_only_where_the_cpu_has_bf16(tiny_marian_dir, tiny_distilbert_dir,
                                                               monkeypatch, bf16_native):
    """Under AVX2 a bf16 Marian batch took 2.7x float32's time; with native bf16, 0.86x."""
    monkeypatch.setattr(device, "native_bf16", lambda: bf16_native)
    cache = ModelCache(make_settings(device="cpu"))  # a GPU runs everything in bf16
    translator = cache.get(str(tiny_marian_dir), ModelKind.SEQ2SEQ)
    assert translator.dtype == translator.model.dtype == (torch.bfloat16 if bf16_native else torch.float32)
    assert cache.get(str(tiny_distilbert_dir), ModelKind.CLASSIFIER).model.dtype == torch.float32
    assert device.pick_dtype("auto", torch.device("cpu"), "chat") == torch.bfloat16
    assert device.pick_dtype("float32", torch.device("cpu"), "translation") == torch.float32


def test_same_folder_as_two_kinds_is_two_entries(tiny_causal_lm_dir):
    cache = ModelCache(make_settings())
    cache.get(str(tiny_causal_lm_dir), ModelKind.CAUSAL_LM)
    assert cache.is_loaded(str(tiny_causal_lm_dir), ModelKind.CAUSAL_LM)
    assert not cache.is_loaded(str(tiny_causal_lm_dir), ModelKind.SEQ2SEQ)
    assert cache.evict(str(tiny_causal_lm_dir), ModelKind.CAUSAL_LM)
    assert cache.loaded_names() == []


def test_offline_chat_falls_back_to_embedded_model(tiny_causal_lm_dir):
    offline = make_settings()
    active = active_chat_model(offline)
    assert active.ref == EMBEDDED_MODEL
    assert "offline" in active.reason and "Qwen/Qwen2.5-0.5B-Instruct" in active.reason
    assert chat_model_choices(offline)[0] == EMBEDDED_MODEL
    local = make_settings(chat_model=str(tiny_causal_lm_dir))
    assert active_chat_model(local).ref == str(tiny_causal_lm_dir)
    assert active_chat_model(make_settings(offline=False)).ref == "Qwen/Qwen2.5-0.5B-Instruct"


@pytest.mark.parametrize(
    ("ref", "error", "words"),
    [
        ("", InvalidModelError, "No model given"),
        ("not a model id!", InvalidModelError, "not a valid model id"),
        ("a/b/c/d", InvalidModelError, "not a valid model id"),
        ("./no-such-folder", ModelNotFoundError, "folder not found"),
        ("/no/such/model.gguf", ModelNotFoundError, "GGUF file not found"),
        ("Qwen/Qwen2.5-0.5B-Instruct", ModelOfflineError, "cannot be reached"),
        ("x" * 100_000, InvalidModelError, "100,000 characters long; the limit is 256"),
        ("/models/tiny\x00.gguf", InvalidModelError, "control or invisible characters"),
        ("models/tiny/../../../etc", InvalidModelError, "steps back out of a folder"),
    ],
)
def test_bad_references_give_one_clear_line(ref, error, words):
    with pytest.raises(error, match=words) as raised:
        ModelCache(make_settings()).get(ref, ModelKind.CAUSAL_LM)
    assert "\n" not in str(raised.value)


@pytest.mark.parametrize("ref", ["m" * 100_000, "/tmp/\x00", "/models/a/../../etc/x.gguf"])
def test_malformed_references_fail_before_touching_the_disk(ref, monkeypatch):
    """A name that cannot be a model is refused by its shape: no stat, no OSError."""
    import pathlib

    def no_disk(*args, **kwargs):
        raise AssertionError("the disk was touched")

    for name in ("is_dir", "is_file", "exists", "stat", "resolve", "expanduser"):
        monkeypatch.setattr(pathlib.Path, name, no_disk)
    with pytest.raises(InvalidModelError) as raised:
        ModelCache(make_settings()).get(ref, ModelKind.CAUSAL_LM)
    assert len(str(raised.value)) < 400


def test_a_relative_path_may_start_by_going_up(tiny_causal_lm_dir, monkeypatch):
    monkeypatch.chdir(tiny_causal_lm_dir)
    ref = f"../{tiny_causal_lm_dir.name}"
    assert ModelCache(make_settings()).get(ref, ModelKind.CAUSAL_LM).ref.folder == tiny_causal_lm_dir.resolve()


def test_folder_that_is_not_a_model(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(InvalidModelError, match="not a model"):
        ModelCache(make_settings()).get(str(tmp_path), ModelKind.CAUSAL_LM)


def test_model_of_the_wrong_kind(tiny_distilbert_dir):
    with pytest.raises(InvalidModelError, match="not a model this tab can use"):
        ModelCache(make_settings()).get(str(tiny_distilbert_dir), ModelKind.CAUSAL_LM)


def test_failed_load_is_reported_to_every_waiter_and_not_cached(tmp_path):
    cache = ModelCache(make_settings())
    errors = []

    def ask():
        try:
            cache.get(str(tmp_path), ModelKind.CAUSAL_LM)
        except InvalidModelError as error:
            errors.append(error)

    threads = [threading.Thread(target=ask) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(errors) == 4 and cache.loaded_names() == []


def test_out_of_memory_becomes_a_clear_error(tiny_causal_lm_dir, monkeypatch):
    def exhausted(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory")

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", exhausted)
    with pytest.raises(ModelOutOfMemoryError, match="Not enough memory"):
        ModelCache(make_settings()).get(str(tiny_causal_lm_dir), ModelKind.CAUSAL_LM)


def test_remote_code_is_off_unless_enabled_for_that_model(tiny_causal_lm_dir, monkeypatch):
    seen = []
    original = AutoModelForCausalLM.from_pretrained.__func__

    def spy(cls, *args, **kwargs):
        seen.append(kwargs.get("trust_remote_code"))
        return original(cls, *args, **kwargs)

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", classmethod(spy))
    ModelCache(make_settings()).get(str(tiny_causal_lm_dir), ModelKind.CAUSAL_LM)
    trusted = make_settings(trust_remote_code=frozenset({str(tiny_causal_lm_dir)}))
    ModelCache(trusted).get(str(tiny_causal_lm_dir), ModelKind.CAUSAL_LM)
    assert seen == [False, True]


def test_converted_embedded_model_is_reused(embedded_chat_model, monkeypatch):
    """Once converted, later loads read the safetensors copy and never dequantize again."""
    gguf_file = embedded_chat_model.ref.gguf_file
    folder = gguf_conversion.converted_folder(gguf_file, make_settings().cache_dir)
    assert gguf_conversion.is_converted(folder)

    def must_not_convert(*args):
        raise AssertionError("converted again")

    monkeypatch.setattr(gguf_conversion, "_convert", must_not_convert)
    messages = []
    again = ModelCache(make_settings()).get(EMBEDDED_MODEL, ModelKind.CAUSAL_LM, messages.append)
    assert not any("Converting" in message for message in messages)
    assert again.model is not embedded_chat_model.model  # a second cache really loaded it


def test_conversion_keeps_the_gguf_weights(tmp_path):
    """The converted folder holds exactly the weights transformers dequantizes from the GGUF."""
    from modules.engine.model_refs import embedded_gguf_path

    gguf_file = embedded_gguf_path()
    status = []
    folder = gguf_conversion.ensure_converted(gguf_file, tmp_path, status.append)
    assert status and "Converting" in status[0]
    assert gguf_conversion.ensure_converted(gguf_file, tmp_path, status.append) == folder
    assert len(status) == 1, "second call converted again"
    direct = AutoModelForCausalLM.from_pretrained(
        str(gguf_file.parent), gguf_file=gguf_file.name, dtype=torch.float32
    )
    converted = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    ids = torch.tensor([[1, 504, 3000, 42]])
    with torch.inference_mode():
        assert torch.equal(direct(ids).logits, converted(ids).logits)


def test_embedded_model_answers_a_real_question(embedded_chat_model):
    tokenizer, model = embedded_chat_model.tokenizer, embedded_chat_model.model
    inputs = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}],
        add_generation_prompt=True, return_tensors="pt", return_dict=True,
    )
    output = model.generate(**inputs, max_new_tokens=12, do_sample=False)
    reply = tokenizer.decode(output[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
    assert "Paris" in reply
