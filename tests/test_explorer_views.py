"""The explorer's views (modules/tasks/explorer/): stages, lens, attention, beams, scoring, compare, sessions."""

from __future__ import annotations

import json
import math

import pytest
import torch
from transformers import LogitsProcessorList, MinPLogitsWarper, TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

from modules.engine.model_cache import ModelCache, ModelKind
from modules.errors import InvalidInputError
from modules.tasks import next_token as nt
from modules.engine.kernels.fused_llama import fused_layers
from modules.tasks.explorer import attention, beam_search, compare, logit_lens, sampling_stages, scoring, session
from tests.conftest import make_settings

PROMPT = "Hello, how are you today? The quick brown fox"


@pytest.fixture(scope="module")
def tiny(shared_cache, tiny_causal_lm_dir):
    return shared_cache.get(str(tiny_causal_lm_dir), ModelKind.CAUSAL_LM)


@pytest.fixture(scope="module")
def tiny_unfused(tiny_causal_lm_dir):
    """The same tiny model with transformers' own layers (PLAYGROUND_FAST_DECODE=0)."""
    return ModelCache(make_settings(fast_decode=False)).get(str(tiny_causal_lm_dir), ModelKind.CAUSAL_LM)


def ids_of(loaded, text=PROMPT):
    return loaded.tokenizer(text)["input_ids"]


# --- sampling stages, entropy ---------------------------------------------------------
def test_each_stage_is_transformers_warpers_applied_in_generate_order(tiny):
    logits = nt.next_token_logits(tiny, ids_of(tiny))
    settings = nt.SamplingSettings(temperature=0.8, top_k=30, top_p=0.9, min_p=0.05)
    stages = sampling_stages.sampling_stages(logits, tiny.tokenizer, settings, shown=40)

    chain, expected = [], []
    for warper in [TemperatureLogitsWarper(0.8), TopKLogitsWarper(30), TopPLogitsWarper(0.9), MinPLogitsWarper(0.05)]:
        chain.append(warper)
        expected.append(LogitsProcessorList(chain)(torch.zeros((1, 0), dtype=torch.long), logits.reshape(1, -1).clone())[0])
    assert stages.kept_per_stage == [logits.shape[-1], *(int(torch.isfinite(e).sum()) for e in expected)]
    for row in stages.rows:
        assert row.raw_probability == pytest.approx(float(logits.softmax(-1)[row.id]), abs=1e-6)
        for after, scores in zip(row.probabilities[1:], expected, strict=True):
            if torch.isfinite(scores[row.id]):
                assert after == pytest.approx(float(scores.softmax(-1)[row.id]), abs=1e-6)
            else:
                assert after is None
        removed = [name for name, p in zip(stages.stages, row.probabilities, strict=True) if p is None]
        assert row.removed_by == (removed[0] if removed else None)
        assert removed == stages.stages[len(stages.stages) - len(removed):]  # once cut, cut for good
    assert sum(row.final_probability for row in stages.rows) == pytest.approx(1.0, abs=1e-5)


def test_min_p_keeps_tokens_at_least_min_p_times_the_top(tiny):
    logits = nt.next_token_logits(tiny, ids_of(tiny))
    probabilities = logits.softmax(-1)
    dist = nt.distribution_from_logits(logits, tiny.tokenizer, nt.SamplingSettings(min_p=0.3), shown=50)
    expected = int((probabilities >= 0.3 * probabilities.max()).sum())
    assert dist.kept == expected
    assert all(c.in_min_p == (probabilities[c.id] >= 0.3 * probabilities.max()) for c in dist.candidates)
    with pytest.raises(InvalidInputError, match="min-p"):
        nt.SamplingSettings(min_p=1.5).validated()


def test_temperature_sweep_entropy(tiny):
    logits = nt.next_token_logits(tiny, ids_of(tiny))
    sweep = sampling_stages.temperature_sweep(logits)
    assert [p.temperature for p in sweep][0] == 0.2 and sweep[-1].temperature == 2.0
    at_one = next(p for p in sweep if p.temperature == 1.0)
    assert at_one.entropy_bits == pytest.approx(nt.distribution_from_logits(logits, tiny.tokenizer).entropy_bits, rel=1e-5)
    bits = [p.entropy_bits for p in sweep]
    assert all(a < b for a, b in zip(bits, bits[1:]))  # hotter is flatter
    assert all(p.effective_choices == pytest.approx(2**p.entropy_bits) for p in sweep)
    assert sweep[-1].effective_choices <= logits.shape[-1]


