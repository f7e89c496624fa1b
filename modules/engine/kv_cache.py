"""A KV cache that grows in place, so a decode step writes one column instead of copying all.

transformers' DynamicLayer concatenates the whole cache with each new token. The batch
scheduler (modules/engine/batching.py), the explorer's steps and the native decode step
(modules/engine/kernels/native_step.py) use `growing_cache` instead.
"""

from __future__ import annotations

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer


class GrowingLayer(DynamicLayer):
    """A DynamicLayer whose keys and values live in buffers with room to grow.

    transformers' DynamicLayer concatenates the whole cache with each new token (60
    copies of every cached row per step for a 30-layer model); here a step writes one
    column in place and `keys` / `values` are views of the filled part. The buffers
    double when full. Code that assigns `keys` / `values` itself (the batch's padding and
    row selection) hands over a new tensor, which becomes the buffer at the next update.

    With `dtype` float32, a bf16 model's keys and values are kept widened (exactly: every
    bf16 value is a float32 one). The fused layers attend in float32, so each decode step
    then reads the cache as it is instead of widening all of it again (60 copies of the
    whole cache per step for a 30-layer model), for twice the cache memory.
    """

    def __init__(self, dtype: torch.dtype | None = None) -> None:
        super().__init__()
        self.held_dtype = dtype

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        super().lazy_initialization(key_states, value_states)
        self._buffers: tuple[torch.Tensor, torch.Tensor] | None = None

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs
               ) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        length, new = self.get_seq_length(), key_states.shape[-2]
        if length == 0:
            self._buffers = tuple(states.to(self.held_dtype or states.dtype, copy=True)
                                  for states in (key_states, value_states))
        else:
            keys, values = self.room_for(length, new)
            keys[..., length:length + new, :] = key_states
            values[..., length:length + new, :] = value_states
        self.filled(length + new)
        return self.keys, self.values

    def room_for(self, length: int, new: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
        """The key and value buffers with free columns `length`..`length + new`, grown if
        need be: `update` writes them, and so does the native step
        (modules/engine/kernels/native_step.py); `filled` follows."""
        if not self._views_of_buffers():  # replaced from outside: that tensor is the buffer now
            self._buffers = (self.keys, self.values)
        if self._buffers[0].shape[-2] < length + new or not self._fits():
            self._buffers = tuple(self._grown(old, length, length + new) for old in (self.keys, self.values))
        return self._buffers

    def begin(self, rows: int, heads: int, head_dim: int, columns: int, dtype: torch.dtype,
              device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """Empty, with buffers of room for `columns` columns [rows, heads, columns, head_dim]
        in `dtype` (the held dtype, if one is set): a native prompt pass writes them, then
        `filled`."""
        empty = torch.empty(rows, heads, 0, head_dim, dtype=dtype, device=device)
        self.lazy_initialization(empty, empty)
        held = empty.to(self.held_dtype or dtype)
        self._buffers = (self._grown(held, 0, columns), self._grown(held, 0, columns))
        self.filled(0)
        return self._buffers

    def filled(self, length: int) -> None:
        """The buffers' first `length` columns are the cache now."""
        self.keys = self._buffers[0][..., :length, :]
        self.values = self._buffers[1][..., :length, :]

    def _views_of_buffers(self) -> bool:
        return (self._buffers is not None and self._buffers[0].data_ptr() == self.keys.data_ptr()
                and self._buffers[1].data_ptr() == self.values.data_ptr())

    def _fits(self) -> bool:
        """The buffer's other dimensions are the cache's (rows may have been selected or joined)."""
        return self._buffers[0].shape[:-2] == self.keys.shape[:-2]

    @staticmethod
    def _grown(filled: torch.Tensor, length: int, needed: int) -> torch.Tensor:
        shape = list(filled.shape)
        shape[-2] = max(needed, 2 * length, 64)
        buffer = filled.new_empty(shape)
        buffer[..., :length, :] = filled
        return buffer


def growing_cache(config, dtype: torch.dtype | None = None) -> DynamicCache:
    """A DynamicCache for `config` whose full-attention layers grow in place (GrowingLayer),
    holding keys and values in `dtype` (None: as they come)."""
    cache = DynamicCache(config=config)
    cache.layers = [GrowingLayer(dtype) if type(layer) is DynamicLayer else layer for layer in cache.layers]
    return cache
