"""Translate text of any length with opus-mt (Marian) models, one model per direction.

Marian models read at most 512 tokens and are trained on single sentences, so a
text is cut into lines, each line into sentences (`modules.tasks.sentences`), and any
sentence still too long into smaller pieces; the pieces are translated in
batches and put back in place, so nothing is cut off and line breaks survive.
No Gradio here: plain values in, plain values (or a generator of them) out.
"""

from __future__ import annotations

import csv
import io
import logging
import re
import tempfile
import unicodedata
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import StoppingCriteria, StoppingCriteriaList

from modules.config import ENV_PREFIX, Settings
from modules.errors import InvalidInputError, ModelError, ModelOfflineError, require_text
from modules.messages import DEFAULT_LANGUAGE, message
from modules.messages import text as message_text
from modules.engine.callbacks import ProgressCallback, StatusCallback
from modules.engine.model_cache import LoadedModel, ModelCache, ModelKind
from modules.tasks.sentences import split_sentences, split_to_fit

log = logging.getLogger(__name__)

DEFAULT_DIRECTION = "zh-en"
# 16 sentences per generate call. On the tiny model (benchmarks/translation_throughput.py)
# that is ~7-10x one at a time, and bigger batches are faster still, but the tiny
# model is all per-step overhead; with a real opus-mt model on CPU larger batches
# gain less, hold more memory (beams x batch x 512 positions), and delay streaming,
# since the text is streamed a batch of whole lines at a time.
BATCH_SIZE = 16
# Marian reads 512 tokens at most, but quality falls well before that, and the
# translation (often longer than the source) must fit in 512 positions too.
MAX_PIECE_TOKENS = 200
MAX_TEXT_CHARS = 50_000
MARIAN_MAX_POSITIONS = 512  # used when neither config nor tokenizer says
MAX_BATCH_TEXTS = 2_000
MAX_FILE_BYTES = 2_000_000

# Languages with a name in modules/locales ("language.<code>"); others show their code.
NAMED_LANGUAGES = frozenset({"ar", "de", "en", "es", "fr", "it", "ja", "ko", "nl", "pt", "ru", "uk", "zh"})
# Multi-target opus-mt models (opus-mt-en-zh) need a `>>lang<<` token first.
_TARGET_TOKENS = {
    "zh": (">>cmn_Hans<<", ">>zho_Hans<<", ">>cmn<<", ">>zho<<"),
    "ja": (">>jpn<<",), "en": (">>eng<<",), "fr": (">>fra<<",), "de": (">>deu<<",),
}
# Languages written without spaces between sentences.
_UNSPACED_LANGUAGES = {"zh", "ja"}
# Zero-width and byte-order marks the tokenizer would turn into <unk>; the
# zero-width joiner stays, because emoji sequences need it.
_INVISIBLE = re.compile("[\u200b\u200c\u2060\ufeff\u00ad]")


# --- directions -------------------------------------------------------------
def language_name(code: str, language: str = DEFAULT_LANGUAGE) -> str:
    """'zh' -> 'Chinese' (or '中文' for a reader of `language` zh-CN); unknown codes as they are."""
    return message_text(f"language.{code}", language) if code in NAMED_LANGUAGES else code


def direction_label(direction: str, language: str = DEFAULT_LANGUAGE) -> str:
    """'zh-en' -> 'Chinese → English' ('中文 → 英语' in zh-CN)."""
    source, _, target = direction.partition("-")
    return f"{language_name(source, language)} → {language_name(target, language)}"


@dataclass(frozen=True)
class DirectionNames:
    """Directions named in a message, rendered in the reader's language."""

    directions: tuple[str, ...]

    def text(self, language: str = DEFAULT_LANGUAGE) -> str:
        names = ", ".join(direction_label(d, language) for d in self.directions)
        return names or message_text("translation.none", language)

    def __str__(self) -> str:
        return self.text()


def direction_choices(settings: Settings, language: str = DEFAULT_LANGUAGE) -> list[tuple[str, str]]:
    """(label, direction) pairs for a dropdown, the default direction first."""
    directions = sorted(settings.translation_models, key=lambda d: d != DEFAULT_DIRECTION)
    return [(direction_label(d, language), d) for d in directions]


def default_direction(settings: Settings) -> str:
    choices = direction_choices(settings)
    if not choices:
        raise InvalidInputError(message("translation.no_directions"))
    return choices[0][1]


def reversed_direction(direction: str) -> str:
    source, _, target = direction.partition("-")
    return f"{target}-{source}"


def env_var_for(direction: str) -> str:
    """The variable that points a direction at another model: PLAYGROUND_TRANSLATION_ZH_EN."""
    return f"{ENV_PREFIX}TRANSLATION_{direction.replace('-', '_').upper()}"