# --- logit lens ---------------------------------------------------------------------
@pytest.mark.parametrize("fixture", ["tiny", "tiny_unfused"])
def test_lens_last_layer_is_the_models_own_prediction(request, fixture):
    loaded = request.getfixturevalue(fixture)
    ids = ids_of(loaded)
    hooks = lambda: sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in loaded.model.modules())  # noqa: E731
    lens = logit_lens.logit_lens(loaded, ids, top=5)
    hooks_before = hooks()  # transformers' recorder adds its own on the first call, and keeps them
    layers = loaded.model.config.num_hidden_layers
    assert [layer.layer for layer in lens.layers] == list(range(layers + 1))
    final = nt.next_token_logits(loaded, ids)
    assert lens.chosen_id == lens.layers[-1].top_ids[0] and lens.layers[-1].chosen_rank == 1
    assert float(final[lens.candidate_ids[0]]) >= float(final.max()) - 0.3  # the top token, up to rounding
    assert lens.layers[-1].top_probabilities[0] == pytest.approx(float(final.softmax(-1).max()), abs=0.02)
    assert len(lens.probabilities) == layers + 1 and all(len(row) == 5 for row in lens.probabilities)
    assert logit_lens.logit_lens(loaded, ids, top=5) == lens
    assert hooks() == hooks_before  # the lens's own hooks are gone


def test_lens_reads_the_same_states_with_and_without_fused_layers(tiny, tiny_unfused):
    """Hooks (fused) and output_hidden_states (transformers' layers) agree up to int8 rounding."""
    ids = ids_of(tiny)
    fused, plain = logit_lens.layer_logits(tiny, ids), logit_lens.layer_logits(tiny_unfused, ids)
    assert fused.shape == plain.shape
    assert torch.allclose(fused[0], plain[0], atol=0.05)  # embeddings: same numbers
    assert torch.allclose(fused.softmax(-1), plain.softmax(-1), atol=0.02)


def test_lens_bad_input(tiny):
    with pytest.raises(InvalidInputError, match="No token with id"):
        logit_lens.logit_lens(tiny, ids_of(tiny), chosen_id=10**7)
    with pytest.raises(InvalidInputError, match="1 to"):
        logit_lens.logit_lens(tiny, ids_of(tiny), top=0)


