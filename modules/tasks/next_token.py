"""What a causal LM does at each step: score every token, reshape the scores, pick one.

The explorer tab and the HTTP API show this. (Zero-shot classification scores its
labels with its own prompt and a prefix KV cache: modules/tasks/zero_shot.py.)
Sampling knobs are applied with transformers' own logits warpers, in the order
`generate` applies them (temperature, top-k, top-p, then min-p), so what the tab
shows is exactly what `generate` would sample from.

Stepping keeps the prefix's keys/values (`past_key_values`) in an `ExplorerState`
owned by one user session (never on the shared model), so one step costs a
one-token forward pass instead of a pass over the whole text.
"""

from __future__ import annotations

import math
import re
import threading
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field

import torch
from transformers import (
    LogitsProcessorList,
    MinPLogitsWarper,
    PreTrainedTokenizerBase,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)
from transformers.convert_slow_tokenizer import bytes_to_unicode

from modules.errors import InvalidInputError
from modules.messages import message
from modules.engine.compute import run_model_work
from modules.engine.kernels.decode_step import one_token_step, step_cache
from modules.engine.model_cache import LoadedModel
from modules.tasks.validation import is_number, is_whole

MAX_TEMPERATURE = 10.0
MAX_SHOWN = 100
MAX_STEPS_AT_ONCE = 100
ALTERNATIVES_KEPT = 5  # top candidates recorded with each step
PREFILL_CHUNK = 256  # prompt tokens per forward pass: bounds the logits held at once
LN2 = math.log(2.0)

WHITESPACE_SIGNS = {" ": "␣", "\n": "↵", "\t": "⇥", "\r": "␍"}
STRATEGIES = ("greedy", "sample")


# --- settings ------------------------------------------------------------
@dataclass(frozen=True)
class SamplingSettings:
    """The knobs of sampling; top_k 0, top_p 1.0 and min_p 0 mean 'off', as in generate."""

    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    min_p: float = 0.0

    def validated(self, vocab_size: int | None = None) -> SamplingSettings:
        """Itself, or an InvalidInputError naming the bad knob and its range."""
        temperature, top_k, top_p, min_p = self.temperature, self.top_k, self.top_p, self.min_p
        if not is_number(temperature) or not 0 < temperature <= MAX_TEMPERATURE:
            raise InvalidInputError(message("explorer.temperature_range", limit=MAX_TEMPERATURE, value=temperature))
        upper = vocab_size if vocab_size else "the vocabulary size"
        if not is_whole(top_k) or top_k < 0 or (vocab_size and top_k > vocab_size):
            raise InvalidInputError(message("explorer.top_k_range", limit=upper, value=top_k))
        if not is_number(top_p) or not 0 < top_p <= 1:
            raise InvalidInputError(message("explorer.top_p_range", value=top_p))
        if not is_number(min_p) or not 0 <= min_p <= 1:
            raise InvalidInputError(message("explorer.min_p_range", value=min_p))
        return SamplingSettings(float(temperature), int(top_k), float(top_p), float(min_p))

    def warpers(self) -> LogitsProcessorList:
        """transformers' warpers for these settings, in generate's order."""
        warpers = LogitsProcessorList([TemperatureLogitsWarper(self.temperature)])
        if self.top_k:
            warpers.append(TopKLogitsWarper(top_k=self.top_k))
        if self.top_p < 1.0:
            warpers.append(TopPLogitsWarper(top_p=self.top_p))
        if self.min_p > 0:
            warpers.append(MinPLogitsWarper(min_p=self.min_p))
        return warpers


def validate_shown(shown: int) -> int:
    if not is_whole(shown) or not 1 <= shown <= MAX_SHOWN:
        raise InvalidInputError(message("explorer.shown_range", limit=MAX_SHOWN, value=shown))
    return int(shown)


# --- showing tokens ------------------------------------------------------
_BYTE_OF_CHAR = {char: byte for byte, char in bytes_to_unicode().items()}
_ESCAPED_BYTES = re.compile(r"(?:\\x[0-9a-f]{2})+")


def visible_text(text: str) -> str:
    """Text with whitespace and invisible characters made visible ('␣good' vs 'good')."""
    out = []
    for char in text:
        if char in WHITESPACE_SIGNS:
            out.append(WHITESPACE_SIGNS[char])
        elif unicodedata.category(char) in ("Cc", "Cf", "Zs", "Zl", "Zp", "Co", "Cn"):
            out.append(f"⟨U+{ord(char):04X}⟩")
        else:
            out.append(char)
    return "".join(out)


