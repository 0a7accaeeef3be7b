"""SFT records straight from a MEDEC CSV, without the generator (tests, benches, offline smoke runs).

INCORRECT records are the MEDEC error notes as-is (doctor-written errors). CORRECT records take a
clean note and "paraphrase" one sentence trivially and safely (``Of note, `` in front; every fact
kept), standing in for the generator's GPT-4o paraphrase. The records have the generator's field
layout (interface 5), so they exercise exactly the SFT code path of the production data.
"""

from __future__ import annotations

import csv
import hashlib
import os
import re

from services.common import formats

_ID_LINE = re.compile(r"^(\d+)\s+(.*)$")
SAFE_PREFIX = "Of note, "


def parse_sentences(cell: str) -> list[tuple[int, str]]:
    """MEDEC's ``Sentences`` column: ``<id> <sentence>`` per line; a line with no id continues the last."""
    sentences: list[list] = []
    for line in (cell or "").splitlines():
        line = line.strip()
        if not line:
            continue
        match = _ID_LINE.match(line)
        if match:
            sentences.append([int(match.group(1)), match.group(2).strip()])
        elif sentences:
            sentences[-1][1] = f"{sentences[-1][1]} {line}"
    return [(sid, text) for sid, text in sentences]


def _pick(note_id: str, n: int, seed: int) -> int:
    return int(hashlib.sha256(f"{seed}:{note_id}".encode()).hexdigest(), 16) % n


def _record(kind: str, note_id: str, source, note, changed: int, original: str, new: str, error_type) -> dict:
    record = {
        "id": f"{note_id}:{kind.lower()}",
        "pair_id": note_id,
        "kind": kind,
        "source_sentences": [list(s) for s in source],
        "note_sentences": [list(s) for s in note],
        "changed_sentence_id": changed,
        "original_sentence": original,
        "new_sentence": new,
        "error_type": error_type,
        "reasoning": None,
        "model_written": False,
        "prompt_version": formats.FORMAT_VERSION,
    }
    record["messages"] = formats.sft_messages(record, "assessor")
    return record


def medec_sft_records(
    csv_path: str | os.PathLike,
    *,
    max_records: int | None = None,
    max_sentences: int | None = None,
    seed: int = 0,
) -> list[dict]:
    """CORRECT and INCORRECT SFT records from a MEDEC CSV (notes with <= ``max_sentences`` only)."""
    records: list[dict] = []
    with open(csv_path, newline="", encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            note_id = (row.get("Text ID") or "").strip()
            sentences = parse_sentences(row.get("Sentences", ""))
            if not note_id or not sentences or (max_sentences and len(sentences) > max_sentences):
                continue
            ids = [sid for sid, _ in sentences]
            if len(set(ids)) != len(ids):
                continue
            flag = (row.get("Error Flag") or "").strip()
            if flag == "1":
                error_id = int(row["Error Sentence ID"])
                corrected = (row.get("Corrected Sentence") or "").strip()
                error_type = formats_error_type(row.get("Error Type"))
                if error_id not in ids or not corrected or corrected == "NA" or error_type is None:
                    continue
                error_sentence = dict(sentences)[error_id]
                source = [(sid, corrected if sid == error_id else text) for sid, text in sentences]
                records.append(
                    _record(
                        "INCORRECT",
                        note_id,
                        source,
                        sentences,
                        error_id,
                        corrected,
                        error_sentence,
                        error_type,
                    )
                )
            elif flag == "0":
                changed = ids[_pick(note_id, len(ids), seed)]
                original = dict(sentences)[changed]
                new = SAFE_PREFIX + original
                note = [(sid, new if sid == changed else text) for sid, text in sentences]
                records.append(_record("CORRECT", note_id, sentences, note, changed, original, new, None))
            if max_records is not None and len(records) >= max_records:
                break
    return records


def formats_error_type(value: str | None) -> str | None:
    """MEDEC's ``Error Type`` cell as one of ``formats.ERROR_TYPES`` (case-insensitive), else None."""
    lowered = (value or "").strip().lower()
    for error_type in formats.ERROR_TYPES:
        if error_type.lower() == lowered:
            return error_type
    return None
