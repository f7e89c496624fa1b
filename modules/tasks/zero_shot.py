"""Zero-shot classification with the chat model: any labels, no classifier, works offline.

Each text goes into a prompt that lists the labels, and each label is scored as the next
words of the answer: the probability of its label words, summed over their tokens and
over the words (the label itself, capitalised or not, plus good/great for positive and
bad/terrible for negative, or words typed as 'praise | a compliment'). Multi-token words
get their full probability (log-probabilities summed, not length-normalised): calibration
divides by a prior scored the same way, so a long label's lower probability cancels out.
The prompt's shared start (instructions, demonstrations) is run once and its KV cache
reused, so a text costs one short sequence per layout (`Method.layouts`).

A small LM prefers some labels whatever the text says, so calibration divides out the
model's prior over the labels and renormalises. Which prompt and which prior depends on
the labels (`method_for`), as measured by benchmarks/zero_shot_accuracy.py (embedded
SmolLM2-135M-Instruct):

* positive/negative: two layouts of a plain "Review: … Sentiment:" frame, after 4 and after
  8 fixed demonstrations written here, each calibrated by its own prior = the answer's words
  alone (domain-conditional PMI, Holtzman et al., 2021), their calibrated probabilities
  averaged: 87.0 % on 400 real review sentences (holdout 88.2 %), against 85.0 % (84.2 %)
  for the 4-demo layout alone, at about half its speed;
* any other labels: a plain "Labels: … Text: … Label:" frame after 3 demonstrations of the
  format on unrelated label sets, prior = the labels' mean probability over texts the model
  itself writes in that prompt (generative calibration, Jiang et al., 2023). Content-free
  inputs ("N/A", "", "[MASK]"; Zhao et al., 2021) gave a prior unlike real texts' for
  bug report / feature request / praise (each input a different answer, the average
  pushing every text to one label); domain PMI's answer-only prompt favours one label ~1.0.
"""

from __future__ import annotations

import copy
import re
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

import torch

from modules.engine.compute import run_model_work
from modules.engine.callbacks import ProgressCallback
from modules.engine.model_cache import LoadedModel
from modules.errors import InvalidInputError, ModelError
from modules.messages import message
from modules.tasks.sentiment import Classification, validated_text

CONTENT_FREE_INPUTS = ("N/A", "", "[MASK]")
GENERATED_TEXTS = 32  # texts sampled for the generative prior, from a fixed seed
GENERATED_TOKENS = 32
TEXT_SLOT = "\u2063TEXT\u2063"  # stands for the text while the template is rendered
DEFAULT_LABELS = ("positive", "negative")
# Synonyms scored with a label of that name (several surface forms per label).
KNOWN_LABEL_WORDS = {
    "positive": ("good", "great"),
    "negative": ("bad", "terrible"),
}
MAX_LABELS = 20
MAX_WORDS_PER_LABEL = 8
MAX_LABEL_CHARS = 60
MAX_TEXT_TOKENS = 1024
SEQUENCES_PER_FORWARD = 16
TOKENS_PER_FORWARD = 8192  # bounds memory and how long one forward holds the model lock
PRIOR_CACHE_SIZE = 64
PRIOR_CACHE_KEY = "zero_shot_priors"
PREFIX_CACHE_KEY = "zero_shot_prefix_caches"
PREFIX_CACHE_SIZE = 8  # layouts × label sets; ~10 MB each for the embedded model
T = TypeVar("T")


@dataclass(frozen=True)
class Label:
    """A label's name and the words scored for it (the name first)."""

    name: str
    words: tuple[str, ...]


@dataclass(frozen=True)
class Demonstration:
    """A solved example shown before the text: its label, and the label list shown with it
    (None: the user's labels; a list of its own when it only teaches the format)."""

    text: str
    label: str
    labels: str | None = None


@dataclass(frozen=True)
class Frame:
    """How a prompt is laid out around the text.

    `question` holds {text} and {labels}; with `chat` it is the user's turn of the
    model's chat template and `answer` starts the assistant's reply, otherwise the
    plain text is `question` + `answer`. A demonstration repeats the frame with its
    label after the answer."""

    question: str
    answer: str
    chat: bool = True


CHAT_FRAME = Frame("Which of these best describes the text below: {labels}?\n\nText: {text}",
                   "The text is")
