"""Keys and values of recent prompts and replies, so a prompt that begins the same way is
read only from where it differs.

A chat sends its whole conversation with every turn, and every chat on a model starts
with the same system prompt. Without this cache each turn reads it all again: on two
AMD Zen 5 cores a 2,200-token conversation waited 1.6-1.7 s for each first token of
SmolLM2-135M, against 0.05 s from the cache (`benchmarks/prefix_cache.py`). llama.cpp's
server (`cache_prompt`), Ollama and vLLM's automatic prefix caching keep them too.

Entries are whole token sequences (a prompt once read, a conversation once answered),
not vLLM's fixed blocks: a chat has a few long prefixes, and the longest common prefix
with any entry is what a new prompt can skip. The least recently used entries go first
when the budget (bytes of keys and values) is full. The batch scheduler
(modules/engine/batching.py) owns one per model and uses it only where reading a prompt
from a cached prefix gives the very logits a full read gives (the native prompt pass,
which computes each token on its own), so a reply does not depend on what others asked
before.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class CachedPrefix:
    """One entry: `ids` and each layer's keys and values for them, [kv_heads, len(ids), head_dim]."""

    ids: torch.Tensor  # [len] int64
    keys: tuple[torch.Tensor, ...]
    values: tuple[torch.Tensor, ...]

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (*self.keys, *self.values))

    def common_length(self, ids: torch.Tensor) -> int:
        """How many leading tokens `ids` shares with this entry."""
        length = min(len(ids), len(self.ids))
        differ = (self.ids[:length] != ids[:length]).nonzero()
        return int(differ[0, 0]) if len(differ) else length


class PrefixCache:
    """Recent prefixes' keys and values within `budget_bytes` (0: off); thread-safe."""

    def __init__(self, budget_bytes: int) -> None:
        self.budget_bytes = max(0, budget_bytes)
        self._entries: OrderedDict[int, CachedPrefix] = OrderedDict()
        self._next_key = 0
        self._lock = threading.Lock()
        self.reused_tokens = 0  # prompt tokens not read again, since the start (tests read it)

    @property
    def nbytes(self) -> int:
        with self._lock:
            return sum(entry.nbytes for entry in self._entries.values())

    def __len__(self) -> int:
        return len(self._entries)

    def longest(self, ids: list[int]) -> tuple[CachedPrefix | None, int]:
        """The entry sharing the most leading tokens with `ids`, and how many it may give:
        never the last token, whose logits choose the reply's first token."""
        if not self._entries or len(ids) < 2:
            return None, 0
        wanted = torch.tensor(ids[:-1], dtype=torch.long)
        with self._lock:
            best, best_key, best_length = None, None, 0
            for key, entry in self._entries.items():
                length = entry.common_length(wanted)
                if length > best_length:
                    best, best_key, best_length = entry, key, length
            if best_key is not None:
                self._entries.move_to_end(best_key)
        return best, best_length

    def note_reused(self, tokens: int) -> None:
        with self._lock:
            self.reused_tokens += tokens

    def store(self, ids: list[int], keys: list[torch.Tensor], values: list[torch.Tensor]) -> None:
        """Keep a copy of each layer's `keys` / `values` [kv_heads, len(ids), head_dim] for `ids`,
        unless an entry already begins with all of them. Entries that are prefixes of `ids`
        go: this one holds all they hold."""
        if not ids or not self.budget_bytes:
            return
        tensor = torch.tensor(ids, dtype=torch.long)
        with self._lock:
            if any(entry.common_length(tensor) == len(ids) for entry in self._entries.values()):
                return
        entry = CachedPrefix(tensor, tuple(k[:, :len(ids)].clone() for k in keys),
                             tuple(v[:, :len(ids)].clone() for v in values))
        if entry.nbytes > self.budget_bytes:
            return
        with self._lock:
            for key in [k for k, old in self._entries.items() if old.common_length(tensor) == len(old.ids)]:
                del self._entries[key]
            self._entries[self._next_key] = entry
            self._next_key += 1
            used = sum(old.nbytes for old in self._entries.values())
            while used > self.budget_bytes:
                _, dropped = self._entries.popitem(last=False)
                used -= dropped.nbytes

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
