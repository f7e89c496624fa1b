"""The prompt inspector: the exact text a model receives for the next turn.

It goes through `prepare_prompt`, as a reply does, so what it shows is what
generation gets: the chat template rendered, old turns dropped to fit, message
text tokenized as plain text. Special tokens are marked where the template put
them (typed `<|im_start|>` in a message is not marked: it is plain text).
"""

from __future__ import annotations

import html
from dataclasses import dataclass

from modules.engine.model_cache import LoadedModel
from modules.tasks.chat.params import GenerationParams
from modules.tasks.chat.prompt import prepare_prompt


@dataclass(frozen=True)
class RenderedPrompt:
    pieces: list[tuple[str, bool]]  # (text, is a special token) in order
    token_count: int
    dropped_turns: int

    @property
    def text(self) -> str:
        return "".join(text for text, _ in self.pieces)

    def html(self) -> str:
        """<pre> with each special token in a <mark>."""
        body = "".join(f'<mark class="special-token">{html.escape(t)}</mark>' if special else html.escape(t)
                       for t, special in self.pieces)
        return f'<pre class="rendered-prompt" style="white-space: pre-wrap">{body}</pre>'


def render_prompt(loaded: LoadedModel, messages: list[dict[str, str]], params: GenerationParams,
                  max_input_tokens: int | None = None) -> RenderedPrompt:
    """The next turn's model input for `messages` with `params`, split at special tokens."""
    prompt = prepare_prompt(loaded, messages, params.max_new_tokens, max_input_tokens, params.template_options)
    tokenizer = loaded.tokenizer
    special = set(tokenizer.all_special_ids) | {
        token_id for token_id, token in getattr(tokenizer, "added_tokens_decoder", {}).items() if token.special}
    pieces: list[tuple[str, bool]] = []
    run: list[int] = []
    for token_id in prompt.input_ids:
        if token_id in special:
            if run:
                pieces.append((tokenizer.decode(run), False))
                run = []
            pieces.append((tokenizer.decode([token_id]), True))
        else:
            run.append(token_id)
    if run:
        pieces.append((tokenizer.decode(run), False))
    return RenderedPrompt(pieces, len(prompt.input_ids), prompt.dropped_turns)
