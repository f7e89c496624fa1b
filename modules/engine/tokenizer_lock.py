"""One encoding or decoding at a time per tokenizer: a fast tokenizer keeps per-call options as shared state.

transformers' `TokenizersBackend._encode_plus` (every `tokenizer(...)`, `encode`,
`tokenize`, `apply_chat_template(tokenize=True)`) first sets the call's options on the
shared Rust tokenizer (`encode_special_tokens` for `split_special_tokens`, truncation,
padding), then encodes. Between the two another thread can set its own options, and
this call encodes with them. The chat prompt mixes both kinds: the template's text,
whose `<|im_start|>` must stay one special token, and the users' text, encoded with
`split_special_tokens=True` so that a typed `<|im_start|>` is just characters. Measured
on the embedded tokenizer, two threads: 20 of 3000 template encodings came out split
into characters; the model then answers a garbled prompt (a CI run's concurrent chats:
"Say hello in French." → "\\nBonjour,\\n<|im_end|>"). A decode (the reply's streamer)
during such a change of options can fail instead, with "RuntimeError: Already borrowed"
(transformers issue #47085, where the proposed fix is the same lock), so decodes take it too.
"""

from __future__ import annotations

import functools
import threading

from transformers import PreTrainedTokenizerBase


def serialize_encoding(tokenizer: PreTrainedTokenizerBase) -> PreTrainedTokenizerBase:
    """`tokenizer`, its encodings and decodings made one at a time (one lock around
    `_encode_plus` and `_decode`)."""
    lock = threading.RLock()  # re-entrant: an encoding may encode or decode parts of its input
    for name in ("_encode_plus", "_decode"):
        method = getattr(tokenizer, name, None)
        if method is not None:
            setattr(tokenizer, name, _holding(lock, method))
    return tokenizer


def _holding(lock: threading.RLock, method):
    @functools.wraps(method)
    def alone(*args, **kwargs):
        with lock:
            return method(*args, **kwargs)

    return alone