def model_for(models: Mapping[str, str], direction: str) -> str:
    """The model reference for a direction, or a clear error naming the ones there are."""
    key = require_text(direction, "translation direction").strip().lower()
    if key in models:
        return models[key]
    known = DirectionNames(tuple(models))
    source, dash, target = key.partition("-")
    if not (dash and source and target) or "-" in target:
        raise InvalidInputError(message("translation.bad_direction", direction=direction, known=known))
    raise InvalidInputError(message(
        "translation.no_model", direction=DirectionNames((key,)), known=known,
        variable=env_var_for(key)))


def load_translator(
    cache: ModelCache,
    settings: Settings,
    direction: str,
    on_status: StatusCallback | None = None,
    batch_size: int = BATCH_SIZE,
) -> Translator:
    """The direction's model from the shared cache; failures say how to supply the model."""
    ref = model_for(settings.translation_models, direction)
    direction = direction.strip().lower()
    try:
        loaded = cache.get(ref, ModelKind.SEQ2SEQ, on_status)
    except ModelOfflineError as error:
        raise ModelOfflineError(message(
            "translation.offline", direction=DirectionNames((direction,)), model=ref,
            repo=ref.partition("@")[0], variable=env_var_for(direction))) from error
    except ModelError as error:
        raise type(error)(message(
            "translation.model_failed", problem=error, direction=DirectionNames((direction,)),
            variable=env_var_for(direction))) from error
    return Translator(loaded, target=direction.partition("-")[2], batch_size=batch_size)


# --- text preparation ---------------------------------------------------------
def normalize_text(text: str) -> str:
    """The text as the tokenizer should see it (nothing is removed that a reader sees):
    NFC, '\\n' line ends, no zero-width or control characters (tabs and newlines stay)."""
    text = require_text(text, "text to translate").replace("\r\n", "\n").replace("\r", "\n")
    text = unicodedata.normalize("NFC", text)
    text = _INVISIBLE.sub("", text)
    return "".join(
        ch for ch in text if ch in "\n\t" or unicodedata.category(ch) not in ("Cc", "Cs")
    )


def check_length(text: str, limit: int = MAX_TEXT_CHARS) -> None:
    if len(text) > limit:
        raise InvalidInputError(message("translation.too_long", count=len(text), limit=limit))


def _needs_model(piece: str) -> bool:
    """Only pieces with letters are translated; '🎉', '42' or '---' are kept as they are."""
    return any(ch.isalpha() for ch in piece)