def token_label(tokenizer: PreTrainedTokenizerBase, token_id: int) -> str:
    """How one token reads on screen; a token holding part of a character shows its bytes."""
    token_id = int(token_id)
    text = tokenizer.decode([token_id], skip_special_tokens=False, clean_up_tokenization_spaces=False)
    if "\ufffd" not in text:
        return visible_text(text)
    raw = tokenizer.convert_ids_to_tokens(token_id) or ""
    if raw and all(char in _BYTE_OF_CHAR for char in raw):  # byte-level BPE piece
        decoded = bytes(_BYTE_OF_CHAR[char] for char in raw).decode("utf-8", "backslashreplace")
        return _ESCAPED_BYTES.sub(_bytes_in_brackets, visible_text(decoded))
    return visible_text(raw or text)


def _bytes_in_brackets(match: re.Match) -> str:
    """'\\xe4\\xbd' -> '⟨e4 bd⟩': bytes that are only part of a character."""
    return "⟨" + match.group(0)[2:].replace("\\x", " ") + "⟩"


@dataclass(frozen=True)
class TokenPiece:
    id: int
    label: str  # whitespace visible
    special: bool


def token_pieces(tokenizer: PreTrainedTokenizerBase, ids: Sequence[int]) -> list[TokenPiece]:
    special = set(tokenizer.all_special_ids)
    return [TokenPiece(int(i), token_label(tokenizer, i), int(i) in special) for i in ids]


# --- prompts -------------------------------------------------------------
Messages = Sequence[Mapping[str, str]]


def context_window(loaded: LoadedModel, max_input_tokens: int | None = None) -> int:
    """How many tokens the model can see: its positions, capped by the app's setting."""
    if isinstance(max_input_tokens, int) and max_input_tokens > 0:
        return min(loaded.context_window(fallback=max_input_tokens), max_input_tokens)
    return loaded.context_window()


def encode_prompt(
    loaded: LoadedModel,
    prompt: str | Messages,
    use_chat_template: bool = False,
    max_input_tokens: int | None = None,
) -> list[int]:
    """Token ids of a prompt: raw text, or messages / text wrapped in the chat template."""
    tokenizer = loaded.tokenizer
    if isinstance(prompt, str):
        if not prompt.strip():
            raise InvalidInputError(message("explorer.type_a_prompt"))
        messages = [{"role": "user", "content": prompt}] if use_chat_template else None
    else:
        messages = list(prompt)
        if not messages or not all(isinstance(m, Mapping) and "content" in m for m in messages):
            raise InvalidInputError(message("explorer.messages_shape"))
    if messages is not None:
        if not tokenizer.chat_template:
            raise InvalidInputError(message("explorer.no_chat_template", model=loaded.name))
        text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    else:
        ids = tokenizer(prompt)["input_ids"]
    return check_fits(loaded, list(ids), max_input_tokens)


def check_fits(loaded: LoadedModel, ids: list[int], max_input_tokens: int | None = None) -> list[int]:
    if not ids:
        raise InvalidInputError(message("explorer.prompt_no_tokens"))
    window = context_window(loaded, max_input_tokens)
    if len(ids) > window:
        raise InvalidInputError(message("explorer.prompt_too_long", count=len(ids), model=loaded.name, window=window))
    return ids


# --- forward passes ------------------------------------------------------
@dataclass
class Prefill:
    """One pass over a prompt: the next-token logits, the cache, how likely each token was."""

    logits: torch.Tensor  # float32 [vocab]: scores for the token after the prompt
    past_key_values: object
    token_logprobs: list[float | None]  # log p(token i | tokens before it); None for the first


@torch.inference_mode()
def prefill(loaded: LoadedModel, ids: Sequence[int], chunk: int = PREFILL_CHUNK) -> Prefill:
    """Run the prompt in chunks through the cache: bounded memory, same numbers."""
    past, logprobs, last = step_cache(loaded.model), [None], None
    for start in range(0, len(ids), chunk):
        piece = list(ids[start : start + chunk])
        out = _forward(loaded, piece, past)
        past = out.past_key_values
        rows = out.logits[0].float()
        targets = torch.tensor(ids[start + 1 : start + len(piece) + 1], dtype=torch.long)
        if len(targets):
            chosen = rows[: len(targets)].log_softmax(-1).gather(1, targets.to(rows.device)[:, None])
            logprobs.extend(chosen[:, 0].tolist())
        last = rows[-1].cpu()
        del rows, out
    return Prefill(last, past, logprobs)