def test_embedded_lens_shows_paris_rising(embedded_chat_model):
    tokenizer = embedded_chat_model.tokenizer
    [paris] = tokenizer(" Paris", add_special_tokens=False)["input_ids"]
    lens = logit_lens.logit_lens(embedded_chat_model, tokenizer("The capital of France is")["input_ids"], paris)
    ranks = [layer.chosen_rank for layer in lens.layers]
    assert ranks[-1] <= 3
    first_half = ranks[: len(ranks) // 2]
    assert min(first_half) > 50  # early layers have no idea yet
    assert lens.layers[-1].chosen_probability > 10 * max(layer.chosen_probability for layer in lens.layers[: len(ranks) // 2])


# --- attention ----------------------------------------------------------------------
def test_attention_of_the_last_position(tiny_unfused):
    ids = ids_of(tiny_unfused)
    before = tiny_unfused.model.config._attn_implementation
    mean = attention.attention(tiny_unfused, ids)
    config = tiny_unfused.model.config
    assert (mean.layers, mean.heads) == (config.num_hidden_layers, config.num_attention_heads)
    assert len(mean.tokens) == len(ids) and all(len(row) == len(ids) for row in mean.weights)
    assert all(sum(row) == pytest.approx(1.0, abs=1e-3) for row in mean.weights)
    heads = [attention.attention(tiny_unfused, ids, head=h).weights for h in range(mean.heads)]
    assert mean.weights[0] == pytest.approx([sum(col) / mean.heads for col in zip(*(h[0] for h in heads))], abs=1e-4)
    assert tiny_unfused.model.config._attn_implementation == before  # eager for that pass only
    with pytest.raises(InvalidInputError, match="Heads are numbered"):
        attention.attention(tiny_unfused, ids, head=mean.heads)


def test_attention_from_fused_layers_without_an_extra_model_pass(tiny, tiny_unfused):
    """Fused CPU layers hand over the last token's attention their kernel computes."""
    if tiny.device.type != "cpu":
        pytest.skip("fused layers are made for CPU chat models only")
    ids = ids_of(tiny)
    fused = attention.attention(tiny, ids)
    plain = attention.attention(tiny_unfused, ids)
    assert (fused.layers, fused.heads) == (plain.layers, plain.heads)
    assert all(sum(row) == pytest.approx(1.0, abs=1e-3) for row in fused.weights)
    # int8 weights here, bf16 there: close, not equal
    assert torch.tensor(fused.weights) == pytest.approx(torch.tensor(plain.weights), abs=0.05)
    assert next(iter(fused_layers(tiny.model))).attention_sink is None  # recording ends with the pass


# --- beam search ----------------------------------------------------------------------
def test_beam_search_returns_generates_own_hypotheses(tiny):
    ids = ids_of(tiny)
    result = beam_search.beam_search(tiny, ids, num_beams=3, length=4, settings=nt.SamplingSettings(top_k=5), seed=1)
    reference = tiny.model.generate(torch.tensor([ids]), num_beams=3, num_return_sequences=3, max_new_tokens=4,
                                    do_sample=False, early_stopping=True, pad_token_id=tiny.tokenizer.eos_token_id)
    assert [b.token_ids for b in result.beams] == [row[len(ids):] for row in reference.tolist()]
    assert all(b.score is not None for b in result.beams)
    kept = [n for n in result.nodes if n.kept]
    for beam in result.beams:  # every hypothesis is a path of kept nodes from the prompt
        parent = None
        for token_id in beam.token_ids:
            parent = next(n.index for n in kept if n.parent == parent and n.token_id == token_id)
    assert any(not n.kept for n in result.nodes)
    for node in result.nodes:
        assert node.path_logprob <= 1e-4 and node.logprob <= 1e-4
    greedy = tiny.model.generate(torch.tensor([ids]), do_sample=False, max_new_tokens=4,
                                 pad_token_id=tiny.tokenizer.eos_token_id)
    assert result.greedy.token_ids == greedy[0, len(ids):].tolist()
    again = beam_search.beam_search(tiny, ids, num_beams=3, length=4, settings=nt.SamplingSettings(top_k=5), seed=1)
    assert again.sampled == result.sampled  # seeded


@pytest.mark.parametrize(("beams", "length", "message"), [(0, 4, "Beams"), (9, 4, "Beams"), (2.5, 4, "Beams"),
                                                          (2, 0, "Length"), (2, 999, "Length")])
def test_beam_search_limits(tiny, beams, length, message):
    with pytest.raises(InvalidInputError, match=message):
        beam_search.beam_search(tiny, ids_of(tiny), num_beams=beams, length=length)


# --- scoring ------------------------------------------------------------------------
def test_chain_rule_probability_of_a_continuation(tiny):
    prompt_ids = ids_of(tiny, "The quick brown")
    result = scoring.score_continuation(tiny, prompt_ids, " fox jumps")
    added = tiny.tokenizer(" fox jumps", add_special_tokens=False)["input_ids"]
    with torch.inference_mode():  # the reference: one plain pass over prompt + continuation
        rows = tiny.model(input_ids=torch.tensor([prompt_ids + added], device=tiny.model.device),
                          use_cache=False).logits[0].float().cpu()
    for index, (token_id, scored) in enumerate(zip(added, result.tokens, strict=True)):
        row = rows[len(prompt_ids) - 1 + index]
        assert scored.id == token_id and scored.rank == nt.token_rank(row, token_id)
        assert scored.probability == pytest.approx(float(row.softmax(-1)[token_id]), rel=0.02)
        assert scored.surprise_bits == pytest.approx(-math.log2(scored.probability))
    assert result.probability == pytest.approx(math.prod(t.probability for t in result.tokens), rel=1e-6)

    state = nt.start(tiny, "The quick brown")  # stepping through the continuation agrees (up to int8 rounding)
    stepped = 1.0
    for token_id in added:
        stepped *= float(state.logits.softmax(-1)[token_id])
        nt.append_token(tiny, state, token_id, "picked", nt.SamplingSettings())
    assert result.probability == pytest.approx(stepped, rel=0.3)

    pieces = scoring.score_continuation(tiny, prompt_ids, [" fo", "x"])
    expected = [*tiny.tokenizer(" fo", add_special_tokens=False)["input_ids"],
                *tiny.tokenizer("x", add_special_tokens=False)["input_ids"]]
    assert [t.id for t in pieces.tokens] == expected


def test_text_surprise_matches_the_prompt_surprise(tiny):
    result = scoring.text_surprise(tiny, PROMPT)
    state = nt.start(tiny, PROMPT)
    assert [t.probability for t in result.tokens] == pytest.approx([math.exp(lp) for lp in state.prompt_logprobs[1:]], rel=0.15)
    assert result.perplexity == pytest.approx(nt.prompt_surprise(tiny.tokenizer, state).perplexity, rel=0.05)


@pytest.mark.parametrize(("continuation", "message"), [("", "Type a continuation"), ([], "Type a continuation"),
                                                       ("word " * 400, "reads at most")])
def test_scoring_bad_input(tiny, continuation, message):
    with pytest.raises(InvalidInputError, match=message):
        scoring.score_continuation(tiny, ids_of(tiny), continuation)


# --- compare ---------------------------------------------------------------------------
def test_compare_two_prompts(tiny):
    a, b = ids_of(tiny, "i am good"), ids_of(tiny, "i am good ")
    result = compare.compare(tiny, a, tiny, b, shown=5)
    assert [c.id for c in result.left.candidates] == [c.id for c in nt.next_token_distribution(tiny, a, shown=5).candidates]
    assert result.kl_left_right_bits > 0 and result.kl_right_left_bits > 0
    same = compare.compare(tiny, a, tiny, a)
    assert same.kl_left_right_bits == pytest.approx(0.0, abs=1e-6)
    p, q = torch.tensor([2.0, 0.0]), torch.tensor([0.0, 0.0])
    pa = p.softmax(-1)
    assert compare.kl_bits(p, q) == pytest.approx(float((pa * (pa / 0.5).log2()).sum()), rel=1e-5)


def test_compare_refuses_different_vocabularies(tiny, embedded_chat_model):
    with pytest.raises(InvalidInputError, match="different vocabularies"):
        compare.compare(tiny, ids_of(tiny), embedded_chat_model, ids_of(embedded_chat_model))


# --- branches, export and replay ------------------------------------------------------------
def test_branches_keep_their_text_and_switch_back(tiny):
    walk = session.new_session(tiny, PROMPT)
    nt.take_steps(tiny, walk.explorer, 3, "sample", nt.SamplingSettings(temperature=1.5), seed=4)
    main_ids = list(walk.explorer.ids)
    alternative = int(torch.argsort(walk.explorer.logits, descending=True)[3])
    branch = session.fork(tiny, walk, alternative, nt.SamplingSettings())
    assert walk.active == branch.name and branch.parent == "main" and branch.fork_at == 3
    assert walk.explorer.ids == [*main_ids, alternative]
    session.switch(tiny, walk, "main")
    assert walk.explorer.ids == main_ids and walk.explorer.past_key_values.get_seq_length() == len(main_ids)
    session.switch(tiny, walk, branch.name)
    assert walk.explorer.ids[-1] == alternative
    with pytest.raises(InvalidInputError, match="No branch"):
        session.switch(tiny, walk, "nope")


def test_export_then_replay_is_exact(tiny):
    walk = session.new_session(tiny, PROMPT)
    nt.take_steps(tiny, walk.explorer, 2, "greedy", nt.SamplingSettings())
    nt.take_steps(tiny, walk.explorer, 3, "sample", nt.SamplingSettings(temperature=2.0, top_k=20), seed=9)
    session.fork(tiny, walk, 7, nt.SamplingSettings())
    nt.take_steps(tiny, walk.explorer, 2, "sample", nt.SamplingSettings(min_p=0.01), seed=2)
    exported = session.export_session(walk)
    data = json.loads(exported)
    assert data["model"] == tiny.ref.text and len(data["branches"]) == 2
    assert all(step["alternatives"] for b in data["branches"] for step in b["steps"])

    replayed = session.replay_session(tiny, exported)
    assert replayed.active == walk.active and replayed.explorer.ids == walk.explorer.ids
    assert session.export_session(replayed) == exported

    tampered = json.loads(exported)
    tampered["branches"][0]["steps"][0]["token_id"] += 1  # a greedy step that greedy would not take
    with pytest.raises(InvalidInputError, match="Replay differs at step 1"):
        session.replay_session(tiny, json.dumps(tampered))


@pytest.mark.parametrize(("text", "message"), [("", "Paste"), ("{", "not JSON"), ('{"a": 1}', "not an exported"),
                                               ('{"format": "transformers-playground/explorer-session", "version": 9}', "version")])
def test_replay_bad_input(tiny, text, message):
    with pytest.raises(InvalidInputError, match=message):
        session.replay_session(tiny, text)


def test_embedded_attention_gathers_on_the_first_token(shared_cache):
    """A real model's 'attention sink': most layers put the largest share on the first token."""
    from modules.config import EMBEDDED_MODEL

    plain = ModelCache(make_settings(fast_decode=False)).get(EMBEDDED_MODEL, ModelKind.CAUSAL_LM)
    fused = shared_cache.get(EMBEDDED_MODEL, ModelKind.CAUSAL_LM)  # the app's default: fused int4
    ids = plain.tokenizer("The capital of France is")["input_ids"]
    result = attention.attention(plain, ids)
    assert result.layers == plain.model.config.num_hidden_layers
    firsts = [row.index(max(row)) == 0 for row in result.weights]
    assert sum(firsts) > result.layers // 2
    assert all(sum(row) == pytest.approx(1.0, abs=1e-2) for row in result.weights)
    from_fused = attention.attention(fused, ids)  # 0.007 apart at most when measured
    assert torch.tensor(from_fused.weights) == pytest.approx(torch.tensor(result.weights), abs=0.03)


def test_a_model_without_a_chat_template_is_told_to_use_raw_text(tiny, monkeypatch):
    monkeypatch.setattr(tiny.tokenizer, "chat_template", None)
    with pytest.raises(InvalidInputError, match="no chat template: use raw text"):
        nt.encode_prompt(tiny, "hi", use_chat_template=True)
