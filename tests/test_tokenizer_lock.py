"""A loaded tokenizer encodes one call at a time (modules/engine/tokenizer_lock.py).

transformers' fast tokenizers set each call's options (`split_special_tokens`,
truncation, padding) on shared state before encoding; concurrent calls with different
options then encode with each other's. Chat prompts mix the two kinds, so concurrent
users could get garbled prompts.
"""

from __future__ import annotations

import sys
import threading

from modules.engine.model_cache import ModelKind

TEMPLATE_TEXT = "<|im_start|>user\nSay hello<|im_end|>\n<|im_start|>assistant\n"
TYPED_TEXT = "I typed <|im_start|> myself"


def test_concurrent_encodings_with_different_options_keep_their_own(shared_cache, tiny_causal_lm_dir):
    tokenizer = shared_cache.get(str(tiny_causal_lm_dir), ModelKind.CAUSAL_LM).tokenizer
    template_ids = tokenizer(TEMPLATE_TEXT, add_special_tokens=False)["input_ids"]
    typed_ids = tokenizer(TYPED_TEXT, add_special_tokens=False, split_special_tokens=True)["input_ids"]
    assert 1 in template_ids and 1 not in typed_ids  # <|im_start|> is id 1: one token, or characters
    wrong: list[str] = []

    def encode(text: str, split: bool, expected: list[int]) -> None:
        for _ in range(1500):
            if tokenizer(text, add_special_tokens=False, split_special_tokens=split)["input_ids"] != expected:
                wrong.append(text)

    before = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as possible: without the lock ~1 % go wrong
    try:
        threads = [threading.Thread(target=encode, args=(TEMPLATE_TEXT, False, template_ids)),
                   threading.Thread(target=encode, args=(TYPED_TEXT, True, typed_ids))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        sys.setswitchinterval(before)
    assert wrong == []