def _forward(loaded: LoadedModel, ids: list[int], past: object | None):
    input_ids = torch.tensor([ids], dtype=torch.long, device=loaded.device)
    return run_model_work(lambda: loaded.model(input_ids=input_ids, past_key_values=past, use_cache=True))


@torch.inference_mode()
def next_token_logits(loaded: LoadedModel, ids: Sequence[int]) -> torch.Tensor:
    """Scores for the token after `ids` from a fresh pass (float32, one per vocabulary entry)."""
    return prefill(loaded, ids).logits


# --- distributions -------------------------------------------------------
@dataclass(frozen=True)
class Candidate:
    id: int
    token: str  # whitespace visible
    logit: float
    probability: float  # softmax(logits / temperature)
    rank: int  # 1 = highest logit
    cumulative: float  # probability of this and all higher-ranked tokens
    in_top_k: bool  # survives the top-k cut
    in_top_p: bool  # survives the top-p nucleus (taken after top-k, as generate does)
    in_min_p: bool  # survives min-p too (the last cut): sampling can pick it
    final_probability: float  # what sampling uses: renormalised over the survivors


@dataclass(frozen=True)
class Distribution:
    candidates: list[Candidate]
    settings: SamplingSettings
    vocab_size: int
    entropy_bits: float  # of softmax(logits / temperature)
    filtered_entropy_bits: float  # of what sampling draws from
    kept: int  # tokens sampling can still pick
    kept_by_top_k: int  # tokens left after top-k alone (more than k when scores tie)

    def as_dict(self) -> dict:
        return {
            "candidates": [asdict(c) for c in self.candidates],
            "temperature": self.settings.temperature,
            "top_k": self.settings.top_k,
            "top_p": self.settings.top_p,
            "min_p": self.settings.min_p,
            "vocab_size": self.vocab_size,
            "entropy_bits": self.entropy_bits,
            "filtered_entropy_bits": self.filtered_entropy_bits,
            "kept": self.kept,
            "kept_by_top_k": self.kept_by_top_k,
        }


def top_ids(logits: torch.Tensor, count: int) -> list[int]:
    """The `count` best-scoring ids, best first, ties in id order: a stable sort's top, without
    sorting the whole vocabulary (a full stable argsort costs more than a cached step)."""
    logits = logits.reshape(-1)
    threshold = torch.topk(logits, count).values[-1]
    tied_or_better = torch.nonzero(logits >= threshold)[:, 0]
    scores = logits[tied_or_better].tolist()
    ranked = sorted(zip(scores, tied_or_better.tolist()), key=lambda pair: (-pair[0], pair[1]))
    return [token_id for _, token_id in ranked[:count]]


def filter_logits(logits: torch.Tensor, settings: SamplingSettings) -> torch.Tensor:
    """Logits after temperature, top-k, top-p and min-p; removed tokens are -inf."""
    scores = logits.float().reshape(1, -1)
    return settings.warpers()(torch.zeros((1, 0), dtype=torch.long), scores)[0]


def _entropy_bits(probabilities: torch.Tensor) -> float:
    return float(torch.special.entr(probabilities).sum() / LN2)


def distribution_from_logits(
    logits: torch.Tensor,
    tokenizer: PreTrainedTokenizerBase,
    settings: SamplingSettings = SamplingSettings(),
    shown: int = 10,
) -> Distribution:
    """The top `shown` candidates, before and after each sampling knob. No model call."""
    settings = settings.validated(logits.shape[-1])
    shown = min(validate_shown(shown), logits.shape[-1])
    logits = logits.float().reshape(-1)
    tempered = (logits / settings.temperature).softmax(-1)
    after_top_k = filter_logits(logits, SamplingSettings(settings.temperature, settings.top_k))
    after_top_p = filter_logits(logits, SamplingSettings(settings.temperature, settings.top_k, settings.top_p))
    final_logits = filter_logits(logits, settings)
    final = final_logits.softmax(-1)
    order = torch.tensor(top_ids(logits, shown))
    cumulative = tempered[order].cumsum(0)
    candidates = [
        Candidate(
            id=int(i),
            token=token_label(tokenizer, int(i)),
            logit=float(logits[i]),
            probability=float(tempered[i]),
            rank=rank,
            cumulative=float(cumulative[rank - 1]),
            in_top_k=bool(torch.isfinite(after_top_k[i])),
            in_top_p=bool(torch.isfinite(after_top_p[i])),
            in_min_p=bool(torch.isfinite(final_logits[i])),
            final_probability=float(final[i]),
        )
        for rank, i in enumerate(order.tolist(), start=1)
    ]
    return Distribution(
        candidates=candidates,
        settings=settings,
        vocab_size=int(logits.shape[-1]),
        entropy_bits=_entropy_bits(tempered),
        filtered_entropy_bits=_entropy_bits(final),
        kept=int(torch.isfinite(final_logits).sum()),
        kept_by_top_k=int(torch.isfinite(after_top_k).sum()),
    )


