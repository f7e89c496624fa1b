"""A Llama decoder layer that does the same arithmetic with far fewer operations.

Decoding one token of a 135M-parameter model on a CPU is dominated by per-operation
overhead, not arithmetic: transformers' LlamaDecoderLayer issues ~90 small tensor
operations per layer (seven projections, RMSNorm in six steps, rotary embeddings in
sixteen), and each costs microseconds of dispatch. `FusedLlamaLayer` computes the
same function with ~30: the q/k/v projections as one matrix, gate/up as one,
RMSNorm as one `layer_norm` call, rotary embeddings applied to queries and keys at once.

The Qwen2/Qwen3 family has the same layer with two additions, handled here too:
biases on q/k/v (Qwen2) and an RMSNorm of each query and key head before the
rotary embedding (Qwen3's q_norm/k_norm).

It is a drop-in replacement inside transformers' own `LlamaModel`: same arguments,
same cache (`past_key_values.update`), same masks, so `generate`, streaming, the
explorer's stepping and the zero-shot scorer all run through it unchanged. The
projections are built by a caller-given factory, so the same layer runs with float,
int8 or int4 weights (modules/engine/kernels/fast_decode.py). tests/test_fused_llama.py checks it
against the original layer. One-token steps after cached tokens go through `decode_one`
(also called straight by modules/engine/kernels/decode_step.py).
"""

from __future__ import annotations

import contextlib

from collections.abc import Callable, Iterator

import torch
from torch import nn
from torch.nn import functional as F

# (weight [out, in], bias [out] or None) -> module computing y = x @ Wᵀ + b
LinearFactory = Callable[[torch.Tensor, torch.Tensor | None], nn.Module]
FUSABLE_TYPES = ("llama", "qwen2", "qwen3")
# Above this many rows (prompt tokens) a pass counts as a prompt pass: quantized layers use
# their dense copy, and a layer with a `prefill_dtype` runs in it.
PREFILL_ROWS = 8


def fusable(model: nn.Module) -> bool:
    """Llama, Qwen2 or Qwen3 with a SiLU MLP and full (not sliding-window) attention everywhere."""
    config = getattr(model, "config", None)
    return (
        getattr(config, "model_type", None) in FUSABLE_TYPES
        and getattr(config, "hidden_act", None) == "silu"
        and getattr(config, "pretraining_tp", 1) == 1
        and "sliding_attention" not in (getattr(config, "layer_types", None) or ())
    )


def _cat_biases(*linears: nn.Linear) -> torch.Tensor | None:
    """One bias for the fused projection, zeros standing in for a missing part; None if none has one."""
    if all(linear.bias is None for linear in linears):
        return None
    return torch.cat([linear.bias if linear.bias is not None
                      else torch.zeros(linear.out_features, dtype=linear.weight.dtype)
                      for linear in linears]).detach()