PLAIN_FRAME = Frame("Text: {text}\nWhich of these best describes the text: {labels}?\n",
                    "Answer:", chat=False)
REVIEW_FRAME = Frame("Review: {text}\n", "Sentiment:", chat=False)  # the classic SST-2 frame
LABELS_FRAME = Frame("Labels: {labels}\nText: {text}\n", "Label:", chat=False)
CONTENT_FREE = "content-free"  # prior: content-free inputs in the same prompt (Zhao et al.)
DOMAIN = "domain"  # prior: the answer's words alone (domain-conditional PMI, Holtzman et al.)
GENERATED = "generated"  # prior: texts the model writes in the prompt (Jiang et al., 2023)


@dataclass(frozen=True)
class Layout:
    """One way to prompt a label set, and the prior calibration divides out of it."""

    frame: Frame
    demonstrations: tuple[Demonstration, ...] = ()
    prior: str = CONTENT_FREE


@dataclass(frozen=True)
class Method:
    """Layouts whose calibrated label probabilities are averaged (an ensemble when several):
    each layout has its own prompt, reused KV prefix and prior."""

    layouts: tuple[Layout, ...]


# Any labels: demonstrations of the format only (their own, unrelated label sets, written
# here), so the model answers with one of the listed labels whatever they are.
FORMAT_DEMONSTRATIONS = (
    Demonstration("The striker scored twice in the second half.", "sports",
                  "sports, politics, science"),
    Demonstration("Thank you so much for fixing my order so quickly.", "thanks",
                  "question, complaint, thanks"),
    Demonstration("The ferry to the island leaves every hour, so buy the ticket at the port.",
                  "travel tip", "recipe, travel tip, news"),
)
GENERIC = Method((Layout(LABELS_FRAME, FORMAT_DEMONSTRATIONS, GENERATED),))
# Positive/negative: fixed, balanced demonstrations written here (never from evaluation data).
SENTIMENT_DEMONSTRATIONS = (
    Demonstration("A warm, funny film with a cast that clearly loves the material.", "positive"),
    Demonstration("The plot drags and the jokes fall flat.", "negative"),
    Demonstration("I would happily watch it again tomorrow.", "positive"),
    Demonstration("Two hours of my life I will never get back.", "negative"),
)
MORE_SENTIMENT_DEMONSTRATIONS = SENTIMENT_DEMONSTRATIONS + (
    Demonstration("Sharp dialogue and a final act that earns every tear.", "positive"),
    Demonstration("A lazy sequel that mistakes noise for excitement.", "negative"),
    Demonstration("The performances are so natural you forget you are watching actors.", "positive"),
    Demonstration("Even the gorgeous scenery cannot hide how empty the script is.", "negative"),
)
SENTIMENT_4_DEMOS = Layout(REVIEW_FRAME, SENTIMENT_DEMONSTRATIONS, DOMAIN)
SENTIMENT_8_DEMOS = Layout(REVIEW_FRAME, MORE_SENTIMENT_DEMONSTRATIONS, DOMAIN)
# The best measured on real review sentences: the 4- and 8-demo layouts, each with domain
# PMI, averaged (either alone scored lower; the two err on different sentences).
SENTIMENT = Method((SENTIMENT_4_DEMOS, SENTIMENT_8_DEMOS))


def method_for(labels: Sequence[Label]) -> Method:
    """SENTIMENT for exactly 'positive, negative' (any case or order), GENERIC otherwise."""
    names = sorted(name.lower() for name in label_names(labels))
    return SENTIMENT if names == ["negative", "positive"] else GENERIC


@dataclass(frozen=True)
class ZeroShotResult(Classification):
    """Calibrated label probabilities (`scores`, best first) and the raw ones."""

    raw_scores: dict[str, float] = field(default_factory=dict)


