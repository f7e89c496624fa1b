"""Raw-text completion (no chat template): what /v1/completions and evaluation harnesses use.

`prepare_raw_prompt` tokenizes the prompt as the model's tokenizer does by default
(with its start token, as vLLM does), `score_prompt` gives each prompt token's
log-probability under the tokens before it (lm-evaluation-harness's loglikelihood
requests: `echo` with `max_tokens` 0), and the continuation streams through the chat
logic's `stream_prompt`, so sampling, stop strings and logprobs behave as in chat.
"""

from __future__ import annotations

import torch

from modules.engine.compute import run_model_work
from modules.engine.model_cache import LoadedModel
from modules.errors import InvalidInputError, PromptTooLongError
from modules.tasks.chat.logprobs import FLOOR_LOGPROB, TokenLogprob, TopLogprob, token_bytes
from modules.tasks.chat.prompt import PreparedPrompt

SCORE_CHUNK = 512  # prompt tokens per forward pass when scoring


def prepare_raw_prompt(loaded: LoadedModel, prompt: str, max_new_tokens: int,
                       max_input_tokens: int | None = None) -> PreparedPrompt:
    """Token ids for a raw prompt; the reply is capped at what the window leaves."""
    if not isinstance(prompt, str) or not prompt:
        raise InvalidInputError("The prompt is empty.")
    return prepare_prompt_ids(loaded, list(loaded.tokenizer(prompt)["input_ids"]),
                              max_new_tokens, max_input_tokens)


def prepare_prompt_ids(loaded: LoadedModel, ids: list[int], max_new_tokens: int,
                       max_input_tokens: int | None = None) -> PreparedPrompt:
    """Ready token ids (a client that tokenized itself), checked against the window."""
    if any(not 0 <= i < len(loaded.tokenizer) for i in ids):
        raise InvalidInputError("A prompt token id is outside the vocabulary.")
    window = loaded.context_window()
    budget = min(window, max_input_tokens) if max_input_tokens else window
    if len(ids) >= budget:
        raise PromptTooLongError(
            f"The prompt takes {len(ids):,} tokens; this model and server take fewer than {budget:,}.")
    return PreparedPrompt(ids, 0, max(1, min(max_new_tokens, window - len(ids))))


def score_prompt(loaded: LoadedModel, ids: list[int], top: int = 0) -> list[TokenLogprob | None]:
    """log p(token i | tokens before it) for every prompt token (None for the first), with the
    `top` likeliest alternatives: raw model probabilities, no sampling knob applies."""
    scored: list[TokenLogprob | None] = [None]
    past = None
    for start in range(0, len(ids), SCORE_CHUNK):
        piece = ids[start:start + SCORE_CHUNK]
        output = run_model_work(lambda: loaded.model(  # noqa: B023 (run at once)
            input_ids=torch.tensor([piece], device=loaded.device), past_key_values=past, use_cache=True),
            loaded.lock)
        past = output.past_key_values
        rows = output.logits[0].float().log_softmax(-1).cpu()
        targets = ids[start + 1:start + len(piece) + 1]
        scored.extend(_entry(loaded, rows[i], token, top) for i, token in enumerate(targets))
    return scored


def _entry(loaded: LoadedModel, row: torch.Tensor, token_id: int, top: int) -> TokenLogprob:
    def piece(i: int, logprob: float) -> TopLogprob:
        raw = token_bytes(loaded.tokenizer, i)
        return TopLogprob(i, raw.decode("utf-8", "replace"), max(logprob, FLOOR_LOGPROB), list(raw))

    alternatives = ()
    if top:
        values, ids = torch.topk(row, top)
        alternatives = tuple(piece(int(i), float(v)) for v, i in zip(values, ids))
    chosen = piece(token_id, float(row[token_id]))
    return TokenLogprob(token_id, chosen.token, chosen.logprob, chosen.bytes, alternatives)
