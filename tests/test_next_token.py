"""The next-token logic: distributions, sampling knobs, stepping with the cache, surprise."""

from __future__ import annotations

import math

import pytest
import torch
from transformers import (
    LogitsProcessorList,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from modules.tasks import next_token as nt
from modules.errors import InvalidInputError
from modules.engine.model_cache import ModelKind

PROMPT = "Hello, how are you today? The quick brown fox"


@pytest.fixture(scope="module")
def tiny(shared_cache, tiny_causal_lm_dir):
    return shared_cache.get(str(tiny_causal_lm_dir), ModelKind.CAUSAL_LM)


def direct_logits(loaded, ids) -> torch.Tensor:
    """The reference: one plain forward pass over the whole text, no cache, no chunks."""
    with torch.inference_mode():
        out = loaded.model(input_ids=torch.tensor([ids], device=loaded.model.device), use_cache=False)
    return out.logits[0].float().cpu()


def assert_same_scores(cached: torch.Tensor, fresh: torch.Tensor) -> None:
    """Equal up to bfloat16 rounding (one step is 1/32 at these logit sizes).

    On CPU the chat model holds int8 weights (modules/engine/kernels/fast_decode.py): one new token
    goes through the int8 matrix-vector kernel and a float32 attention for one query,
    a whole text through a bf16 matmul on the same int8 values and SDPA; the two round
    differently (measured: up to ~0.2 here).
    """
    assert torch.allclose(cached, fresh, atol=0.3, rtol=0)
    # A logit off by d moves its probability by a factor e^d: 0.1 -> ~10 %.
    assert torch.allclose(cached.softmax(-1), fresh.softmax(-1), atol=1e-3, rtol=0.15)


def hf_warped(logits, temperature, top_k, top_p) -> torch.Tensor:
    warpers = LogitsProcessorList([TemperatureLogitsWarper(temperature)])
    if top_k:
        warpers.append(TopKLogitsWarper(top_k))
    if top_p < 1:
        warpers.append(TopPLogitsWarper(top_p))
    return warpers(torch.zeros((1, 0), dtype=torch.long), logits.reshape(1, -1).clone())[0]


# --- distributions ------------------------------------------------------------
@pytest.mark.parametrize("temperature", [1.0, 0.5, 2.5])
def test_probabilities_are_softmax_of_scaled_logits_of_a_direct_pass(tiny, temperature):
    ids = tiny.tokenizer(PROMPT)["input_ids"]
    expected_logits = direct_logits(tiny, ids)[-1]
    expected = (expected_logits / temperature).softmax(-1)

    dist = nt.next_token_distribution(tiny, PROMPT, temperature=temperature, shown=20)

    assert dist.vocab_size == expected.shape[-1]
    expected_order = torch.argsort(expected_logits, descending=True, stable=True)[:20].tolist()
    assert [c.id for c in dist.candidates] == expected_order
    for rank, c in enumerate(dist.candidates, start=1):
        assert c.rank == rank
        assert c.probability == pytest.approx(float(expected[c.id]), abs=1e-5)
        assert c.logit == pytest.approx(float(expected_logits[c.id]), abs=1e-4)
        assert c.token == nt.token_label(tiny.tokenizer, c.id)
    cumulative = torch.tensor([c.probability for c in dist.candidates]).cumsum(0)
    assert [c.cumulative for c in dist.candidates] == pytest.approx(cumulative.tolist(), abs=1e-5)
    entropy = -(expected * expected.clamp_min(1e-45).log()).sum() / math.log(2)
    assert dist.entropy_bits == pytest.approx(float(entropy), rel=1e-4)


@pytest.mark.parametrize(
    ("temperature", "top_k", "top_p"),
    [(1.0, 5, 1.0), (1.0, 0, 0.3), (0.7, 40, 0.5), (1.8, 3, 0.95), (0.4, 0, 0.9)],
)
def test_filtering_matches_transformers_warpers(tiny, temperature, top_k, top_p):
    logits = nt.next_token_logits(tiny, tiny.tokenizer(PROMPT)["input_ids"])
    expected_final = hf_warped(logits, temperature, top_k, top_p)
    expected_after_k = hf_warped(logits, temperature, top_k, 1.0)

    dist = nt.distribution_from_logits(
        logits, tiny.tokenizer, nt.SamplingSettings(temperature, top_k, top_p), shown=nt.MAX_SHOWN
    )

    assert dist.kept == int(torch.isfinite(expected_final).sum())
    expected_probs = expected_final.softmax(-1)
    for c in dist.candidates:
        assert c.in_top_k == bool(torch.isfinite(expected_after_k[c.id]))
        assert c.in_top_p == bool(torch.isfinite(expected_final[c.id]))
        assert c.final_probability == pytest.approx(float(expected_probs[c.id]), abs=1e-6)
    kept_mass = sum(c.final_probability for c in dist.candidates if c.in_top_p)
    assert kept_mass == pytest.approx(1.0, abs=1e-5)  # every survivor ranks within the shown 100


def test_top_k_and_top_p_keep_what_their_definitions_say(tiny):
    """Independently of transformers: top-k keeps the k best; top-p the smallest nucleus ≥ p."""
    logits = nt.next_token_logits(tiny, tiny.tokenizer(PROMPT)["input_ids"])
    order = torch.argsort(logits, descending=True).tolist()
    kth_best = logits.sort(descending=True).values[6]
    at_least_kth = {i for i, score in enumerate(logits.tolist()) if score >= kth_best}  # ties stay
    top_k = nt.distribution_from_logits(logits, tiny.tokenizer, nt.SamplingSettings(top_k=7), shown=20)
    assert {c.id for c in top_k.candidates if c.in_top_p} == at_least_kth
    assert top_k.kept == top_k.kept_by_top_k == len(at_least_kth) >= 7

    cumulative = logits.softmax(-1)[order].cumsum(0)
    nucleus_size = int((cumulative < 0.6).sum()) + 1
    top_p = nt.distribution_from_logits(logits, tiny.tokenizer, nt.SamplingSettings(top_p=0.6), shown=100)
    assert top_p.kept == nucleus_size
    kept = {c.id for c in top_p.candidates if c.in_top_p}
    boundary = logits[order[nucleus_size - 1]]  # the last logit the nucleus needs
    # Tokens tied with the boundary may be kept in either order (kernels differ), so the nucleus
    # is every token above the boundary plus enough of those tied with it.
    assert {i for i in order[:nucleus_size] if logits[i] > boundary} <= kept
    assert all(logits[i] >= boundary for i in kept) and len(kept) == nucleus_size


def test_messages_are_wrapped_in_the_chat_template(tiny):
    messages = [{"role": "user", "content": "Hello, how are you?"}]
    text = tiny.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    ids = tiny.tokenizer(text, add_special_tokens=False)["input_ids"]
    assert 1 in ids  # <|im_start|> is in the wrapped prompt

    from_messages = nt.next_token_distribution(tiny, messages, shown=5)
    from_ids = nt.next_token_distribution(tiny, ids, shown=5)
    from_toggle = nt.next_token_distribution(tiny, "Hello, how are you?", use_chat_template=True, shown=5)
    assert from_messages.candidates == from_ids.candidates == from_toggle.candidates


# --- stepping -------------------------------------------------------------------
def test_greedy_step_appends_the_argmax(tiny):
    state = nt.start(tiny, PROMPT)
    before = list(state.ids)
    expected = int(direct_logits(tiny, before)[-1].argmax())

    [step] = nt.take_steps(tiny, state, 1, "greedy", nt.SamplingSettings(temperature=2.0, top_k=3))

    assert state.ids == [*before, expected]
    assert (step.token_id, step.rank, step.how) == (expected, 1, "greedy")


def test_seeded_sampling_is_reproducible_and_respects_the_filters(tiny):
    settings = nt.SamplingSettings(temperature=2.0, top_k=4)

    def walk(seed: int) -> list[int]:
        state = nt.start(tiny, PROMPT)
        steps = nt.take_steps(tiny, state, 8, "sample", settings, seed=seed)
        assert all(step.rank <= 4 for step in steps)  # never outside the top-k cut
        return state.ids

    assert walk(7) == walk(7)
    assert len({tuple(walk(seed)) for seed in range(4)}) > 1  # the seed matters


def test_stepping_with_the_cache_matches_a_fresh_pass(tiny):
    state = nt.start(tiny, PROMPT)
    settings = nt.SamplingSettings(temperature=1.5)
    nt.take_steps(tiny, state, 6, "sample", settings, seed=3)
    nt.append_token(tiny, state, 5, "picked", settings)

    fresh = direct_logits(tiny, state.ids)[-1]
    assert state.past_key_values.get_seq_length() == len(state.ids)
    assert_same_scores(state.logits, fresh)

    cached = nt.distribution_from_logits(state.logits, tiny.tokenizer, settings, shown=5)
    fresh_dist = nt.next_token_distribution(tiny, state.ids, temperature=1.5, shown=5)
    fresh_probabilities = (fresh / 1.5).softmax(-1)
    for c in cached.candidates[:3]:  # near-ties may swap places between kernels; their probabilities may not move
        assert float(fresh_probabilities[c.id]) == pytest.approx(c.probability, abs=1e-3, rel=0.15)
    for a, b in zip(cached.candidates, fresh_dist.candidates, strict=True):
        assert a.probability == pytest.approx(b.probability, abs=1e-3, rel=0.15)


def test_undo_restores_the_previous_text_and_distribution(tiny):
    state = nt.start(tiny, PROMPT)
    nt.take_steps(tiny, state, 3, "greedy", nt.SamplingSettings())
    ids_before_last = state.ids[:-1]

    step = nt.undo(tiny, state)

    assert state.ids == ids_before_last and len(state.steps) == 2 and step.how == "greedy"
    assert state.past_key_values.get_seq_length() == len(state.ids)
    assert_same_scores(state.logits, direct_logits(tiny, state.ids)[-1])
    nt.undo(tiny, state), nt.undo(tiny, state)
    assert state.ids == state.prompt_ids
    with pytest.raises(InvalidInputError, match="Nothing to undo"):
        nt.undo(tiny, state)


def test_steps_stop_at_a_stop_token_and_at_the_context_window(tiny):
    state = nt.start(tiny, PROMPT)
    greedy = int(state.logits.argmax())
    steps = nt.take_steps(tiny, state, 5, "greedy", nt.SamplingSettings(), stop_token_ids=[greedy])
    assert len(steps) == 1

    long_state = nt.start(tiny, "a " * 200)  # close to the tiny model's 256 positions
    room = long_state.room
    assert 0 < room < 100
    assert len(nt.take_steps(tiny, long_state, 100, "greedy", nt.SamplingSettings())) == room
    with pytest.raises(InvalidInputError, match="context window"):
        nt.take_steps(tiny, long_state, 1, "greedy", nt.SamplingSettings())


# --- surprise -----------------------------------------------------------------
def test_prompt_surprise_comes_from_the_same_pass_and_chunking_changes_nothing(tiny):
    state = nt.start(tiny, PROMPT)
    ids = state.prompt_ids
    logprobs = direct_logits(tiny, ids).log_softmax(-1)
    expected = [float(logprobs[i - 1, ids[i]]) for i in range(1, len(ids))]

    assert state.prompt_logprobs[0] is None
    assert state.prompt_logprobs[1:] == pytest.approx(expected, abs=0.05)
    chunked = nt.prefill(tiny, ids, chunk=4)  # 4-row chunks take the int8 kernel: see assert_same_scores
    assert chunked.token_logprobs[1:] == pytest.approx(expected, abs=0.15)
    assert_same_scores(chunked.logits, direct_logits(tiny, ids)[-1])

    surprise = nt.prompt_surprise(tiny.tokenizer, state)
    assert [label for label, _ in surprise.pieces] == [nt.token_label(tiny.tokenizer, i) for i in ids]
    assert surprise.perplexity == pytest.approx(math.exp(-sum(expected) / len(expected)), rel=0.02)
    assert surprise.most_surprising[0][1] == min(p for _, p in surprise.pieces[1:])


# --- showing tokens -------------------------------------------------------------
def test_whitespace_and_invisible_characters_are_made_visible():
    assert nt.visible_text(" good\n\tx\u200b\u00a0") == "␣good↵⇥x⟨U+200B⟩⟨U+00A0⟩"


def test_partial_characters_show_their_bytes(tiny):
    ids = tiny.tokenizer("😀")["input_ids"]
    labels = [nt.token_label(tiny.tokenizer, i) for i in ids]
    assert "\ufffd" not in "".join(labels)
    assert "".join(labels) == "😀" or all(label.startswith("⟨") for label in labels)


# --- bad input ----------------------------------------------------------------------
@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"text_or_ids": ""}, "Type a prompt"),
        ({"text_or_ids": "  \n\t"}, "Type a prompt"),
        ({"text_or_ids": "word " * 400}, "reads at most 256"),
        ({"text_or_ids": "hi", "temperature": 0}, "Temperature"),
        ({"text_or_ids": "hi", "temperature": -1}, "Temperature"),
        ({"text_or_ids": "hi", "temperature": float("nan")}, "Temperature"),
        ({"text_or_ids": "hi", "temperature": 11}, "Temperature"),
        ({"text_or_ids": "hi", "top_k": -1}, "top-k"),
        ({"text_or_ids": "hi", "top_k": 2.5}, "top-k"),
        ({"text_or_ids": "hi", "top_k": 10**6}, "top-k"),
        ({"text_or_ids": "hi", "top_p": 0}, "top-p"),
        ({"text_or_ids": "hi", "top_p": 1.5}, "top-p"),
        ({"text_or_ids": "hi", "shown": 0}, "candidates shown"),
        ({"text_or_ids": "hi", "shown": 1000}, "candidates shown"),
        ({"text_or_ids": []}, "no tokens"),
    ],
)
def test_bad_input_is_a_clear_error(tiny, kwargs, message):
    with pytest.raises(InvalidInputError, match=message):
        nt.next_token_distribution(tiny, **kwargs)


