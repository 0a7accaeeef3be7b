"""Run any assessor backend over a MEDEC CSV and write an official-format run file.

Each note goes to the detector alone, as MEDEC's numbered sentences: no Text ID, no neighbouring
note (MEDEC's error notes have a clean twin at the next id, so ids or neighbours would leak the
answer). An output that does not parse is written as "no error" and counted.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from medec import mediqa_eval as me
from services.common.fileio import write_atomic


@dataclass
class AssessOutcome:
    reference: list[me.ReferenceRow]  # the rows scored (after --limit)
    run: me.RunFile
    last_sentence_ids: dict[str, int]
    flag_rate: float
    unparsed: int


def assess_reference(reference: list[me.ReferenceRow], config: str | Path | None, overrides: dict | None = None, *,
                     out_path: Path, limit: int | None = None, batch_size: int = 8, progress: bool = True,
                     detector=None) -> AssessOutcome:
    """Verdicts for every reference note, written to ``out_path`` as an official run file."""
    from tqdm import tqdm

    from services.assessor.detector import build_detector
    from services.assessor.service import AssessorSettings
    from services.common.settings import load_settings

    if batch_size < 1:
        raise ValueError("--batch-size must be >= 1")
    rows = reference[:limit] if limit else list(reference)
    notes = [me.parse_medec_sentences(row.sentences) for row in rows]
    empty = [row.text_id for row, note in zip(rows, notes, strict=True) if not note]
    if empty:
        raise ValueError(f"{len(empty)} note(s) have no sentences (first: {empty[0]}); is the Sentences column filled?")
    if detector is None:
        settings = load_settings(AssessorSettings, config, overrides or {})
        detector = build_detector(settings)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    run = me.RunFile()
    flagged = unparsed = 0
    lines: list[str] = []
    try:
        with tqdm(total=len(rows), desc="assessing", unit="note", disable=not progress) as bar:
            for start in range(0, len(rows), batch_size):
                batch_rows, batch_notes = rows[start : start + batch_size], notes[start : start + batch_size]
                for row, detection in zip(batch_rows, detector.detect(batch_notes), strict=True):
                    verdict = detection.to_verdict(detector.checkpoint_hash)
                    unparsed += not verdict.parsed
                    flagged += verdict.error_flag
                    lines.append(me.format_run_line(row.text_id, verdict.error_flag, verdict.error_sentence_id,
                                                    verdict.corrected_sentence or None))
                bar.update(len(batch_rows))
    finally:
        detector.close()
    write_atomic(out_path, "\n".join(lines) + "\n", private=True)  # corrected sentences are note text
    run = me.parse_run_lines(lines)
    last_ids = {row.text_id: max(sid for sid, _ in note) for row, note in zip(rows, notes, strict=True)}
    return AssessOutcome(rows, run, last_ids, flagged / len(rows) if rows else 0.0, unparsed)