# --- labels --------------------------------------------------------------------
def parse_labels(text: str | Sequence[str] | Sequence[Label] | None) -> list[Label]:
    """'positive, negative | bad, neutral' (commas or new lines; '|' adds label words)
    -> distinct labels with their words, or a clear error."""
    if text and not isinstance(text, str) and all(isinstance(t, Label) for t in text):
        return list(text)  # already parsed (e.g. chosen label words, as the benchmark does)
    parts = re.split(r"[,\n]", text or "") if isinstance(text, str) or text is None else text
    labels: list[Label] = []
    for part in parts or []:
        words = [" ".join(w.split()) for w in str(part).split("|")]
        words = [w for w in words if w]
        if words and words[0].lower() not in {seen.name.lower() for seen in labels}:
            labels.append(_label(words))
    if len(labels) < 2:
        raise InvalidInputError(message("sentiment.zero_shot_two_labels"))
    if len(labels) > MAX_LABELS:
        raise InvalidInputError(message("sentiment.zero_shot_too_many_labels", limit=MAX_LABELS, count=len(labels)))
    too_long = [w for label in labels for w in label.words if len(w) > MAX_LABEL_CHARS]
    if too_long:
        raise InvalidInputError(message("sentiment.zero_shot_label_too_long", limit=MAX_LABEL_CHARS,
                                        label=too_long[0][:80]))
    return labels


def _label(words: list[str]) -> Label:
    """The typed words, then the known synonyms, each also capitalised, without repeats."""
    name = words[0]
    known = KNOWN_LABEL_WORDS.get(name.lower()) if len(words) == 1 else None
    typed = words + list(known or ())
    forms: list[str] = []
    for word in typed:
        for form in (word, word[:1].upper() + word[1:]):
            if form not in forms:
                forms.append(form)
    if len(words) > MAX_WORDS_PER_LABEL:
        raise InvalidInputError(message("sentiment.zero_shot_too_many_words", limit=MAX_WORDS_PER_LABEL, label=name))
    return Label(name, tuple(forms))


def label_names(labels: Sequence[Label]) -> list[str]:
    return [label.name for label in labels]


# --- prompt building -------------------------------------------------------------
def _encode(loaded: LoadedModel, text: str, split_special: bool = False) -> list[int]:
    return list(
        loaded.tokenizer(
            text, add_special_tokens=False, split_special_tokens=split_special
        )["input_ids"]
    )


def _render(loaded: LoadedModel, frame: Frame, labels: Sequence[Label],
            demonstrations: Sequence[Demonstration]) -> str:
    """The whole prompt as text, with TEXT_SLOT where the text goes."""
    listed = ", ".join(label_names(labels))

    def question(text: str, shown: str | None = None) -> str:
        return frame.question.format(labels=shown or listed, text=text)

    tokenizer = loaded.tokenizer
    if frame.chat and getattr(tokenizer, "chat_template", None):
        messages = []
        for demo in demonstrations:
            messages += [{"role": "user", "content": question(demo.text, demo.labels)},
                         {"role": "assistant", "content": f"{frame.answer} {demo.label}."}]
        messages.append({"role": "user", "content": question(TEXT_SLOT)})
        rendered = tokenizer.apply_chat_template(
            messages, add_generation_prompt=True, tokenize=False
        )
        return rendered + frame.answer
    shots = "".join(f"{question(demo.text, demo.labels)}{frame.answer} {demo.label}\n\n"
                    for demo in demonstrations)
    return shots + question(TEXT_SLOT) + frame.answer


def _prompt_halves(
    loaded: LoadedModel, labels: Sequence[Label], frame: Frame = CHAT_FRAME,
    demonstrations: Sequence[Demonstration] = (),
) -> tuple[list[int], list[int]]:
    """Token ids before and after the text; the text itself is tokenized on its own so that
    special tokens a user types (e.g. '<|im_end|>') stay plain text."""
    rendered = _render(loaded, frame, labels, demonstrations)
    before, slot, after = rendered.partition(" " + TEXT_SLOT)
    if not slot:
        raise ModelError(message("sentiment.zero_shot_template_dropped_text", model=loaded.name))
    return _encode(loaded, before), _encode(loaded, after)


def _text_ids(loaded: LoadedModel, text: str, max_tokens: int) -> tuple[list[int], str | None]:
    ids = _encode(loaded, " " + text, split_special=True) if text else []
    if len(ids) <= max_tokens:
        return ids, None
    return ids[:max_tokens], message("sentiment.zero_shot_text_cut", count=len(ids), limit=max_tokens).english()


