"""MEDIQA-CORR 2024 scoring, reproducing the official shared-task scorer number for number.

The official script (MEDIQA-CORR 2024 evaluation notebook) decides every metric here; its quirks are
kept on purpose so our numbers can be compared with published ones:

* Reference: ``Text ID`` -> flag, error sentence id (compared as strings) and corrected sentence;
  a missing corrected sentence (pandas' NA markers) becomes ``"NA"``. Blank rows (the test CSV's
  placeholders for the private UW notes) are dropped and flags/ids are cast to int first, so
  ``1.0`` never meets ``1`` (the official script reads them as floats and scores every row wrong).
* Run file: one ``<text-id> <flag> <sentence-id> <correction or NA>`` line per text; lines that do
  not match the official pattern are skipped (and so count as wrong); a later line for the same id
  wins; surrounding double quotes are removed; a flag of ``0`` forces the correction to ``"NA"``.
* Error-flag accuracy and error-sentence accuracy are over all reference texts (missing = wrong).
* ROUGE-1/2/L F1 (the ``rouge`` 1.0.1 package's algorithm the official script calls: text split on
  ``.`` into sentences, whitespace tokens, case kept, unique n-grams, summary-level union LCS) on the
  pairs where both the reference and the run give a correction. ``*_subset`` is their mean; the
  composite adds 1 per text where both say ``"NA"`` and divides by the number of texts.
* ``aggregate_composite`` is the official ``AggregateC`` restricted to ROUGE-1 (BERTScore and BLEURT
  need model downloads and are not computed here).
"""

from __future__ import annotations

import csv
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from medec.prepare import parse_medec_sentences  # one parser of MEDEC's Sentences column

NA = "NA"
# pandas' default NA markers: the official script reads the CSV with pandas, so these become "NA"
PANDAS_NA_STRINGS = frozenset(
    {"", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND", "1.#QNAN", "<NA>",
     "N/A", "NA", "NULL", "NaN", "None", "n/a", "nan", "null"}
)
RUN_LINE = re.compile(r"[a-z0-9\-]+\s[0-9]+\s\-?[0-9]+\s.+")
REFERENCE_COLUMNS = ("Text ID", "Error Flag", "Error Sentence ID", "Corrected Sentence")


class EvalInputError(ValueError):
    """A reference CSV or run file that cannot be scored; the message says what to fix."""


@dataclass(frozen=True)
class ReferenceRow:
    text_id: str
    error_flag: int
    error_sentence_id: int
    corrected_sentence: str  # "NA" when the note has no error
    text: str = ""
    sentences: str = ""


@dataclass
class RunFile:
    flags: dict[str, str] = field(default_factory=dict)
    sentence_ids: dict[str, str] = field(default_factory=dict)
    corrections: dict[str, str] = field(default_factory=dict)
    invalid_lines: list[int] = field(default_factory=list)  # 1-based line numbers


# --------------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------------


def _as_int(value: str, column: str, text_id: str) -> int:
    try:
        number = float(value)
    except ValueError as exc:
        raise EvalInputError(f"{column} of {text_id!r} is not a number: {value!r}") from exc
    if not number.is_integer():
        raise EvalInputError(f"{column} of {text_id!r} is not an integer: {value!r}")
    return int(number)