class FusedLlamaLayer(nn.Module):
    # A list while `recording_attention` runs: one-token passes append their weights to it.
    attention_sink: list[torch.Tensor] | None = None

    """LlamaDecoderLayer's forward with fused projections; takes over its weights."""

    def __init__(self, layer: nn.Module, make_linear: LinearFactory,
                 prefill_dtype: torch.dtype | None = None) -> None:
        super().__init__()
        # Prompt passes run entirely in this dtype (residual stream, norms, rotary, attention);
        # k/v still enter the cache in the model's dtype, so decode reads what it always did.
        # Where bf16 is emulated (AVX2), float32 prompts are several times faster.
        self.prefill_dtype = prefill_dtype
        attention, mlp = layer.self_attn, layer.mlp
        config = attention.config
        self.layer_idx = attention.layer_idx
        self.head_dim = attention.head_dim
        self.query_heads = config.num_attention_heads
        self.kv_heads = config.num_key_value_heads
        self.scaling = attention.scaling
        self.intermediate = mlp.gate_proj.out_features
        projections = (attention.q_proj, attention.k_proj, attention.v_proj)
        self.qkv = make_linear(torch.cat([p.weight for p in projections]), _cat_biases(*projections))
        self.o = make_linear(attention.o_proj.weight, attention.o_proj.bias)
        self.gate_up = make_linear(torch.cat([mlp.gate_proj.weight, mlp.up_proj.weight]),
                                   _cat_biases(mlp.gate_proj, mlp.up_proj))
        self.down = make_linear(mlp.down_proj.weight, mlp.down_proj.bias)
        # Qwen3: RMSNorm over each query / key head before the rotary embedding.
        q_norm, k_norm = getattr(attention, "q_norm", None), getattr(attention, "k_norm", None)
        self.head_norm = None if q_norm is None else torch.cat([
            q_norm.weight.expand(self.query_heads, -1), k_norm.weight.expand(self.kv_heads, -1)
        ]).detach()
        self.head_norm_eps = None if q_norm is None else q_norm.variance_epsilon
        self.eps = layer.input_layernorm.variance_epsilon
        for name, norm in (("input_norm_twice", layer.input_layernorm),  # `_norm`'s weights
                           ("post_attention_norm_twice", layer.post_attention_layernorm)):
            weight = norm.weight.detach()
            self.register_buffer(name, torch.cat([weight, weight]), persistent=False)

    def _norm(self, hidden: torch.Tensor, weight_twice: torch.Tensor) -> torch.Tensor:
        """RMSNorm as one LayerNorm: the row [x, −x] has mean 0 and variance mean(x²), so
        the first half of its LayerNorm is x / √(mean(x²) + ε), the RMSNorm of x.

        torch's CPU rms_norm is composite (nine operations, ~26 µs for one 576-wide row);
        layer_norm is one vectorised kernel (~15 µs with the concatenation), float32
        inside, and it applies the weight before its single rounding. That is 5 % of a
        one-row SmolLM2 decode step. `weight_twice` is the norm's weight, concatenated
        with itself.
        """
        size = hidden.shape[-1]
        normed = F.layer_norm(torch.cat([hidden, hidden.neg()], -1), (2 * size,),
                              weight_twice.to(hidden.dtype), None, self.eps)
        return normed[..., :size].contiguous()

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values=None,
        use_cache: bool | None = False,
        position_embeddings: tuple[torch.Tensor, torch.Tensor] | None = None,
        **kwargs,
    ) -> torch.Tensor:
        batch, length, _ = hidden_states.shape
        cos, sin = position_embeddings
        half = self.head_dim // 2
        if length == 1 and past_key_values is not None:  # a decode step: one token per row
            return self.decode_one(hidden_states, cos.unsqueeze(2), signed_sin(sin, half).unsqueeze(2),
                                   past_key_values, mask=attention_mask)
        if self.prefill_dtype is not None and length > PREFILL_ROWS:
            hidden_states = hidden_states.to(self.prefill_dtype)
        rotated_heads = self.query_heads + self.kv_heads
        qkv = self.qkv(self._norm(hidden_states, self.input_norm_twice))
        qkv = qkv.view(batch, length, rotated_heads + self.kv_heads, self.head_dim)
        qk = qkv[:, :, :rotated_heads]
        if self.head_norm is not None:
            qk = self.head_norm * torch.rms_norm(qk, (self.head_dim,), eps=self.head_norm_eps)
        # rotate_half(x) * sin == roll(x, half) * [-sin_low, sin_high], exactly: one roll
        # instead of a negation, two slices and a concatenation.
        qk = qk * cos.unsqueeze(2) + qk.roll(half, -1) * signed_sin(sin, half).unsqueeze(2)
        query = qk[:, :, : self.query_heads].transpose(1, 2)
        key = qk[:, :, self.query_heads :].transpose(1, 2)
        value = qkv[:, :, rotated_heads:].transpose(1, 2)
        if past_key_values is not None:
            model_dtype = self.input_norm_twice.dtype
            cached_key, cached_value = past_key_values.update(
                key.to(model_dtype), value.to(model_dtype), self.layer_idx)
            if cached_key.shape[2] > length:  # earlier tokens too: attend over the whole cache
                key, value = cached_key.to(query.dtype), cached_value.to(query.dtype)
        attended = self._attend(query, key, value, attention_mask)
        hidden_states = hidden_states + self.o(attended.transpose(1, 2).reshape(batch, length, -1))
        gate, up = self.gate_up(self._norm(hidden_states, self.post_attention_norm_twice)).split(
            self.intermediate, dim=-1)
        return hidden_states + self.down(F.silu(gate) * up)

    def decode_one(self, hidden: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, cache,
                   mask: torch.Tensor | None = None, starts: list[int] | None = None) -> torch.Tensor:
        """`forward` for one new token per row ([rows, 1, hidden]) after cached ones: the
        same arithmetic as the many-rows path, without its reshapes and no-op casts, and
        the projections' decode kernels called directly. `forward` uses it for every such
        step, and modules/engine/kernels/decode_step.py calls it straight (`cos` and `sin`,
        the signed form from `signed_sin`, come unsqueezed for the heads).

        A left-padded batch gives a `mask` (as transformers passes it) or `starts`, each
        row's first real cache column (`_attend_one` says why `starts` is exact)."""
        rows = hidden.shape[0]
        rotated_heads = self.query_heads + self.kv_heads
        qkv = project(self.qkv, self._norm(hidden, self.input_norm_twice).view(rows, -1))
        qkv = qkv.view(rows, 1, rotated_heads + self.kv_heads, self.head_dim)
        qk = qkv[:, :, :rotated_heads]
        if self.head_norm is not None:
            qk = self.head_norm * torch.rms_norm(qk, (self.head_dim,), eps=self.head_norm_eps)
        qk = qk * cos + qk.roll(self.head_dim // 2, -1) * sin
        key, value = cache.update(qk[:, :, self.query_heads:].transpose(1, 2),
                                  qkv[:, :, rotated_heads:].transpose(1, 2), self.layer_idx)
        attended = self._attend_one(qk[:, :, : self.query_heads].transpose(1, 2), key, value, mask, starts)
        hidden = hidden + project(self.o, attended.view(rows, -1)).view(rows, 1, -1)
        gate, up = project(self.gate_up, self._norm(hidden, self.post_attention_norm_twice).view(rows, -1)
                            ).split(self.intermediate, dim=-1)
        return hidden + project(self.down, F.silu(gate) * up).view(rows, 1, -1)

    def _attend(self, query, key, value, mask) -> torch.Tensor:
        length, seen = query.shape[2], key.shape[2]
        if length == 1:
            return self._attend_one(query, key, value, mask)
        if mask is None and length > 1 and seen > length:  # new tokens after cached ones
            mask = torch.ones(length, seen, dtype=torch.bool, device=query.device).tril(seen - length)
        if mask is not None and mask.is_floating_point():  # additive, in the model's dtype
            mask = mask.to(query.dtype)
        return F.scaled_dot_product_attention(
            query, key, value, attn_mask=mask, is_causal=mask is None and length > 1,
            scale=self.scaling, enable_gqa=self.query_heads != self.kv_heads,
        )

    def _attend_one(self, query, key, value, mask=None, starts: list[int] | None = None) -> torch.Tensor:
        """Attention for one new token per row as two small float32 batched products.

        For a single query row, SDPA's CPU kernel spends most of its time on setup
        (~190 µs vs ~85 µs here for 200 cached tokens); the arithmetic is the same,
        softmax in float32 included.

        A left-padded batch gives `mask` (as transformers passes it) or `starts`, each
        row's first real column. Masking is equal to the row alone only up to rounding:
        where a row's columns sit in the buffer, and how many there are, decide how the
        softmax and both products split their sums (AVX-512 lanes, GEMM blocks), and at
        a near-tie those last bits change the greedy token. With `starts` each row runs
        apart over its own columns: the same operations on the same shapes as alone, so
        it computes exactly what it computes alone (the scheduler's batches do this).
        """
        batch, _, seen, dim = key.shape
        groups = self.query_heads // self.kv_heads
        queries = query.reshape(batch, self.kv_heads, groups, dim).float() * self.scaling
        keys, values = key.float(), value.float()
        if starts is not None and any(starts):
            attended = torch.stack([
                self._attend_heads(own_queries, own_keys[:, start:], own_values[:, start:], None)
                for own_queries, own_keys, own_values, start
                in zip(queries.unbind(0), keys.unbind(0), values.unbind(0), starts)])
        else:
            attended = self._attend_heads(queries.view(-1, groups, dim), keys.reshape(-1, seen, dim),
                                          values.reshape(-1, seen, dim), mask)
        return attended.to(query.dtype).view(batch, self.query_heads, 1, dim)

    def _attend_heads(self, queries, keys, values, mask) -> torch.Tensor:
        """softmax(q·kᵀ)·v for [rows·kv heads, groups, dim] queries (already scaled) and
        [rows·kv heads, seen, dim] keys and values; `mask` [rows, 1, 1, seen] or None."""
        scores = torch.bmm(queries, keys.transpose(1, 2))
        if mask is not None:  # [rows, 1, 1, seen]: view the scores by row to apply it
            by_row = scores.view(mask.shape[0], self.kv_heads, -1, scores.shape[-1])
            by_row = by_row.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool \
                else by_row + mask
            scores = by_row.view(scores.shape)
        weights = scores.softmax(-1)
        if self.attention_sink is not None:  # query head h reads kv head h // groups
            self.attention_sink.append(weights.view(-1, self.query_heads, weights.shape[-1]))
        return torch.bmm(weights, values)


def project(linear: nn.Module, rows: torch.Tensor) -> torch.Tensor:
    """`linear(rows)` for a [rows, in] input: a quantized layer's decode kernel directly."""
    few_rows = getattr(linear, "few_rows", None)
    if few_rows is None:
        return linear(rows)
    out = few_rows(rows if rows.dtype == linear.compute_dtype else rows.to(linear.compute_dtype))
    return out if linear.bias is None else out + linear.bias


_signed_sins: tuple[torch.Tensor, torch.Tensor] | None = None  # (sin, its signed form)


def signed_sin(sin: torch.Tensor, half: int) -> torch.Tensor:
    """[-sin_low, sin_high] for `sin`, made once per forward pass: every layer of a pass
    gets the same `sin` tensor (held here, so its identity cannot be reused)."""
    global _signed_sins
    cached = _signed_sins
    if cached is not None and cached[0] is sin:
        return cached[1]
    signed = torch.cat((-sin[..., :half], sin[..., half:]), dim=-1)
    _signed_sins = (sin, signed)
    return signed


class PrefillRotary(nn.Module):
    """The model's rotary embedding, returning cos/sin in `prefill_dtype` for prompt passes
    (it rounds them to its input's dtype, which is the model's), as-is for decode steps."""

    def __init__(self, rotary: nn.Module, prefill_dtype: torch.dtype) -> None:
        super().__init__()
        self.rotary, self.prefill_dtype = rotary, prefill_dtype

    def forward(self, x: torch.Tensor, position_ids: torch.Tensor, *args, **kwargs):
        if position_ids.shape[-1] > PREFILL_ROWS:
            x = x.to(self.prefill_dtype)
        return self.rotary(x, position_ids, *args, **kwargs)


def fused_layers(model: nn.Module) -> list[FusedLlamaLayer]:
    return [module for module in model.modules() if isinstance(module, FusedLlamaLayer)]


@contextlib.contextmanager
def recording_attention(model: nn.Module) -> Iterator[list[torch.Tensor]]:
    """Collect each fused layer's attention weights ([batch, heads, seen], in layer order)
    from the one-token passes run inside: the fused kernels compute them anyway, so seeing
    attention costs no eager pass and no second copy of the model."""
    sink: list[torch.Tensor] = []
    layers = fused_layers(model)
    for layer in layers:
        layer.attention_sink = sink
    try:
        yield sink
    finally:
        for layer in layers:
            layer.attention_sink = None


def fuse_layers(model: nn.Module, make_linear: LinearFactory,
                prefill_dtype: torch.dtype | None = None) -> int:
    """Replace each decoder layer of a fusable model in place; returns the count.

    `prefill_dtype` (when it differs from the model's): prompt passes run in it.
    """
    if not fusable(model):
        return 0
    layers = model.model.layers
    for index, layer in enumerate(layers):
        layers[index] = FusedLlamaLayer(layer, make_linear, prefill_dtype)
    rotary = getattr(model.model, "rotary_emb", None)
    if prefill_dtype is not None and rotary is not None:
        model.model.rotary_emb = PrefillRotary(rotary, prefill_dtype)
    return len(layers)


def float_linear(weight: torch.Tensor, bias: torch.Tensor | None = None) -> nn.Module:
    """The plain factory: an nn.Linear holding `weight` (and `bias`) as they are."""
    linear = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None,
                       device=weight.device, dtype=weight.dtype)
    linear.weight = nn.Parameter(weight.detach(), requires_grad=False)
    if bias is not None:
        linear.bias = nn.Parameter(bias.detach(), requires_grad=False)
    return linear