# --- scoring ---------------------------------------------------------------------
def _continuation_logprobs(
    loaded: LoadedModel, prompts: list[list[int]], continuations: list[list[int]],
    prefix: list[int] | None = None,
) -> torch.Tensor:
    """[prompt, continuation] log-probability sums, shape (len(prompts), len(continuations)).

    `prefix` (the part every prompt starts with: instructions, demonstrations) is run once
    and its KV cache reused by every batch. All first tokens are read from the distribution
    after the prompt, so one-token continuations share one sequence per prompt; each longer
    one adds a sequence for its remaining tokens. Sequences are left-padded (between prefix
    and prompt) so that continuations end at the last position and only the last few
    positions' logits are computed (`logits_to_keep`).
    """
    firsts = torch.tensor([c[0] for c in continuations])
    longer = [i for i, c in enumerate(continuations) if len(c) > 1]
    rows = [(p, i) for p in range(len(prompts)) for i in (longer or [None])]
    pairs = [(prompts[p], continuations[i] if i is not None else []) for p, i in rows]
    keep = max(len(c) for c in continuations) + 1
    prefix_cache = _prefix_cache(loaded, prefix) if prefix else None
    scores = torch.zeros(len(prompts), len(continuations))
    done: set[int] = set()
    start = 0
    for batch in _forward_batches(pairs, len(prefix or ())):
        first_tokens, rests = _score_batch(loaded, batch, keep, firsts, prefix_cache)
        for offset, (first, rest) in enumerate(zip(first_tokens, rests)):
            p, i = rows[start + offset]
            if p not in done:
                scores[p] += first
                done.add(p)
            if i is not None:
                scores[p, i] += rest
        start += len(batch)
    return scores


def _prefix_cache(loaded: LoadedModel, prefix: list[int]):
    """The KV cache of `prefix` (a layout's instructions and demonstrations: hundreds of
    tokens), computed once and kept on the loaded model, like the priors. Without it a
    single short text paid a pass over the whole prefix per layout on every call. Callers
    copy it before use (`_score_batch`), so the kept one is never changed."""
    def run() -> object:
        inputs = torch.tensor([prefix], device=loaded.device)
        return run_model_work(
            lambda: loaded.model(input_ids=inputs, use_cache=True, logits_to_keep=1).past_key_values,
            loaded.lock)

    return _kept(loaded, PREFIX_CACHE_KEY, PREFIX_CACHE_SIZE, tuple(prefix), run)


def _forward_batches(pairs: list[tuple[list[int], list[int]]], prefix_length: int = 0):
    batch: list[tuple[list[int], list[int]]] = []
    for pair in pairs:
        longest = prefix_length + max([len(p) + len(c) for p, c in batch + [pair]])
        if batch and (
            len(batch) >= SEQUENCES_PER_FORWARD or longest * (len(batch) + 1) > TOKENS_PER_FORWARD
        ):
            yield batch
            batch = []
        batch.append(pair)
    if batch:
        yield batch


def _score_batch(
    loaded: LoadedModel, batch: list[tuple[list[int], list[int]]], keep: int,
    firsts: torch.Tensor, prefix_cache=None,
) -> tuple[list[torch.Tensor], list[float]]:
    """Per row: log-probabilities of `firsts` right after the prompt, and the summed
    log-probability of the row's continuation after its first token."""
    pad = loaded.tokenizer.pad_token_id
    pad = pad if pad is not None else loaded.tokenizer.eos_token_id or 0
    length = max(len(p) + len(c) for p, c in batch)
    ids = torch.full((len(batch), length), pad, dtype=torch.long)
    mask = torch.zeros((len(batch), length), dtype=torch.long)
    for row, (prompt, continuation) in enumerate(batch):
        sequence = prompt + continuation
        ids[row, length - len(sequence) :] = torch.tensor(sequence)
        mask[row, length - len(sequence) :] = 1
    cached = prefix_cache.get_seq_length() if prefix_cache is not None else 0
    positions = cached + (mask.cumsum(-1) - 1).clamp(min=0)
    full_mask = torch.cat([torch.ones((len(batch), cached), dtype=torch.long), mask], dim=1)
    inputs = {"input_ids": ids, "attention_mask": full_mask, "position_ids": positions}
    inputs = {k: v.to(loaded.device) for k, v in inputs.items()}
    if prefix_cache is not None:
        inputs["past_key_values"] = copy.deepcopy(prefix_cache)
        inputs["past_key_values"].batch_repeat_interleave(len(batch))
    logits = run_model_work(
        lambda: loaded.model(**inputs, logits_to_keep=keep, use_cache=cached > 0).logits, loaded.lock)
    logprobs = torch.log_softmax(logits[:, -keep:].float(), dim=-1).cpu()
    first_tokens, rests = [], []
    for row, (_, continuation) in enumerate(batch):
        n = len(continuation)
        after_prompt = keep - 1 - n  # position t predicts token t+1
        first_tokens.append(logprobs[row, after_prompt, firsts])
        following = logprobs[row, after_prompt + 1 : keep - 1]
        rests.append(float(following.gather(-1, torch.tensor(continuation[1:])[:, None]).sum())
                     if n > 1 else 0.0)
    return first_tokens, rests


