"""The generator's durable job table: one JSON file per job under ``state_dir``.

A job's record (who asked, its budget and reservation, state, counts, cost, where its outputs are,
which replica runs it and when it last said so) is rewritten atomically
(:func:`services.common.fileio.write_atomic`: a kill leaves the old record or the new one) on every
state change, every kept pair and every heartbeat. The pairs a job was given are saved beside it
(``<job id>.pairs.jsonl``) before it starts, so any replica can run it again after a crash: the
pipeline's ledger and progress files (``services/generator/ledger.py``, ``output_root/<job id>``) make
the re-run pay for nothing twice and redo no finished pair.

Plain files, not SQLite, because the directory is a shared volume (ReadWriteMany: NFS and friends,
where SQLite's locking is unsafe): every write is a rename, and the one step two replicas may race on,
taking over a job whose owner stopped heart-beating, is an ``O_CREAT|O_EXCL`` claim file per takeover
(``<job id>.claim-<epoch>``), which exactly one replica can create.
"""

from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path

from medec.prepare import PairRecord
from services.common.fileio import JsonlError, read_jsonl, write_atomic

log = logging.getLogger(__name__)

JOB_ID = re.compile(r"[0-9a-f]{16}")


def valid_job_id(job_id: str) -> bool:
    """Ids are ours (16 hex digits); anything else a caller sends names no file."""
    return bool(JOB_ID.fullmatch(job_id or ""))


class JobStore:
    def __init__(self, state_dir: str | os.PathLike):
        self.dir = Path(state_dir)  # created with the first job, not before

    def _path(self, job_id: str, suffix: str, create: bool = False) -> Path:
        if not valid_job_id(job_id):
            raise ValueError(f"not a job id: {job_id[:40]!r}")
        if create:
            self.dir.mkdir(parents=True, exist_ok=True)
        return self.dir / f"{job_id}{suffix}"

    # --- records ------------------------------------------------------------------------------------
    def save(self, record: dict) -> None:
        write_atomic(self._path(record["job_id"], ".json", create=True), json.dumps(record, sort_keys=True) + "\n")

    def load(self, job_id: str) -> dict | None:
        if not valid_job_id(job_id):
            return None
        path = self._path(job_id, ".json")
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:  # unreadable: report it, never crash the service on it
            log.warning("unreadable job record", extra={"job_id": job_id, "error": type(exc).__name__})
            return None
        return record if isinstance(record, dict) and record.get("job_id") == job_id else None

    def all(self) -> list[dict]:
        """Every readable record, oldest first."""
        if not self.dir.is_dir():
            return []
        records = [self.load(p.stem) for p in self.dir.glob("*.json") if valid_job_id(p.stem)]
        return sorted((r for r in records if r is not None), key=lambda r: (r.get("created", 0.0), r["job_id"]))

    # --- the job's input ----------------------------------------------------------------------------
    def save_pairs(self, job_id: str, pairs: list[PairRecord]) -> None:
        write_atomic(self._path(job_id, ".pairs.jsonl", create=True),
                     "".join(json.dumps(p.to_dict(), ensure_ascii=False) + "\n" for p in pairs),
                     private=True)  # note text: 0600

    def load_pairs(self, job_id: str) -> list[PairRecord] | None:
        """The job's pairs, or None when they are gone or unreadable (the job cannot be run again)."""
        path = self._path(job_id, ".pairs.jsonl")
        try:
            return [PairRecord.from_dict(d) for _, d in read_jsonl(path)]
        except FileNotFoundError:
            return None
        except (OSError, JsonlError, KeyError, TypeError, ValueError) as exc:
            log.warning("unreadable job pairs", extra={"job_id": job_id, "error": type(exc).__name__})
            return None

    # --- takeover -----------------------------------------------------------------------------------
    def claim(self, job_id: str, epoch: int) -> bool:
        """Take ownership epoch ``epoch`` of a job: True for exactly one caller, on every replica."""
        try:
            fd = os.open(self._path(job_id, f".claim-{int(epoch)}", create=True), os.O_CREAT | os.O_EXCL | os.O_WRONLY,
                         0o644)
        except FileExistsError:
            return False
        os.close(fd)
        return True