def next_token_distribution(
    loaded: LoadedModel,
    text_or_ids: str | Sequence[int] | Messages,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    shown: int = 10,
    use_chat_template: bool = False,
    max_input_tokens: int | None = None,
    min_p: float = 0.0,
) -> Distribution:
    """One fresh forward pass: the next-token candidates for text, token ids or chat messages.

    Messages (a list of {role, content}) are always wrapped in the chat template,
    with the assistant's turn opened, so the candidates are the reply's first token.
    """
    settings = SamplingSettings(temperature, top_k, top_p, min_p).validated()
    shown = validate_shown(shown)
    if isinstance(text_or_ids, str) or _is_messages(text_or_ids):
        ids = encode_prompt(loaded, text_or_ids, use_chat_template, max_input_tokens)
    elif _is_token_ids(text_or_ids):
        vocab = loaded.model.get_input_embeddings().num_embeddings
        if any(not 0 <= int(i) < vocab for i in text_or_ids):
            raise InvalidInputError(message("explorer.token_ids_range", last=vocab - 1))
        ids = check_fits(loaded, [int(i) for i in text_or_ids], max_input_tokens)
    else:
        raise InvalidInputError(message("explorer.prompt_shape"))
    logits = next_token_logits(loaded, ids)
    return distribution_from_logits(logits, loaded.tokenizer, settings, shown)


def _is_messages(value: object) -> bool:
    return isinstance(value, Sequence) and bool(value) and isinstance(value[0], Mapping)


def _is_token_ids(value: object) -> bool:
    return isinstance(value, Sequence) and not isinstance(value, str) and all(
        is_whole(i) for i in value)


def token_rank(logits: torch.Tensor, token_id: int) -> int:
    """1 + how many tokens scored strictly higher."""
    return int((logits > logits[token_id]).sum()) + 1


def greedy_token(logits: torch.Tensor) -> int:
    return int(torch.argmax(logits))


def sample_token(logits: torch.Tensor, settings: SamplingSettings, seed: int) -> int:
    """Draw from the filtered distribution with its own generator: same seed, same token."""
    probabilities = filter_logits(logits, settings.validated()).softmax(-1)
    generator = torch.Generator().manual_seed(int(seed))
    return int(torch.multinomial(probabilities, 1, generator=generator))


# --- stepping ------------------------------------------------------------
@dataclass(frozen=True)
class Step:
    token_id: int
    token: str
    probability: float  # softmax(logits / temperature) when it was chosen
    rank: int
    how: str  # "greedy", "sample" or "picked"
    settings: SamplingSettings = SamplingSettings()  # the knobs when it was chosen
    seed: int | None = None  # the seed of a sampled step: replaying it draws the same token
    alternatives: tuple[tuple[int, str, float], ...] = ()  # the top candidates it was chosen from


@dataclass
class ExplorerState:
    """One user's walk through a text: token ids, their cache, the steps taken.

    Lives in that user's session (gr.State), never on the shared model; a new
    prompt makes a new state, so at most one prefix cache per session is kept.
    """

    model_ref: str
    prompt_ids: list[int]
    ids: list[int]
    logits: torch.Tensor  # scores for the token after `ids`
    past_key_values: object
    prompt_logprobs: list[float | None]
    window: int
    steps: list[Step] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def room(self) -> int:
        return self.window - len(self.ids)


def start(
    loaded: LoadedModel,
    prompt: str,
    use_chat_template: bool = False,
    max_input_tokens: int | None = None,
) -> ExplorerState:
    """Tokenize and read the prompt once: the next-token scores and the cache to step from."""
    ids = encode_prompt(loaded, prompt, use_chat_template, max_input_tokens)
    result = prefill(loaded, ids)
    return ExplorerState(
        model_ref=loaded.ref.text,
        prompt_ids=list(ids),
        ids=list(ids),
        logits=result.logits,
        past_key_values=result.past_key_values,
        prompt_logprobs=result.token_logprobs,
        window=context_window(loaded, max_input_tokens),
    )