def _label_probabilities(
    loaded: LoadedModel, prompts: list[list[int]], labels: Sequence[Label],
    prefix: list[int] | None = None,
) -> torch.Tensor:
    """(prompts, labels): each label's words' probabilities summed, renormalised over labels."""
    words = [(index, _encode(loaded, " " + word))
             for index, label in enumerate(labels) for word in label.words]
    logprobs = _continuation_logprobs(loaded, prompts, [ids for _, ids in words], prefix)
    owner = torch.tensor([index for index, _ in words])
    mass = torch.zeros(len(prompts), len(labels)).index_add_(1, owner, logprobs.exp())
    mass = mass.clamp(min=torch.finfo(mass.dtype).tiny)
    return mass / mass.sum(-1, keepdim=True)


def _ranked(labels: Sequence[Label], probs: torch.Tensor) -> dict[str, float]:
    return dict(sorted(zip(label_names(labels), probs.tolist()), key=lambda kv: -kv[1]))


# --- the model's prior over labels (calibration) ----------------------------------
_kept_lock = threading.Lock()


def _kept(loaded: LoadedModel, name: str, size: int, key: object, make: Callable[[], T]) -> T:
    """`make()`'s value, kept on the loaded model (it dies with it) in the table `name`
    (the `size` most recently used keys): computed once per key, not per call."""
    with _kept_lock:
        table = loaded.extras.setdefault(name, OrderedDict())
        if key in table:
            table.move_to_end(key)
            return table[key]
    value = make()
    with _kept_lock:
        table[key] = value
        while len(table) > size:
            table.popitem(last=False)
    return value


def label_prior(loaded: LoadedModel, labels: Sequence[Label], layout: Layout) -> torch.Tensor:
    """The model's prior over the labels, as `layout` defines it.

    Kept on the loaded model, per labels and layout, so a single text costs one batch,
    not two."""
    def measure() -> torch.Tensor:
        if layout.prior == DOMAIN:
            return domain_prior(loaded, labels, layout.frame)
        if layout.prior == GENERATED:
            return generated_prior(loaded, labels, layout)
        return content_free_distribution(loaded, labels, layout)

    return _kept(loaded, PRIOR_CACHE_KEY, PRIOR_CACHE_SIZE, (tuple(labels), layout), measure)


def content_free_distribution(
    loaded: LoadedModel, labels: Sequence[Label], layout: Layout
) -> torch.Tensor:
    """The label distribution for content-free inputs in the same prompt, averaged."""
    before, after = _prompt_halves(loaded, labels, layout.frame, layout.demonstrations)
    prompts = [_text_ids(loaded, cf, MAX_TEXT_TOKENS)[0] + after for cf in CONTENT_FREE_INPUTS]
    return _label_probabilities(loaded, prompts, labels, before).mean(0)


def generated_prior(loaded: LoadedModel, labels: Sequence[Label], layout: Layout) -> torch.Tensor:
    """The label distribution averaged over texts the model itself writes where the text goes
    (generative calibration, Jiang et al., 2023): an estimate of the labels' marginal over
    texts like the prompt's, where a few content-free inputs can be far from any real text."""
    texts = sampled_texts(loaded, labels, layout)
    before, after = _prompt_halves(loaded, labels, layout.frame, layout.demonstrations)
    prompts = [_text_ids(loaded, text, MAX_TEXT_TOKENS)[0] + after for text in texts]
    return _label_probabilities(loaded, prompts, labels, before).mean(0)


