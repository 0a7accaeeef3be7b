"""MEDEC data: read the CSVs and pair JSONL, pair error notes with their corrected notes, split.

Formats read (see ../shared/medec/README.md):

* MEDEC CSV (MS validation/test, the full MS training CSV, the UW CSVs: all share the columns
  ``Text ID, Text, Sentences, Error Flag, Error Type, Error Sentence ID, Error Sentence,
  Corrected Sentence, Corrected Text``). ``Sentences`` holds ``<id> <sentence>`` lines; lines
  without an id continue the previous sentence. MEDEC's ids are kept as they are.
* Raw pair JSONL (``train-pairs/``): ``note_id, incorrect_note, correct_note, error_type,
  error_sentence, corrected_sentence, split``. No ids: we segment with
  :mod:`services.common.segment`, anchoring the error sentence so it is exactly one sentence.
* Prepared JSONL (``pairs.jsonl`` and the split files): one :class:`PairRecord` per line.

Traps handled here: blank rows in the test CSV are skipped (and counted); ids and flags written as
floats (``1.0``) are read as ints; twins (an error note and its clean rewrite at the next Text ID) are
one *case* and always share a split; test notes only ever go to ``eval``. A malformed row raises
:class:`MedecFormatError` naming the file, row and column.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import random
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from services.common.fileio import open_private
from services.common.segment import split_sentences

CSV_COLUMNS = ("Text ID", "Text", "Sentences", "Error Flag", "Error Type", "Error Sentence ID",
               "Error Sentence", "Corrected Sentence", "Corrected Text")
RAW_PAIR_FIELDS = ("note_id", "incorrect_note", "correct_note", "error_type", "error_sentence",
                   "corrected_sentence")
SPLITS = ("sft_train", "rl_train", "eval")
DEFAULT_RATIOS = (0.5, 0.4, 0.1)
# MEDEC spells error types inconsistently across releases ("causalorganism" in the pair JSONL)
_ERROR_TYPE_CANON = {t.lower(): t for t in ("diagnosis", "management", "treatment", "pharmacotherapy",
                                            "causalOrganism")}
_NA = ("", "NA", "N/A", "nan", "None")

csv.field_size_limit(16 * 1024 * 1024)


class MedecFormatError(ValueError):
    """A MEDEC file has a row we cannot use; the message names file, row and column."""

    def __init__(self, file: str | Path, row: int, column: str, problem: str):
        super().__init__(f"{file}: row {row}, column {column!r}: {problem}")
        self.file = str(file)
        self.row = row
        self.column = column
        self.problem = problem


def normalize_error_type(value: str) -> str | None:
    """MEDEC's error type in canonical spelling (``formats.ERROR_TYPES``), None when not one."""
    return _ERROR_TYPE_CANON.get((value or "").strip().lower())


def _ws(text: str) -> str:
    return " ".join(text.split())


@dataclass
class PairRecord:
    """One MEDEC error note paired with its corrected note. Sentence ids align between the two:
    exactly ``error_sentence_id`` differs."""

    pair_id: str
    note_id: str
    split: str
    error_type: str
    error_sentence_id: int
    error_sentence: str
    corrected_sentence: str
    incorrect_note: str
    correct_note: str
    incorrect_sentences: list[tuple[int, str]]
    correct_sentences: list[tuple[int, str]]
    source: str

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["incorrect_sentences"] = [[i, s] for i, s in self.incorrect_sentences]
        d["correct_sentences"] = [[i, s] for i, s in self.correct_sentences]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> PairRecord:
        values = {f.name: d[f.name] for f in dataclasses.fields(cls)}
        values["incorrect_sentences"] = [(int(i), str(s)) for i, s in d["incorrect_sentences"]]
        values["correct_sentences"] = [(int(i), str(s)) for i, s in d["correct_sentences"]]
        values["error_sentence_id"] = int(d["error_sentence_id"])
        return cls(**values)