def load_reference(path: str | Path) -> list[ReferenceRow]:
    """Reference rows in file order; blank rows dropped, flag and sentence id cast to int."""
    path = Path(path)
    if not path.is_file():
        raise EvalInputError(f"reference CSV not found: {path}")
    with path.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        missing = [c for c in REFERENCE_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise EvalInputError(f"{path}: missing column(s) {', '.join(missing)}; is this a MEDEC CSV?")
        rows: list[ReferenceRow] = []
        for record in reader:
            text_id = (record.get("Text ID") or "").strip()
            if not text_id:
                continue  # blank placeholder row
            corrected = record["Corrected Sentence"]
            if corrected is None or corrected in PANDAS_NA_STRINGS:
                corrected = NA
            rows.append(ReferenceRow(
                text_id=text_id,
                error_flag=_as_int(record["Error Flag"], "Error Flag", text_id),
                error_sentence_id=_as_int(record["Error Sentence ID"], "Error Sentence ID", text_id),
                corrected_sentence=corrected,
                text=record.get("Text") or "",
                sentences=record.get("Sentences") or "",
            ))
    if not rows:
        raise EvalInputError(f"{path}: no reference rows")
    return rows


def _strip_quotes(text: str) -> str:
    while text.startswith('"') and len(text) > 1:
        text = text[1:]
    while text.endswith('"') and len(text) > 1:
        text = text[:-1]
    return text


def parse_run_lines(lines: Iterable[str]) -> RunFile:
    run = RunFile()
    for number, raw in enumerate(lines, start=1):
        line = raw.strip()
        if not line:
            continue
        if not RUN_LINE.fullmatch(line):
            run.invalid_lines.append(number)
            continue
        text_id, flag, sentence_id, *words = line.split()
        run.flags[text_id] = flag
        run.sentence_ids[text_id] = sentence_id
        run.corrections[text_id] = NA if flag == "0" else _strip_quotes(" ".join(words).strip())
    return run


def load_run(path: str | Path) -> RunFile:
    path = Path(path)
    if not path.is_file():
        raise EvalInputError(f"run file not found: {path}")
    with path.open(encoding="utf-8") as handle:
        return parse_run_lines(handle)


def format_run_line(text_id: str, error_flag: bool, sentence_id: int, corrected_sentence: str | None) -> str:
    """One run-file line; a correction is kept on one line and "NA" stands for none."""
    correction = " ".join((corrected_sentence or "").split()) if error_flag else ""
    return f"{text_id} {int(error_flag)} {sentence_id if error_flag else -1} {correction or NA}"


# --------------------------------------------------------------------------------------------------
# ROUGE as the `rouge` 1.0.1 package computes it (the library the official scorer calls)
# --------------------------------------------------------------------------------------------------


def _rouge_sentences(text: str) -> list[str]:
    # split on "." and normalise whitespace; a blank piece survives as "" (an empty token), as there
    return [" ".join(piece.split()) for piece in text.split(".") if len(piece) > 0]


def _words(sentences: list[str]) -> list[str]:
    return [word for sentence in sentences for word in sentence.split(" ")]


def _ngrams(words: list[str], n: int) -> set[tuple[str, ...]]:
    return {tuple(words[i : i + n]) for i in range(len(words) - n + 1)}


def _f1(overlap: int, hyp_count: int, ref_count: int) -> float:
    precision = overlap / hyp_count if hyp_count else 0.0
    recall = overlap / ref_count if ref_count else 0.0
    return 2.0 * ((precision * recall) / (precision + recall + 1e-8))


def _rouge_n(hyp: list[str], ref: list[str], n: int) -> float:
    hyp_ngrams, ref_ngrams = _ngrams(_words(hyp), n), _ngrams(_words(ref), n)
    return _f1(len(hyp_ngrams & ref_ngrams), len(hyp_ngrams), len(ref_ngrams))


def _lcs_words(ref_words: list[str], hyp_words: list[str]) -> set[str]:
    """Words of one longest common subsequence, traced back with the package's tie-breaking."""
    rows, cols = len(ref_words), len(hyp_words)
    table = [[0] * (cols + 1) for _ in range(rows + 1)]
    for i in range(1, rows + 1):
        for j in range(1, cols + 1):
            if ref_words[i - 1] == hyp_words[j - 1]:
                table[i][j] = table[i - 1][j - 1] + 1
            else:
                table[i][j] = max(table[i - 1][j], table[i][j - 1])
    found: set[str] = set()
    i, j = rows, cols
    while i > 0 and j > 0:
        if ref_words[i - 1] == hyp_words[j - 1]:
            found.add(ref_words[i - 1])
            i, j = i - 1, j - 1
        elif table[i - 1][j] > table[i][j - 1]:
            i -= 1
        else:
            j -= 1
    return found


def _rouge_l(hyp: list[str], ref: list[str]) -> float:
    """Summary-level ROUGE-L over unique words (the package's ``exclusive=True`` default)."""
    ref_unique, hyp_unique = len(set(_words(ref))), len(set(_words(hyp)))
    union: set[str] = set()
    for ref_sentence in ref:
        ref_words = ref_sentence.split(" ")
        for hyp_sentence in hyp:
            union |= _lcs_words(ref_words, hyp_sentence.split(" "))
    recall, precision = len(union) / ref_unique, len(union) / hyp_unique
    return 2.0 * ((precision * recall) / (precision + recall + 1e-8))


def rouge_f1(prediction: str, reference: str) -> tuple[float, float, float]:
    """(ROUGE-1, ROUGE-2, ROUGE-L) F1 of one prediction against one reference.

    The official scorer crashes on a text with no sentence at all (e.g. "..."); that scores 0 here.
    """
    hyp, ref = _rouge_sentences(prediction), _rouge_sentences(reference)
    if not hyp or not ref:
        return 0.0, 0.0, 0.0
    return _rouge_n(hyp, ref, 1), _rouge_n(hyp, ref, 2), _rouge_l(hyp, ref)


# --------------------------------------------------------------------------------------------------
# Scoring
# --------------------------------------------------------------------------------------------------


def _mean(values: list[float]) -> float | None:
    return math.fsum(values) / len(values) if values else None


def score(reference: list[ReferenceRow], run: RunFile) -> dict:
    """Every official metric, plus the counters the official script prints."""
    by_id: dict[str, ReferenceRow] = {}
    for row in reference:
        by_id[row.text_id] = row
    total = len(by_id)
    flags_right = sum(1 for tid, row in by_id.items() if run.flags.get(tid) == str(row.error_flag))
    sentences_right = sum(1 for tid, row in by_id.items()
                          if run.sentence_ids.get(tid) == str(row.error_sentence_id))
    counters = {"total_texts": 0, "reference_na": 0, "total_system_texts": 0, "system_provided_na": 0,
                "system_provided_correct_na": 0}
    r1: list[float] = []
    r2: list[float] = []
    rl: list[float] = []
    for tid, row in by_id.items():
        counters["total_texts"] += 1
        ref_correction = row.corrected_sentence
        if ref_correction == NA:
            counters["reference_na"] += 1
        if tid not in run.corrections:
            continue
        counters["total_system_texts"] += 1
        candidate = run.corrections[tid]
        if candidate == NA:
            counters["system_provided_na"] += 1
        if ref_correction == NA and candidate == NA:
            counters["system_provided_correct_na"] += 1
            continue
        if ref_correction == NA or candidate == NA:
            continue
        s1, s2, sl = rouge_f1(candidate, ref_correction)
        r1.append(s1)
        r2.append(s2)
        rl.append(sl)
    correct_na = counters["system_provided_correct_na"]

    def composite(values: list[float]) -> float:
        return (math.fsum(values) + correct_na) / total

    return {
        "error_flag_accuracy": flags_right / total,
        "error_sentence_accuracy": sentences_right / total,
        "rouge1_subset": _mean(r1),
        "rouge2_subset": _mean(r2),
        "rougeL_subset": _mean(rl),
        "rouge1_composite": composite(r1),
        "rouge2_composite": composite(r2),
        "rougeL_composite": composite(rl),
        "aggregate_subset": _mean(r1),
        "aggregate_composite": composite(r1),
        "correction_pairs": len(r1),
        "counters": counters,
        "run_texts_missing": sum(1 for tid in by_id if tid not in run.flags),
        "run_invalid_lines": len(run.invalid_lines),
    }


def baseline_run(reference: list[ReferenceRow], last_sentence_ids: dict[str, int] | None) -> RunFile:
    """A trivial run: "no error" everywhere (``None``), or the last sentence flagged everywhere."""
    run = RunFile()
    for row in reference:
        if last_sentence_ids is None:
            run.flags[row.text_id], run.sentence_ids[row.text_id], run.corrections[row.text_id] = "0", "-1", NA
        else:
            last = last_sentence_ids.get(row.text_id, -1)
            run.flags[row.text_id] = "1" if last >= 0 else "0"
            run.sentence_ids[row.text_id] = str(last)
            run.corrections[row.text_id] = NA
    return run


METRIC_LABELS = (
    ("error_flag_accuracy", "Error flag accuracy"),
    ("error_sentence_accuracy", "Error sentence accuracy"),
    ("rouge1_subset", "ROUGE-1 F (subset)"),
    ("rouge2_subset", "ROUGE-2 F (subset)"),
    ("rougeL_subset", "ROUGE-L F (subset)"),
    ("rouge1_composite", "ROUGE-1 F composite"),
    ("rouge2_composite", "ROUGE-2 F composite"),
    ("rougeL_composite", "ROUGE-L F composite"),
    ("aggregate_composite", "Aggregate composite (ROUGE-1)"),
)


def last_sentence_ids(reference: list[ReferenceRow]) -> dict[str, int]:
    """The highest sentence id of each note (the "always the last sentence" baseline)."""
    out: dict[str, int] = {}
    for row in reference:
        sentences = parse_medec_sentences(row.sentences)
        out[row.text_id] = max((sid for sid, _ in sentences), default=-1)
    return out