def sampled_texts(loaded: LoadedModel, labels: Sequence[Label], layout: Layout) -> list[str]:
    """GENERATED_TEXTS texts sampled (temperature 1, fixed seed) after the prompt's start,
    each cut at its first line break."""
    before, _ = _prompt_halves(loaded, labels, layout.frame, layout.demonstrations)
    ids = torch.tensor([before], device=loaded.device)
    eos = loaded.tokenizer.eos_token_id

    def sample() -> torch.Tensor:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            return loaded.model.generate(
                ids, attention_mask=torch.ones_like(ids), do_sample=True, temperature=1.0,
                top_p=1.0, top_k=0, max_new_tokens=GENERATED_TOKENS,
                num_return_sequences=GENERATED_TEXTS, pad_token_id=eos,
            )

    output = run_model_work(sample, loaded.lock)
    texts = loaded.tokenizer.batch_decode(output[:, len(before):], skip_special_tokens=True)
    return [text.split("\n")[0].strip() for text in texts]


def domain_prior(
    loaded: LoadedModel, labels: Sequence[Label], frame: Frame = CHAT_FRAME,
) -> torch.Tensor:
    """The label distribution after the answer's own words alone, with no question or text:
    the denominator of domain-conditional PMI (Holtzman et al., 2021)."""
    _, after = _prompt_halves(loaded, labels, frame)
    return _label_probabilities(loaded, [after], labels)[0]


def divide_out_prior(probabilities: torch.Tensor, prior: torch.Tensor) -> torch.Tensor:
    """Divide out the prior and renormalise (Zhao et al., 2021)."""
    calibrated = probabilities / prior
    return calibrated / calibrated.sum(-1, keepdim=True)


@dataclass(frozen=True)
class _PreparedLayout:
    """A layout's token ids around the text, and its prior (None: no calibration)."""

    before: list[int]
    after: list[int]
    prior: torch.Tensor | None


def _prepared(loaded: LoadedModel, labels: Sequence[Label], layout: Layout,
              calibrate: bool) -> _PreparedLayout:
    before, after = _prompt_halves(loaded, labels, layout.frame, layout.demonstrations)
    return _PreparedLayout(before, after, label_prior(loaded, labels, layout) if calibrate else None)


def _ensemble_probabilities(
    loaded: LoadedModel, text_ids: list[list[int]], labels: Sequence[Label],
    layouts: Sequence[_PreparedLayout],
) -> tuple[torch.Tensor, torch.Tensor]:
    """(raw, calibrated) label probabilities of the texts, each the mean over the layouts."""
    raw, calibrated = [], []
    for layout in layouts:
        probabilities = _label_probabilities(
            loaded, [ids + layout.after for ids in text_ids], labels, layout.before)
        raw.append(probabilities)
        calibrated.append(probabilities if layout.prior is None
                          else divide_out_prior(probabilities, layout.prior))
    return torch.stack(raw).mean(0), torch.stack(calibrated).mean(0)


def zero_shot(
    loaded: LoadedModel,
    texts: Sequence[str],
    labels: str | Sequence[str] | Sequence[Label],
    *,
    calibrate: bool = True,
    max_text_tokens: int = MAX_TEXT_TOKENS,
    on_progress: ProgressCallback | None = None,
    texts_per_step: int = 16,
    method: Method | None = None,
) -> list[ZeroShotResult]:
    """Label probabilities for each text (same order), calibrated unless told not to.

    `method` defaults to the one measured best for these labels (`method_for`); with several
    layouts, `scores` average their calibrated probabilities and `raw_scores` their raw ones."""
    parsed = parse_labels(labels)
    texts = [validated_text(t) for t in texts]
    if max_text_tokens < 1:
        raise InvalidInputError("max_text_tokens must be at least 1.")
    method = method or method_for(parsed)
    layouts = [_prepared(loaded, parsed, layout, calibrate) for layout in method.layouts]
    results: list[ZeroShotResult] = []
    for start in range(0, len(texts), texts_per_step):
        encoded = [_text_ids(loaded, t, max_text_tokens) for t in texts[start : start + texts_per_step]]
        raw, final = _ensemble_probabilities(loaded, [ids for ids, _ in encoded], parsed, layouts)
        for (_, notice), cal, unc in zip(encoded, final, raw):
            results.append(ZeroShotResult(_ranked(parsed, cal), notice, _ranked(parsed, unc)))
        if on_progress:
            on_progress(len(results), len(texts))
    return results
