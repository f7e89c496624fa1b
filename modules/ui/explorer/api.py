"""The explorer's named API endpoints: plain values in, JSON out (gradio_client, MCP).

Each reads a prompt afresh (no session), so a client needs nothing but these calls.
"""

from __future__ import annotations

import gradio as gr

from modules.app_context import AppContext
from modules.engine.model_cache import LoadedModel, ModelKind
from modules.tasks import next_token as nt
from modules.tasks.explorer import attention as attention_view
from modules.tasks.explorer import beam_search as beam_view
from modules.tasks.explorer import compare as compare_view
from modules.tasks.explorer import logit_lens as lens_view
from modules.tasks.explorer import sampling_stages as stages_view
from modules.tasks.explorer import scoring
from modules.ui.explorer.handlers import wrap


def register(context: AppContext) -> None:
    """Add /next_token, /sampling_stages, /logit_lens, /attention, /beam_search, /score_continuation, /compare."""
    default = context.chat_model.ref
    limit = context.settings.max_input_tokens

    def load(model: str) -> LoadedModel:
        return context.cache.get(model, ModelKind.CAUSAL_LM)

    def prompt_ids(loaded: LoadedModel, prompt: str, chat_template: bool) -> list[int]:
        return nt.encode_prompt(loaded, prompt, bool(chat_template), limit)

    def next_token(prompt: str, model: str = default, chat_template: bool = False, temperature: float = 1.0,
                   top_k: int = 0, top_p: float = 1.0, candidates: int = 10, min_p: float = 0.0) -> dict:
        """Next-token candidates (id, token, probability, logit, rank, ...) for a prompt."""
        loaded = load(model)
        dist = nt.next_token_distribution(loaded, prompt, temperature, top_k, top_p, candidates, chat_template,
                                          limit, min_p)
        return {"model": loaded.ref.text, **dist.as_dict()}

    def sampling_stages(prompt: str, model: str = default, chat_template: bool = False, temperature: float = 1.0,
                        top_k: int = 0, top_p: float = 1.0, min_p: float = 0.0, candidates: int = 10) -> dict:
        """The top candidates through generate's warpers in order (raw, ÷T, top-k, top-p, min-p), with the
        probability after each stage (null once removed), and the entropy at temperatures 0.2 to 2."""
        loaded = load(model)
        logits = nt.next_token_logits(loaded, prompt_ids(loaded, prompt, chat_template))
        stages = stages_view.sampling_stages(
            logits, loaded.tokenizer, nt.SamplingSettings(temperature, top_k, top_p, min_p), candidates)
        sweep = [vars(p) for p in stages_view.temperature_sweep(logits)]
        return {"model": loaded.ref.text, **stages.as_dict(), "temperature_sweep": sweep}

    def logit_lens(prompt: str, model: str = default, chat_template: bool = False, token: str = "",
                   candidates: int = 8) -> dict:
        """Each layer's prediction for the next token (final norm + LM head on its hidden state): top
        tokens per layer, and the rank and probability of `token` (empty: the model's own top token)."""
        loaded = load(model)
        chosen = loaded.tokenizer(token, add_special_tokens=False)["input_ids"][:1] if token else []
        result = lens_view.logit_lens(loaded, prompt_ids(loaded, prompt, chat_template),
                                      chosen[0] if chosen else None, candidates)
        return {"model": loaded.ref.text, **result.as_dict()}

    def attention(prompt: str, model: str = default, chat_template: bool = False, head: int = -1) -> dict:
        """How much the last token attends to each token of the prompt, per layer: one head, or the mean
        of the heads when head is -1."""
        loaded = load(model)
        result = attention_view.attention(loaded, prompt_ids(loaded, prompt, chat_template),
                                          None if head == -1 else head)
        return {"model": loaded.ref.text, **result.as_dict()}

    def beam_search(prompt: str, model: str = default, chat_template: bool = False, num_beams: int = 4,
                    length: int = 8, length_penalty: float = 1.0, temperature: float = 1.0, top_k: int = 0,
                    top_p: float = 1.0, min_p: float = 0.0, seed: int = 0) -> dict:
        """transformers' beam search (1 to 8 beams, 1 to 32 new tokens): the returned beams with their
        scores, the tree of kept and dropped tokens, and the greedy and a seeded sampled continuation."""
        loaded = load(model)
        result = beam_view.beam_search(loaded, prompt_ids(loaded, prompt, chat_template), num_beams, length,
                                       length_penalty, nt.SamplingSettings(temperature, top_k, top_p, min_p), seed)
        return {"model": loaded.ref.text, **result.as_dict()}

    def score_continuation(prompt: str, continuation: str, model: str = default,
                           chat_template: bool = False) -> dict:
        """p(continuation | prompt) by the chain rule, with each token's probability, rank and surprise.
        An empty prompt scores the continuation as a text of its own (every token after the first)."""
        loaded = load(model)
        if not prompt:
            result = scoring.text_surprise(loaded, continuation, limit)
        else:
            result = scoring.score_continuation(loaded, prompt_ids(loaded, prompt, chat_template), continuation, limit)
        return {"model": loaded.ref.text, **result.as_dict()}

    def compare(prompt: str, second_prompt: str = "", model: str = default, second_model: str = "",
                chat_template: bool = False, candidates: int = 10) -> dict:
        """Two next-token distributions side by side (two prompts on one model, or one prompt on two
        models with the same vocabulary) and the KL divergence between them, both ways, in bits."""
        left, right = load(model), load(second_model or model)
        result = compare_view.compare(left, prompt_ids(left, prompt, chat_template),
                                      right, prompt_ids(right, second_prompt or prompt, chat_template),
                                      shown=candidates)
        return {"models": [left.ref.text, right.ref.text], **result.as_dict()}

    for endpoint in (next_token, sampling_stages, logit_lens, attention, beam_search, score_continuation, compare):
        gr.api(wrap(endpoint), api_name=endpoint.__name__)