@torch.inference_mode()
def append_token(
    loaded: LoadedModel, state: ExplorerState, token_id: int, how: str, settings: SamplingSettings,
    seed: int | None = None,
) -> Step:
    """Add one token: record how likely it was, then one forward pass over it alone."""
    settings, token_id = settings.validated(), int(token_id)
    if not 0 <= token_id < state.logits.shape[-1]:
        raise InvalidInputError(message("explorer.no_such_token_id", id=token_id))
    if state.room <= 0:
        raise InvalidInputError(message("explorer.window_full", window=state.window))
    tempered = (state.logits / settings.temperature).softmax(-1)
    top = torch.topk(tempered, min(ALTERNATIVES_KEPT, tempered.shape[-1]))
    alternatives = tuple((int(i), token_label(loaded.tokenizer, int(i)), float(p))
                         for p, i in zip(top.values, top.indices, strict=True))
    step = Step(token_id, token_label(loaded.tokenizer, token_id), float(tempered[token_id]),
                token_rank(state.logits, token_id), how, settings, seed, alternatives)
    logits, state.past_key_values = run_model_work(
        lambda: one_token_step(loaded.model, token_id, state.past_key_values))
    state.logits = logits[0].float().cpu()
    state.ids.append(token_id)
    state.steps.append(step)
    return step


def choose_token(state: ExplorerState, how: str, settings: SamplingSettings, seed: int) -> int:
    """The greedy token, or a sampled one seeded by (seed, position): replayable."""
    if how == "greedy":
        return greedy_token(state.logits)
    if how == "sample":
        return sample_token(state.logits, settings, seed + len(state.ids))
    raise InvalidInputError(message("explorer.unknown_strategy", how=how, known=", ".join(STRATEGIES)))


def take_steps(
    loaded: LoadedModel,
    state: ExplorerState,
    count: int,
    how: str,
    settings: SamplingSettings,
    seed: int = 0,
    stop_token_ids: Sequence[int] = (),
) -> list[Step]:
    """Up to `count` greedy or sampled steps; stops at a stop token or a full window."""
    if not is_whole(count) or not 1 <= count <= MAX_STEPS_AT_ONCE:
        raise InvalidInputError(message("explorer.steps_range", limit=MAX_STEPS_AT_ONCE, value=count))
    if not is_whole(seed):
        raise InvalidInputError(message("explorer.seed_whole", value=seed))
    settings = settings.validated(state.logits.shape[-1])
    if state.room <= 0:
        raise InvalidInputError(message("explorer.window_full", window=state.window))
    taken = []
    for _ in range(min(int(count), state.room)):
        token_id = choose_token(state, how, settings, int(seed))
        taken.append(append_token(loaded, state, token_id, how, settings, int(seed) if how == "sample" else None))
        if token_id in stop_token_ids:
            break
    return taken


@torch.inference_mode()
def undo(loaded: LoadedModel, state: ExplorerState) -> Step:
    """Drop the last step: crop the cache and re-read the (new) last token."""
    if not state.steps:
        raise InvalidInputError(message("explorer.nothing_to_undo"))
    step = state.steps.pop()
    state.ids.pop()
    cache = state.past_key_values
    if getattr(cache, "is_croppable", False) and len(state.ids) > 1:
        cache.crop(-(cache.get_seq_length() - (len(state.ids) - 1)))  # negative: tokens to drop
        logits, state.past_key_values = run_model_work(
            lambda: one_token_step(loaded.model, state.ids[-1], cache))
        state.logits = logits[0].float().cpu()
    else:  # a cache that cannot be cut back (e.g. recurrent layers): read the text again
        result = prefill(loaded, state.ids)
        state.past_key_values, state.logits = result.past_key_values, result.logits
    return step


# --- how surprising was the prompt ------------------------------------------
@dataclass(frozen=True)
class Surprise:
    pieces: list[tuple[str, float | None]]  # (token, probability the model gave it)
    perplexity: float | None  # exp(mean negative log-likelihood); None for one token
    most_surprising: list[tuple[str, float]]


def prompt_surprise(tokenizer: PreTrainedTokenizerBase, state: ExplorerState, worst: int = 3) -> Surprise:
    """How likely the model found each prompt token, from the pass that read the prompt."""
    labels = [token_label(tokenizer, i) for i in state.prompt_ids]
    pieces = [
        (label, None if lp is None else math.exp(lp))
        for label, lp in zip(labels, state.prompt_logprobs, strict=True)
    ]
    scored = [lp for lp in state.prompt_logprobs if lp is not None]
    perplexity = math.exp(-sum(scored) / len(scored)) if scored else None
    ranked = sorted((p for p in pieces if p[1] is not None), key=lambda piece: piece[1])
    return Surprise(pieces, perplexity, ranked[:worst])
