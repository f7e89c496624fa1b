"""Split text into sentences, and sentences into pieces short enough for a model.

Translation models are trained on single sentences and read at most a few hundred
tokens, so long text is cut at sentence ends (Chinese `。！？；`, Western `.!?`),
and any "sentence" that is still too long is cut further at clause marks, then
between words, then between characters. Nothing is ever dropped: joining the
pieces gives back the text (less the whitespace between sentences).
"""

from __future__ import annotations

import re
from collections.abc import Callable

# Closing quotes and brackets stay with the sentence they end: 他说：“好。”
_CLOSERS = "\"'”’」』）)】》]"
_CJK = r"\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff"
_CJK_END = re.compile(rf"[。！？；]+[{re.escape(_CLOSERS)}]*")
# A Western end counts only before whitespace, the end, or a CJK character, so
# "3.14", "example.com" and "U.S.A" never split.
_WESTERN_END = re.compile(rf"[.!?]+[{re.escape(_CLOSERS)}]*(?=\s|$|[{_CJK}])")
_WORD_BEFORE = re.compile(r"([\w.]+)\.$")

# Words that end with a dot without ending a sentence (compared lower-case, no final dot).
ABBREVIATIONS = frozenset(
    """
    mr mrs ms mx dr prof sr jr st mt vs etc al approx ca cf e.g i.e a.m p.m u.s u.k u.n
    inc ltd co corp dept est gen gov
    jan feb mar apr jun jul aug sep sept oct nov dec mon tue wed thu fri sat sun
    mme mlle av bd z.b bzw usw d.h u.a s.o evtl ggf
    """.split()
)
# Abbreviations only before a number ("No. 5", "Fig. 2"); "I said no. Then" ends.
_ABBREVIATIONS_BEFORE_NUMBER = frozenset("no nos nr fig figs vol vols pp ch sec art".split())
# After these the next sentence usually starts right away, so a capital letter ends it.
_ENDS_SENTENCE_BEFORE_CAPITAL = frozenset({"etc", "al"})

CLAUSE_MARKS = "，,、：:；;"
_CLAUSE = re.compile(rf"[^{CLAUSE_MARKS}]*[{CLAUSE_MARKS}]+\s*|[^{CLAUSE_MARKS}]+")
_WORD = re.compile(r"\s*\S+\s*")


def split_sentences(text: str) -> list[str]:
    """The sentences of one paragraph, stripped, punctuation kept, none empty."""
    sentences, start = [], 0
    for end in _sentence_ends(text):
        sentence = text[start:end].strip()
        if sentence:
            sentences.append(sentence)
        start = end
    rest = text[start:].strip()
    if rest:
        sentences.append(rest)
    return sentences


def _sentence_ends(text: str) -> list[int]:
    ends = [m.end() for m in _CJK_END.finditer(text)]
    ends += [m.end() for m in _WESTERN_END.finditer(text) if _ends_sentence(text, m)]
    return sorted(set(ends))


def _ends_sentence(text: str, match: re.Match[str]) -> bool:
    """Is this `.`/`!`/`?` a real sentence end, not "Dr." or "J. Smith" or "approx. five"?"""
    if not match.group().startswith(".") or match.group().startswith(".."):
        return True  # "!", "?" and an ellipsis always end a sentence
    following = text[match.end():].lstrip()
    if following[:1].islower():
        return False
    word = _WORD_BEFORE.search(text[: match.start() + 1])
    if word is None:
        return True
    token = word.group(1).lower()
    if token in _ABBREVIATIONS_BEFORE_NUMBER:
        return not following[:1].isdigit()
    if token in _ENDS_SENTENCE_BEFORE_CAPITAL and following[:1].isupper():
        return True
    is_initial = len(token) == 1 and word.group(1).isupper() and token != "i"
    return not (token in ABBREVIATIONS or is_initial)


def split_to_fit(text: str, fits: Callable[[str], bool]) -> list[str]:
    """Cut `text` into consecutive pieces that each satisfy `fits`, dropping nothing.

    Tries clause marks first, then whitespace, then characters, so the cuts fall
    where they hurt the meaning least. `"".join(pieces) == text` always holds.
    """
    return _split(text, fits, level=0)


def _split(text: str, fits: Callable[[str], bool], level: int) -> list[str]:
    if not text or fits(text):
        return [text] if text else []
    splitters = (_CLAUSE.findall, _WORD.findall)
    while level < len(splitters):
        atoms = splitters[level](text)
        level += 1
        if len(atoms) > 1:
            return _pack(atoms, fits, level)
    return _split_characters(text, fits)


def _pack(atoms: list[str], fits: Callable[[str], bool], level: int) -> list[str]:
    """Greedily join neighbouring atoms while they fit; split further any that never do."""
    pieces, current = [], ""
    for atom in atoms:
        if current and fits(current + atom):
            current += atom
            continue
        if current:
            pieces.append(current)
        if fits(atom):
            current = atom
        else:
            pieces.extend(_split(atom, fits, level))
            current = ""
    if current:
        pieces.append(current)
    return pieces


def _split_characters(text: str, fits: Callable[[str], bool]) -> list[str]:
    """The longest prefixes that fit, found by bisection (one char at least, so it ends)."""
    pieces = []
    while text:
        low, high = 1, len(text)
        while low < high:
            middle = (low + high + 1) // 2
            if fits(text[:middle]):
                low = middle
            else:
                high = middle - 1
        pieces.append(text[:low])
        text = text[low:]
    return pieces