def test_odd_text_is_fine(tiny):
    for text in ["مرحبا بالعالم", "zero\u200bwidth", "emoji 😀🎉", "<|im_end|> special", "\x00\x07 control"]:
        dist = nt.next_token_distribution(tiny, text, shown=3)
        assert len(dist.candidates) == 3


def test_a_bad_token_id_is_refused(tiny):
    state = nt.start(tiny, PROMPT)
    with pytest.raises(InvalidInputError, match="No token with id"):
        nt.append_token(tiny, state, 10**6, "picked", nt.SamplingSettings())
    with pytest.raises(InvalidInputError, match="strategy"):
        nt.take_steps(tiny, state, 1, "beam", nt.SamplingSettings())
    with pytest.raises(InvalidInputError, match="Token ids must be"):
        nt.next_token_distribution(tiny, [1, 10**9])
    with pytest.raises(InvalidInputError, match="must be text"):
        nt.next_token_distribution(tiny, {"a": 1})


# --- the real embedded model --------------------------------------------------------
def test_embedded_model_knows_the_capital_of_france(embedded_chat_model):
    dist = nt.next_token_distribution(embedded_chat_model, "The capital of France is", shown=5)
    top = dist.candidates[0]
    assert embedded_chat_model.tokenizer.decode([top.id]) == " Paris"
    assert top.token == "␣Paris" and top.probability > 0.5


def test_embedded_tokenizer_gives_one_word_two_ids(embedded_chat_model):
    """'good' starting the text and ' good' after a space are different tokens."""
    tokenizer = embedded_chat_model.tokenizer
    first = nt.token_pieces(tokenizer, tokenizer("good morning")["input_ids"])[0]
    last = nt.token_pieces(tokenizer, tokenizer("i am good")["input_ids"])[-1]
    assert (first.label, last.label) == ("good", "␣good")
    assert first.id != last.id


def test_embedded_byte_tokens_show_the_bytes_of_the_text(embedded_chat_model):
    """Byte-level pieces of '你好 😀' read as hex bytes that, joined, are its UTF-8."""
    tokenizer = embedded_chat_model.tokenizer
    labels = [p.label for p in nt.token_pieces(tokenizer, tokenizer("你好 😀")["input_ids"])]
    assert all("⟨" in label for label in labels) and "\ufffd" not in "".join(labels)
    hex_bytes = "".join(labels).replace("␣", "⟨20⟩").replace("⟩⟨", " ").strip("⟨⟩").split()
    assert bytes(int(b, 16) for b in hex_bytes) == "你好 😀".encode()