class _RowLengthLimit(StoppingCriteria):
    """Stop each row at its own length budget, so one long sentence in a batch
    does not let the short ones run on (and a batch gives what single calls give)."""

    def __init__(self, limits: torch.Tensor) -> None:
        self.limits = limits

    def __call__(self, input_ids: torch.LongTensor, scores, **kwargs) -> torch.BoolTensor:
        per_row = self.limits.repeat_interleave(input_ids.shape[0] // len(self.limits))
        generated = input_ids.shape[1] - 1  # the decoder starts with one start token
        return (generated >= per_row).to(input_ids.device)


@dataclass
class Translator:
    """One direction's loaded model, and how to feed it: pieces that fit, in batches."""

    loaded: LoadedModel
    target: str
    batch_size: int = BATCH_SIZE
    prefix: str = field(init=False, default="")

    def __post_init__(self) -> None:
        self.batch_size = max(1, int(self.batch_size))
        codes = getattr(self.loaded.tokenizer, "supported_language_codes", None) or []
        token = pick_target_token(codes, self.target)
        self.prefix = f"{token} " if token else ""
        if codes and not token:
            log.warning(
                "%s needs a target-language token; none matches %r", self.loaded.name, self.target
            )

    @property
    def joiner(self) -> str:
        return "" if self.target in _UNSPACED_LANGUAGES else " "

    @property
    def max_positions(self) -> int:
        return self.loaded.context_window(fallback=MARIAN_MAX_POSITIONS)

    @property
    def max_piece_tokens(self) -> int:
        return min(MAX_PIECE_TOKENS, self.max_positions)

    def count_tokens(self, piece: str) -> int:
        return len(self.loaded.tokenizer(self.prefix + piece, verbose=False).input_ids)

    def fits(self, piece: str) -> bool:
        return self.count_tokens(piece) <= self.max_piece_tokens

    def pieces_of(self, line: str) -> list[str]:
        """A line's sentences, each cut further if the model could not read it whole."""
        return [
            piece.strip()
            for sentence in split_sentences(line)
            for piece in split_to_fit(sentence, self.fits)
            if piece.strip()
        ]

    def output_budget(self, source_tokens: int) -> int:
        """How many tokens a translation may take: generous for the language, never
        unbounded (a confused model can repeat itself until the limit)."""
        return max(1, min(self.max_positions - 2, 3 * source_tokens + 16))

    def translate_pieces(
        self, pieces: Sequence[str], on_batch: Callable[[int], None] | None = None
    ) -> list[str]:
        """Translate each piece; same order and count. `on_batch(n)` after each batch of n."""
        results = [piece if not _needs_model(piece) else "" for piece in pieces]
        todo = sorted((i for i, p in enumerate(pieces) if _needs_model(p)),
                      key=lambda i: len(pieces[i]), reverse=True)
        for start in range(0, len(todo), self.batch_size):
            batch = todo[start:start + self.batch_size]
            for i, text in zip(batch, self._generate([pieces[i] for i in batch])):
                results[i] = text
            if on_batch:
                on_batch(len(batch))
        return results

    def _generate(self, pieces: list[str]) -> list[str]:
        tokenizer, model = self.loaded.tokenizer, self.loaded.model
        inputs = tokenizer([self.prefix + p for p in pieces], return_tensors="pt",
                           padding=True, truncation=False)
        if inputs.input_ids.shape[1] > self.max_positions:  # pieces_of prevents this
            raise InvalidInputError(message("translation.sentence_too_long"))
        budgets = torch.tensor([self.output_budget(int(n)) for n in inputs.attention_mask.sum(1)])
        with self.loaded.lock, torch.inference_mode():
            output = model.generate(
                **inputs.to(self.loaded.device),
                max_length=int(budgets.max()) + 2,  # the per-row limit below ends it first
                stopping_criteria=StoppingCriteriaList([_RowLengthLimit(budgets)]),
            )
        return [text.strip() for text in tokenizer.batch_decode(output, skip_special_tokens=True)]


def pick_target_token(codes: Sequence[str], target: str) -> str | None:
    """The `>>lang<<` token a multi-target model needs for `target`, if it has any."""
    if not codes:
        return None
    for token in (*_TARGET_TOKENS.get(target, ()), f">>{target}<<"):
        if token in codes:
            return token
    return None


# --- whole texts --------------------------------------------------------------
@dataclass
class _Line:
    indent: str
    pieces: list[str]


def _plan(translator: Translator, text: str) -> list[_Line]:
    return [
        _Line(line[: len(line) - len(line.lstrip())], translator.pieces_of(line))
        for line in text.split("\n")
    ]


def _chunks(lines: list[_Line], batch_size: int) -> Iterator[list[_Line]]:
    """Whole lines, gathered until they fill a batch: what is streamed at a time."""
    chunk, pieces = [], 0
    for line in lines:
        chunk.append(line)
        pieces += len(line.pieces)
        if pieces >= batch_size:
            yield chunk
            chunk, pieces = [], 0
    if chunk:
        yield chunk


def _render(translator: Translator, lines: list[_Line], translations: list[str]) -> list[str]:
    rendered, position = [], 0
    for line in lines:
        parts = translations[position:position + len(line.pieces)]
        position += len(line.pieces)
        text = translator.joiner.join(p for p in parts if p)
        rendered.append(line.indent + text if text else "")
    return rendered


def _progress_counter(total: int, on_progress: ProgressCallback | None) -> Callable[[int], None]:
    done = 0

    def advance(count: int) -> None:
        nonlocal done
        done += count
        if on_progress:
            on_progress(done, total)

    return advance


def stream_translated_text(
    translator: Translator, text: str, on_progress: ProgressCallback | None = None
) -> Iterator[str]:
    """The translation so far, growing a few whole lines (paragraphs) at a time.

    Empty or whitespace-only text yields one empty string. Line breaks, blank
    lines and indentation are kept; nothing is cut off.
    """
    text = normalize_text(text)
    check_length(text)
    if not text.strip():
        yield ""
        return
    lines = _plan(translator, text)
    advance = _progress_counter(sum(map(len, (line.pieces for line in lines))), on_progress)
    done: list[str] = []
    for chunk in _chunks(lines, translator.batch_size):
        pieces = [piece for line in chunk for piece in line.pieces]
        done += _render(translator, chunk, translator.translate_pieces(pieces, advance))
        yield "\n".join(done)


def translate_text(translator: Translator, text: str) -> str:
    """The whole translation at once."""
    result = ""
    for result in stream_translated_text(translator, text):
        pass
    return result


def translate_many(
    translator: Translator, texts: Sequence[str], on_progress: ProgressCallback | None = None
) -> list[str]:
    """One translation per text, in order; all sentences share batches, so many
    short texts go as fast as one long one."""
    if len(texts) > MAX_BATCH_TEXTS:
        raise InvalidInputError(
            message("translation.too_many_texts", count=len(texts), limit=MAX_BATCH_TEXTS))
    cleaned = [normalize_text(t) for t in texts]
    check_length("".join(cleaned))
    plans = [_plan(translator, t) if t.strip() else [] for t in cleaned]
    pieces = [p for plan in plans for line in plan for p in line.pieces]
    translations = translator.translate_pieces(pieces, _progress_counter(len(pieces), on_progress))
    results, position = [], 0
    for plan in plans:
        count = sum(len(line.pieces) for line in plan)
        done = translations[position:position + count]
        results.append("\n".join(_render(translator, plan, done)))
        position += count
    return results


def load_and_stream_translation(
    cache: ModelCache,
    settings: Settings,
    text: str,
    direction: str,
    on_status: StatusCallback | None = None,
    on_progress: ProgressCallback | None = None,
) -> Iterator[str]:
    """Everything a UI or API needs: check, load on demand, then stream the translation.

    Blank text gives "" without loading anything; an unknown direction or a
    missing model raises a `PlaygroundError` that says what to do.
    """
    model_for(settings.translation_models, direction)  # fail fast on a bad direction
    cleaned = normalize_text(text)
    check_length(cleaned)
    if not cleaned.strip():
        yield ""
        return
    translator = load_translator(cache, settings, direction, on_status)
    yield from stream_translated_text(translator, cleaned, on_progress)


# --- batch mode files ----------------------------------------------------------
def texts_from_lines(text: str) -> list[str]:
    """Batch mode input: one text per non-blank line."""
    return [line.strip() for line in normalize_text(text).split("\n") if line.strip()]


def read_text_file(path: str) -> str:
    """An uploaded .txt file as text (UTF-8, with or without BOM; UTF-16 with BOM)."""
    with open(path, "rb") as file:
        data = file.read(MAX_FILE_BYTES + 1)
    if len(data) > MAX_FILE_BYTES:
        raise InvalidInputError(
            message("translation.file_too_big", megabytes=MAX_FILE_BYTES // 1_000_000))
    encoding = "utf-16" if data[:2] in (b"\xff\xfe", b"\xfe\xff") else "utf-8-sig"
    try:
        return data.decode(encoding)
    except UnicodeDecodeError:
        raise InvalidInputError(message("translation.not_utf8")) from None


def results_csv(sources: Sequence[str], translations: Sequence[str]) -> str:
    """A two-column CSV (source, translation) for download."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["source", "translation"])
    writer.writerows(zip(sources, translations))
    return buffer.getvalue()


@dataclass(frozen=True)
class TranslatedTexts:
    """Batch mode's result: the texts in order, each with its translation."""

    sources: list[str]
    translations: list[str]

    def rows(self) -> list[list[str]]:
        return [[source, translated] for source, translated in zip(self.sources, self.translations)]


def translate_all(
    cache: ModelCache,
    settings: Settings,
    lines: str,
    file_path: str | None,
    direction: str,
    on_status: StatusCallback | None = None,
    on_progress: ProgressCallback | None = None,
) -> TranslatedTexts:
    """Batch mode: one text per non-blank line, typed and/or from an uploaded .txt file.

    No texts gives an empty result without loading a model."""
    texts = texts_from_lines(lines or "")
    if file_path:
        texts += texts_from_lines(read_text_file(file_path))
    if not texts:
        return TranslatedTexts([], [])
    translator = load_translator(cache, settings, direction, on_status)
    return TranslatedTexts(texts, translate_many(translator, texts, on_progress))


def write_results_csv(result: TranslatedTexts, direction: str, source_file: str | None = None) -> Path:
    """The batch result as a CSV file in a fresh temporary folder, for download.

    Named after the uploaded file when there is one ("评论.txt" -> "评论-zh-en.csv"), so a
    reader finds it; written with a byte-order mark, without which Excel reads UTF-8 Chinese
    as mojibake."""
    folder = Path(tempfile.mkdtemp(prefix="translations-"))
    stem = _file_name_part(Path(source_file).stem) if source_file else ""
    path = folder / f"{stem or 'translations'}-{_file_name_part(direction)}.csv"
    path.write_text(results_csv(result.sources, result.translations), encoding="utf-8-sig")
    return path


def _file_name_part(text: str, limit: int = 80) -> str:
    """Letters and digits of any script, '-' for anything else (separators, dots, quotes)."""
    return re.sub(r"[^\w-]+", "-", text, flags=re.UNICODE).strip("-_")[:limit]