@dataclass
class MedecNote:
    """One row of a MEDEC CSV (error or clean note)."""

    note_id: str
    text: str
    sentences: list[tuple[int, str]]
    error_flag: bool
    error_type: str | None
    error_sentence_id: int
    error_sentence: str | None
    corrected_sentence: str | None
    corrected_text: str | None
    source: str
    file: str = ""
    row: int = 0
    split: str = ""
    case_id: str = ""
    twin_of: str | None = None  # the error note whose clean twin this is

    @property
    def is_test(self) -> bool:
        return "-test-" in self.note_id or "test" in Path(self.file).name.lower()

    def to_dict(self) -> dict:
        return {"note_id": self.note_id, "text": self.text, "sentences": [[i, s] for i, s in self.sentences],
                "error_flag": self.error_flag, "error_type": self.error_type,
                "error_sentence_id": self.error_sentence_id, "error_sentence": self.error_sentence,
                "corrected_sentence": self.corrected_sentence, "source": self.source, "split": self.split,
                "case_id": self.case_id, "twin_of": self.twin_of}


# ----------------------------------------------------------------------------------------------
# parsing
# ----------------------------------------------------------------------------------------------

_ID_LINE = re.compile(r"^(\d+) (.*)$")


def parse_medec_sentences(cell: str) -> list[tuple[int, str]]:
    """MEDEC's ``Sentences`` column: ``<id> <text>`` lines; id-less lines continue the previous one
    (a leading id-less line becomes sentence 0, so no text is dropped)."""
    sentences: list[list] = []
    for line in cell.replace("\r\n", "\n").split("\n"):
        match = _ID_LINE.match(line)
        if match:
            sentences.append([int(match.group(1)), match.group(2)])
        elif line.strip():
            if sentences:
                sentences[-1][1] = f"{sentences[-1][1]}\n{line}"
            else:
                sentences.append([0, line])
    return [(i, s.strip()) for i, s in sentences]


def _int(value: str, file: Path, row: int, column: str) -> int:
    try:
        number = float(value.strip())
    except ValueError:
        raise MedecFormatError(file, row, column, f"not an integer: {value[:40]!r}") from None
    if number != int(number):
        raise MedecFormatError(file, row, column, f"not an integer: {value[:40]!r}")
    return int(number)


def source_for(note_id: str, fallback: str = "medec") -> str:
    """``ms-val-3`` -> ``medec-ms-val``; ids of another shape fall back to the file's source."""
    if note_id.startswith("demo-"):
        return "demo"  # our own demo notes (medec/demo_data), not MEDEC
    match = re.match(r"^([a-z]+-[a-z]+)-\d+$", note_id)
    return f"medec-{match.group(1)}" if match else fallback


