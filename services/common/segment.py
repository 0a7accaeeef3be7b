"""Sentence segmentation for clinical notes that carry no MEDEC sentence ids.

Used for model outputs, gRPC submissions and the raw pair JSONL. Design goals, in order:

1. *Stable*: the same text always gives the same sentences, and editing one sentence never moves
   the boundaries of the others (boundaries depend only on local context).
2. *Clinical units stay whole*: ``102/73 mm Hg``, ``Na+: 135 mEq/L``, ``38.1 C``, ``Dr. Smith``,
   ``e.g.``, ``q.i.d.`` and decimals never split.
3. *MEDEC-compatible*: on unedited MEDEC notes it reproduces MEDEC's boundaries wherever MEDEC's
   lines are real sentences (MEDEC's own splitter also breaks ``mm`` / ``Hg.`` apart; we do not).

Rules: a newline ends a sentence (lab tables are one value per line); within a line a sentence ends
at ``.``, ``?`` or ``!`` (optionally followed by closing quotes/brackets) followed by whitespace and
an upper-case letter, a digit or an opening quote/bracket, unless the word before the period is a
known abbreviation or a single initial.
"""

from __future__ import annotations

import re

# Words that end with a period but do not end a sentence (compared lower-cased, without the dot).
ABBREVIATIONS = frozenset(
    {
        "dr", "mr", "mrs", "ms", "prof", "st", "sr", "jr", "vs", "etc", "approx", "no", "nos", "fig",
        "e.g", "i.e", "eg", "ie", "cf", "al", "inc", "ltd", "co", "dept", "univ", "ave", "mt", "ft",
        "b.i.d", "t.i.d", "q.i.d", "q.d", "p.o", "p.r", "i.v", "i.m", "s.c", "q.h", "h.s", "a.m",
        "p.m", "u.s", "u.k", "n.b", "wt", "ht", "temp", "resp", "hr", "min", "max", "mg", "mcg",
        "sp", "spp", "var", "subsp", "ca", "jan", "feb", "mar", "apr", "jun", "jul", "aug", "sep",
        "sept", "oct", "nov", "dec",
    }
)
# Abbreviations that are also ordinary sentence-final words: they only block a split when the next
# word is lower-case or a number (``pulse 80/min. She`` must still split).
_WEAK_ABBREVIATIONS = frozenset({"min", "max", "hr", "temp", "resp", "wt", "ht", "mg", "mcg", "no", "ca",
                                 "co", "ft", "mar", "dec", "var", "sp"})

# Linear time (issue 12: a run of 8,000 dots took 1.3 s): a boundary never starts inside a run of
# end marks (the lookbehind), and every quantifier is possessive, so nothing is re-scanned on failure.
# Neither changes what matches: the pieces a backtrack could give up are never whitespace or a
# lookahead character, and a run that fails at its first mark fails at every later one.
_BOUNDARY = re.compile(r"(?<![.?!])([.?!]++)([\"'\u201d\u2019)\]]*+)(\s++)(?=[\"'\u201c\u2018(\[]?[A-Z0-9])")
_WORD_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz.")
_LETTERS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")
_DOTTED_ACRONYM = re.compile(r"(?:[a-z]\.)+[a-z]")


def _word_before(line: str, lo: int, hi: int) -> str:
    """The word (letters and dots, starting with a letter) that ends at ``line[hi]``, not looking back
    past ``lo``. Linear over a line: the runs scanned for two boundaries never overlap (whitespace
    follows every boundary)."""
    i = hi
    while i > lo and line[i - 1] in _WORD_CHARS:
        i -= 1
    while i < hi and line[i] not in _LETTERS:
        i += 1  # the word starts at a letter
    return line[i:hi]


def _is_abbreviation(line: str, lo: int, hi: int, next_char: str) -> bool:
    """Does the period at ``line[hi]`` belong to an abbreviation rather than end a sentence? Only the
    word before it (``line[lo:hi]`` bounds the search) and the next character are read: no copies."""
    word = _word_before(line, lo, hi).lower().rstrip(".")
    if not word:
        return False
    if word in ABBREVIATIONS:
        if word in _WEAK_ABBREVIATIONS:
            return next_char.isdigit()
        return True
    # dotted acronyms like "U.S.A" or "b.i.d" not listed above
    return _DOTTED_ACRONYM.fullmatch(word) is not None


def _split_line(line: str) -> list[str]:
    sentences: list[str] = []
    start = 0
    for match in _BOUNDARY.finditer(line):
        end = match.end(2)
        if match.group(1) == "." and _is_abbreviation(line, start, match.start(1), line[match.end():match.end() + 1]):
            continue
        piece = line[start:end].strip()
        if piece:
            sentences.append(piece)
        start = match.end()
    tail = line[start:].strip()
    if tail:
        sentences.append(tail)
    return sentences


def split_sentences(text: str) -> list[str]:
    """Split a note into sentences (stripped, non-empty), keeping clinical units together."""
    out: list[str] = []
    for line in text.replace("\r\n", "\n").replace("\r", "\n").split("\n"):
        if line.strip():
            out.extend(_split_line(line))
    return out


def number_sentences(text: str) -> list[tuple[int, str]]:
    """MEDEC-style numbered sentences: ids 0..n-1 in reading order."""
    return list(enumerate(split_sentences(text)))


def join_sentences(sentences: list[tuple[int, str]] | list[str]) -> str:
    """A note text from its sentences (one space between them); the inverse used for model inputs."""
    parts = [s[1] if isinstance(s, tuple | list) else s for s in sentences]
    return " ".join(p.strip() for p in parts if p and p.strip())


_SENTENCE_END = re.compile(r"[.?!][\"')]*$")
_SENTENCE_START = re.compile(r"^[A-Z0-9\"(]")


def medec_agreement(notes) -> tuple[int, int]:
    """(MEDEC lines that are real sentences, how many of them ``split_sentences`` reproduces exactly).

    A MEDEC line is a real sentence when it starts a sentence, ends one and is a single line;
    MEDEC's own splitting is noisy elsewhere (``mm`` / ``Hg.`` on separate lines), so only those count.
    ``notes`` carry ``.text`` and ``.sentences`` (``medec.prepare.MedecNote``).
    """
    real = hit = 0
    for note in notes:
        ours = set(split_sentences(note.text))
        prev_ends = True
        for _sid, sentence in note.sentences:
            lines = sentence.split("\n")
            first = lines[0].strip()
            if prev_ends and _SENTENCE_END.search(first) and len(lines) == 1 and _SENTENCE_START.match(first) \
                    and first in note.text:
                real += 1
                hit += first in ours
            prev_ends = bool(_SENTENCE_END.search(lines[-1].strip()))
    return real, hit
