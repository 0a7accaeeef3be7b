"""The durable request ledger and response cache (SQLite, WAL, synchronous=FULL).

A response is stored under its cache key before anything is built from it, so a re-run or a run
resumed after ``kill -9`` never pays for it again. The key covers (pair, task, attempt, prompt hash,
model, sampling params, messages digest). Every HTTP attempt is logged; a request marked ``pending``
but never answered was in flight when the process died: the client first tries to recover it from
the provider (stored completions by metadata) before sending it again. Open Batch API jobs are kept
too, so a resumed batch run polls its batch instead of submitting (and paying for) a new one. The
input file id is recorded before the batch is created, so even a kill between "create batch" and
"record its id" is recovered: the resumed run finds the batch by its input file.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from pathlib import Path

from services.common.fileio import make_private

_SCHEMA = """
CREATE TABLE IF NOT EXISTS responses (
    key TEXT PRIMARY KEY, pair_id TEXT, task TEXT, attempt INTEGER, prompt_hash TEXT, model TEXT,
    params TEXT, completion TEXT, prompt_tokens INTEGER, cached_tokens INTEGER,
    completion_tokens INTEGER, cost_usd REAL, via TEXT, created REAL);
CREATE TABLE IF NOT EXISTS attempts (
    id INTEGER PRIMARY KEY AUTOINCREMENT, key TEXT, outcome TEXT, http_status INTEGER, detail TEXT,
    started REAL, finished REAL);
CREATE TABLE IF NOT EXISTS pending (key TEXT PRIMARY KEY, sent REAL);
CREATE TABLE IF NOT EXISTS batches (
    input_file_id TEXT PRIMARY KEY, batch_id TEXT, keys TEXT, state TEXT, created REAL, finished REAL);
"""


class Ledger:
    """One SQLite file per output directory; safe to share between threads of one process."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        make_private(self.path)  # upstream answers are paraphrased notes: 0600, and its -wal/-shm follow
        self._db = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None, timeout=30)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)
        self._lock = threading.Lock()

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # --- response cache ---------------------------------------------------------------------------
    def get(self, key: str) -> dict | None:
        with self._lock:
            row = self._db.execute("SELECT completion, cost_usd, via FROM responses WHERE key=?", (key,)).fetchone()
        if row is None:
            return None
        return {"completion": json.loads(row[0]), "cost_usd": row[1], "via": row[2]}

    def put(self, key: str, *, pair_id: str, task: str, attempt: int, prompt_hash: str, model: str, params: dict,
            completion: dict, usage: tuple[int, int, int], cost_usd: float, via: str) -> None:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.execute(
                "INSERT OR REPLACE INTO responses VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (key, pair_id, task, attempt, prompt_hash, model, json.dumps(params, sort_keys=True),
                 json.dumps(completion), usage[0], usage[1], usage[2], cost_usd, via, time.time()))
            self._db.execute("DELETE FROM pending WHERE key=?", (key,))
            self._db.execute("COMMIT")

    def total_cost_usd(self) -> float:
        """What every stored answer cost: all the runs over this output directory (a resumed job's spend)."""
        with self._lock:
            row = self._db.execute("SELECT COALESCE(SUM(cost_usd), 0) FROM responses").fetchone()
        return float(row[0] or 0.0)

    def cached_keys(self) -> set[str]:
        with self._lock:
            return {r[0] for r in self._db.execute("SELECT key FROM responses")}

    # --- attempts and in-flight requests ------------------------------------------------------------
    def mark_pending(self, key: str) -> None:
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO pending VALUES (?,?)", (key, time.time()))

    def clear_pending(self, key: str) -> None:
        with self._lock:
            self._db.execute("DELETE FROM pending WHERE key=?", (key,))

    def is_pending(self, key: str) -> bool:
        with self._lock:
            return self._db.execute("SELECT 1 FROM pending WHERE key=?", (key,)).fetchone() is not None

    def log_attempt(self, key: str, outcome: str, http_status: int | None, detail: str, started: float) -> None:
        with self._lock:
            self._db.execute("INSERT INTO attempts (key, outcome, http_status, detail, started, finished) VALUES (?,?,?,?,?,?)",
                             (key, outcome, http_status, detail[:500], started, time.time()))

    # --- Batch API jobs -----------------------------------------------------------------------------
    def add_upload(self, input_file_id: str, keys: list[str]) -> None:
        """The batch input file is uploaded; the batch may be created any moment now."""
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO batches VALUES (?,?,?,?,?,?)",
                             (input_file_id, None, json.dumps(keys), "uploaded", time.time(), None))

    def set_batch(self, input_file_id: str, batch_id: str) -> None:
        with self._lock:
            self._db.execute("UPDATE batches SET batch_id=?, state='open' WHERE input_file_id=?", (batch_id, input_file_id))

    def finish_batch(self, input_file_id: str, state: str) -> None:
        with self._lock:
            self._db.execute("UPDATE batches SET state=?, finished=? WHERE input_file_id=?",
                             (state, time.time(), input_file_id))

    def open_batches(self) -> list[tuple[str, str | None, list[str]]]:
        """(input file id, batch id or None if its creation was not recorded, request keys)."""
        with self._lock:
            rows = self._db.execute("SELECT input_file_id, batch_id, keys FROM batches WHERE state IN ('uploaded', 'open') "
                                    "ORDER BY created").fetchall()
        return [(r[0], r[1], json.loads(r[2])) for r in rows]