def read_medec_csv(path: str | Path, source: str | None = None) -> tuple[list[MedecNote], int]:
    """All notes of one MEDEC CSV and the number of blank rows skipped.

    Raises :class:`MedecFormatError` (file, row, column) for a row we cannot use. Row numbers count
    the header as row 1, like a spreadsheet.
    """
    path = Path(path)
    notes: list[MedecNote] = []
    blank = 0
    with path.open(encoding="utf-8-sig", newline="") as fh:
        reader = csv.DictReader(fh)
        missing = [c for c in CSV_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise MedecFormatError(path, 1, missing[0], f"missing column(s) {missing}; header is {reader.fieldnames}")
        seen: set[str] = set()
        for row_number, row in enumerate(reader, start=2):
            if all(not (row.get(c) or "").strip() for c in CSV_COLUMNS):
                blank += 1  # the test CSV keeps empty rows where the private UW notes would be
                continue
            notes.append(_note_from_row(row, path, row_number, source))
            if notes[-1].note_id in seen:
                raise MedecFormatError(path, row_number, "Text ID", f"duplicate id {notes[-1].note_id!r}")
            seen.add(notes[-1].note_id)
    return notes, blank


def _note_from_row(row: dict, path: Path, n: int, source: str | None) -> MedecNote:
    note_id = (row["Text ID"] or "").strip()
    if not note_id:
        raise MedecFormatError(path, n, "Text ID", "empty")
    text = row["Text"] or ""
    if not text.strip():
        raise MedecFormatError(path, n, "Text", "empty note text")
    sentences = parse_medec_sentences(row["Sentences"] or "")
    if not sentences:
        raise MedecFormatError(path, n, "Sentences", "no '<id> <sentence>' lines")
    ids = [i for i, _ in sentences]
    if any(b <= a for a, b in zip(ids, ids[1:], strict=False)):
        raise MedecFormatError(path, n, "Sentences", "sentence ids are not increasing")
    flag = _int(row["Error Flag"] or "", path, n, "Error Flag")
    if flag not in (0, 1):
        raise MedecFormatError(path, n, "Error Flag", f"must be 0 or 1, got {flag}")
    note = MedecNote(note_id=note_id, text=text, sentences=sentences, error_flag=bool(flag), error_type=None,
                     error_sentence_id=-1, error_sentence=None, corrected_sentence=None, corrected_text=None,
                     source=source or source_for(note_id, f"medec-{path.stem.lower()}"), file=str(path), row=n)
    if not flag:
        return note
    etype = normalize_error_type(row["Error Type"] or "")
    if etype is None:
        raise MedecFormatError(path, n, "Error Type", f"unknown error type {row['Error Type']!r}")
    eid = _int(row["Error Sentence ID"] or "", path, n, "Error Sentence ID")
    by_id = dict(sentences)
    if eid not in by_id:
        raise MedecFormatError(path, n, "Error Sentence ID", f"{eid} is not a sentence id (ids {ids[0]}..{ids[-1]})")
    error_sentence = (row["Error Sentence"] or "").strip()
    corrected = (row["Corrected Sentence"] or "").strip()
    if error_sentence in _NA:
        raise MedecFormatError(path, n, "Error Sentence", "missing for an error note")
    if corrected in _NA:
        raise MedecFormatError(path, n, "Corrected Sentence", "missing for an error note")
    if _ws(by_id[eid]) != _ws(error_sentence):
        raise MedecFormatError(path, n, "Error Sentence", f"does not match sentence {eid} of 'Sentences'")
    corrected_text = (row["Corrected Text"] or "").strip()
    note.error_type = etype
    note.error_sentence_id = eid
    note.error_sentence = error_sentence
    note.corrected_sentence = corrected
    note.corrected_text = row["Corrected Text"] if corrected_text not in _NA else text.replace(error_sentence, corrected)
    return note


def pair_from_note(note: MedecNote) -> PairRecord:
    """The PairRecord of an error note: the corrected note is the same sentences with one replaced."""
    if not note.error_flag:
        raise ValueError(f"{note.note_id} has no error to pair")
    correct = [(i, note.corrected_sentence if i == note.error_sentence_id else s) for i, s in note.sentences]
    return PairRecord(pair_id=note.note_id, note_id=note.note_id, split=note.split, error_type=note.error_type or "",
                      error_sentence_id=note.error_sentence_id, error_sentence=note.error_sentence or "",
                      corrected_sentence=note.corrected_sentence or "", incorrect_note=note.text,
                      correct_note=note.corrected_text or "", incorrect_sentences=list(note.sentences),
                      correct_sentences=correct, source=note.source)


def segment_around(text: str, anchor: str) -> tuple[list[str], int] | None:
    """Sentences of ``text`` with ``anchor`` as exactly one of them, and its index (None if absent)."""
    start = text.find(anchor)
    if start < 0:
        return None
    before = split_sentences(text[:start])
    after = split_sentences(text[start + len(anchor):])
    return [*before, anchor.strip(), *after], len(before)


def pair_from_raw(d: dict, file: Path, line: int) -> PairRecord:
    """A PairRecord from one raw pair line (``train-pairs/`` format, no sentence ids)."""
    for key in RAW_PAIR_FIELDS:
        if not isinstance(d.get(key), str) or not d[key].strip():
            raise MedecFormatError(file, line, key, "missing or empty")
    etype = normalize_error_type(d["error_type"])
    if etype is None:
        raise MedecFormatError(file, line, "error_type", f"unknown error type {d['error_type']!r}")
    error_sentence = d["error_sentence"].strip()
    corrected = d["corrected_sentence"].strip()
    found = segment_around(d["incorrect_note"], error_sentence)
    if found is None:
        raise MedecFormatError(file, line, "error_sentence", "does not occur in incorrect_note")
    sentences, eid = found
    incorrect = list(enumerate(sentences))
    correct = [(i, corrected if i == eid else s) for i, s in incorrect]
    note_id = d["note_id"].strip()
    # the corrected note is the error note with its one sentence fixed: a few raw correct notes are
    # the reordered twin instead, which would break "exactly one sentence differs"
    correct_note = d["incorrect_note"].replace(d["error_sentence"], d["corrected_sentence"], 1)
    split = d.get("split") or ""
    return PairRecord(pair_id=note_id, note_id=note_id, split=split if split in SPLITS else "", error_type=etype,
                      error_sentence_id=eid, error_sentence=error_sentence, corrected_sentence=corrected,
                      incorrect_note=d["incorrect_note"], correct_note=correct_note, incorrect_sentences=incorrect,
                      correct_sentences=correct, source=d.get("source") or source_for(note_id, "medec-pairs"))


def load_pairs_jsonl(path: str | Path) -> list[PairRecord]:
    """PairRecords from a prepared file (``pairs.jsonl``, split files) or a raw pair JSONL."""
    from services.common.fileio import JsonlError, read_jsonl

    path = Path(path)
    records: list[PairRecord] = []
    try:
        for line_number, d in read_jsonl(path):
            if "incorrect_sentences" in d:
                try:
                    records.append(PairRecord.from_dict(d))
                except (KeyError, TypeError, ValueError) as exc:
                    raise MedecFormatError(path, line_number, str(exc).strip("'"), "bad prepared record") from None
            else:
                records.append(pair_from_raw(d, path, line_number))
    except JsonlError as exc:
        raise MedecFormatError(path, exc.line, "<json>", exc.reason) from None
    return records


def write_jsonl(path: str | Path, rows: Iterable[dict]) -> int:
    """One JSON object a line. Every file written here holds notes: it is created 0600 (issue 12)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    n = 0
    with open_private(path, "w") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
            n += 1
    return n


def load_notes_jsonl(path: str | Path) -> list[MedecNote]:
    """Notes written by ``prepare`` (``notes.jsonl``: every CSV note, clean twins included)."""
    notes = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        if line.strip():
            d = json.loads(line)
            d["sentences"] = [(int(i), s) for i, s in d["sentences"]]
            notes.append(MedecNote(**d, corrected_text=None))
    return notes


# ----------------------------------------------------------------------------------------------
# cases and splits
# ----------------------------------------------------------------------------------------------

def _id_parts(note_id: str) -> tuple[str, int] | None:
    match = re.match(r"^(.*?)(\d+)$", note_id)
    return (match.group(1), int(match.group(2))) if match else None


def group_cases(notes: Sequence[MedecNote]) -> None:
    """Set ``case_id`` on every note: an error note and its clean twin (the next Text ID, flag 0)
    form one case. Everything else is a case of its own."""
    by_id = {n.note_id: n for n in notes}
    for note in notes:
        note.case_id = note.case_id or note.note_id
    for note in notes:
        if not note.error_flag:
            continue
        parts = _id_parts(note.note_id)
        if parts is None:
            continue
        twin = by_id.get(f"{parts[0]}{parts[1] + 1}")
        if twin is not None and not twin.error_flag and twin.twin_of is None:
            twin.case_id = note.case_id
            twin.twin_of = note.note_id


def assign_splits(case_ids: Iterable[str], seed: int, ratios: Sequence[float] = DEFAULT_RATIOS) -> dict[str, str]:
    """Deterministic, seeded case -> split. Same cases + seed -> same splits, whatever the order."""
    if len(ratios) != 3 or any(r < 0 for r in ratios) or sum(ratios) <= 0:
        raise ValueError(f"ratios must be three non-negative numbers (sft_train, rl_train, eval), got {ratios}")
    cases = sorted(set(case_ids))
    random.Random(seed).shuffle(cases)
    total = sum(ratios)
    bounds = [round(len(cases) * sum(ratios[: i + 1]) / total) for i in range(3)]
    out: dict[str, str] = {}
    for index, case in enumerate(cases):
        out[case] = next((SPLITS[i] for i, bound in enumerate(bounds) if index < bound), SPLITS[-1])
    return out


@dataclass
class PrepareResult:
    pairs: list[PairRecord]
    notes: list[MedecNote]
    files: list[str]
    blank_rows: int = 0
    duplicates_skipped: int = 0
    twins: int = 0
    skipped: list[str] = field(default_factory=list)

    def summary(self) -> dict:
        per_split = Counter(p.split for p in self.pairs)
        per_type: dict[str, Counter] = {s: Counter() for s in SPLITS}
        for p in self.pairs:
            per_type[p.split][p.error_type] += 1
        notes_per_split = Counter(n.split for n in self.notes)
        return {"files": self.files, "pairs": len(self.pairs), "pairs_per_split": dict(per_split),
                "error_types_per_split": {s: dict(c) for s, c in per_type.items()},
                "csv_notes_per_split": dict(notes_per_split), "twins": self.twins,
                "blank_rows_skipped": self.blank_rows, "duplicates_skipped": self.duplicates_skipped,
                "malformed_skipped": self.skipped}


def find_medec_files(medec_dir: str | Path) -> tuple[list[Path], list[Path]]:
    """MEDEC CSVs and pair JSONL files under a directory (recursively; ``official/`` run files are not data)."""
    root = Path(medec_dir)
    csvs = sorted(p for p in root.rglob("*.csv") if "official" not in p.parts)
    jsonls = sorted(p for p in root.rglob("*.jsonl") if "official" not in p.parts)
    return csvs, jsonls


def prepare(inputs: Sequence[str | Path], seed: int = 13, ratios: Sequence[float] = DEFAULT_RATIOS,
            skip_malformed: bool = False, progress=None) -> PrepareResult:
    """Read every input (CSV or pair JSONL), pair, group twins into cases and split.

    Test notes (``-test-`` ids or a file named like a test set) only ever go to ``eval``. A note id
    seen twice (e.g. the training CSV and the training pairs) is kept once, preferring the CSV
    (it has MEDEC's ids).
    """
    notes: list[MedecNote] = []
    raw_pairs: list[PairRecord] = []
    result = PrepareResult(pairs=[], notes=[], files=[str(p) for p in inputs])
    ordered = sorted(inputs, key=lambda p: (Path(p).suffix != ".csv", str(p)))
    for path in ordered:
        path = Path(path)
        if path.suffix == ".csv":
            try:
                file_notes, blank = read_medec_csv(path)
            except MedecFormatError as exc:
                if not skip_malformed:
                    raise
                result.skipped.append(str(exc))
                file_notes, blank = _read_csv_skipping(path, result)
            notes.extend(file_notes)
            result.blank_rows += blank
        else:
            try:
                raw_pairs.extend(load_pairs_jsonl(path))
            except MedecFormatError as exc:
                if not skip_malformed:
                    raise
                result.skipped.append(str(exc))
                raw_pairs.extend(_read_jsonl_skipping(path, result))
        if progress is not None:
            progress(path)
    seen_ids: set[str] = set()
    unique_notes = []
    for note in notes:
        if note.note_id in seen_ids:
            result.duplicates_skipped += 1
            continue
        seen_ids.add(note.note_id)
        unique_notes.append(note)
    group_cases(unique_notes)
    result.twins = sum(1 for n in unique_notes if n.twin_of)
    pairs = [pair_from_note(n) for n in unique_notes if n.error_flag]
    pair_case = {n.note_id: n.case_id for n in unique_notes}
    for p in raw_pairs:
        if p.note_id in seen_ids:
            result.duplicates_skipped += 1
            continue
        seen_ids.add(p.note_id)
        pairs.append(p)
        pair_case[p.note_id] = p.note_id
    test_cases = {n.case_id for n in unique_notes if n.is_test} | {p.note_id for p in raw_pairs if "-test-" in p.note_id}
    split_of = assign_splits((c for c in set(pair_case.values()) | {n.case_id for n in unique_notes}
                              if c not in test_cases), seed, ratios)
    split_of.update({c: "eval" for c in test_cases})
    for note in unique_notes:
        note.split = split_of[note.case_id]
    for p in pairs:
        p.split = split_of[pair_case[p.note_id]]
    result.pairs = pairs
    result.notes = unique_notes
    return result


def _read_csv_skipping(path: Path, result: PrepareResult) -> tuple[list[MedecNote], int]:
    """Row by row, reporting (never silently dropping) the malformed ones."""
    notes: list[MedecNote] = []
    blank = 0
    with path.open(encoding="utf-8-sig", newline="") as fh:
        for n, row in enumerate(csv.DictReader(fh), start=2):
            if all(not (row.get(c) or "").strip() for c in CSV_COLUMNS):
                blank += 1
                continue
            try:
                notes.append(_note_from_row(row, path, n, None))
            except MedecFormatError as exc:
                if str(exc) not in result.skipped:
                    result.skipped.append(str(exc))
            except KeyError as exc:
                raise MedecFormatError(path, 1, str(exc), "missing column") from None
    return notes, blank


def _read_jsonl_skipping(path: Path, result: PrepareResult) -> list[PairRecord]:
    out: list[PairRecord] = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            d = json.loads(line)
            out.append(PairRecord.from_dict(d) if "incorrect_sentences" in d else pair_from_raw(d, path, n))
        except MedecFormatError as exc:
            if str(exc) not in result.skipped:
                result.skipped.append(str(exc))
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            result.skipped.append(f"{path}: row {n}, column '<json>': {exc}")
    return out


def write_prepared(result: PrepareResult, out_dir: str | Path) -> dict[str, Path]:
    """``pairs.jsonl``, ``notes.jsonl`` and ``train_val_split/{sft_train,rl_train,eval}.jsonl``."""
    out = Path(out_dir)
    paths = {"pairs": out / "pairs.jsonl", "notes": out / "notes.jsonl"}
    pairs = sorted(result.pairs, key=lambda p: (p.source, _sort_key(p.note_id)))
    write_jsonl(paths["pairs"], (p.to_dict() for p in pairs))
    write_jsonl(paths["notes"], (n.to_dict() for n in sorted(result.notes, key=lambda n: (n.source, _sort_key(n.note_id)))))
    for split in SPLITS:
        paths[split] = out / "train_val_split" / f"{split}.jsonl"
        write_jsonl(paths[split], (p.to_dict() for p in pairs if p.split == split))
    (out / "summary.json").write_text(json.dumps(result.summary(), indent=2) + "\n")
    return paths


def _sort_key(note_id: str) -> tuple[str, int]:
    parts = _id_parts(note_id)
    return parts if parts else (note_id, -1)


def demo_csv_path() -> Path:
    """Our own small demo set in MEDEC CSV format (not MEDEC data), so ``make run`` works offline."""
    return Path(__file__).resolve().parent / "demo_data" / "medserl-demo-notes.csv"


def default_medec_dir() -> Path | None:
    """``$MEDSERL_MEDEC_DIR`` when set and present; None otherwise (callers then use the demo set)."""
    import os

    value = os.environ.get("MEDSERL_MEDEC_DIR")
    return Path(value) if value and Path(value).is_dir() else None
