"""Files shared by services: durable writes (a kill -9 leaves the old file or the new one, never half),
private files for note text (0600), and JSONL reading with the line number in every error."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path


class JsonlError(ValueError):
    """A JSONL line that is not a JSON object; ``line`` is 1-based."""

    def __init__(self, path: Path, line: int, reason: str):
        super().__init__(f"{path}:{line}: {reason}")
        self.path, self.line, self.reason = path, line, reason


def read_jsonl(path: str | os.PathLike) -> Iterator[tuple[int, dict]]:
    """``(line number, object)`` for every non-blank line; raises JsonlError naming the line."""
    path = Path(path)
    with path.open(encoding="utf-8") as handle:
        for line_no, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                value = json.loads(line)
            except json.JSONDecodeError as exc:
                raise JsonlError(path, line_no, f"not valid JSON ({exc.msg})") from None
            if not isinstance(value, dict):
                raise JsonlError(path, line_no, "expected a JSON object")
            yield line_no, value


PRIVATE_MODE = 0o600  # files that hold clinical notes: the owner alone may read them (issue 12)


def write_atomic(path: Path, text: str, *, private: bool = False) -> None:
    """Write ``text`` to a temporary sibling, fsync it, then rename it over ``path``.

    ``private``: the file holds note text (a data set, a run file of corrections): it is created 0600,
    so it is never readable by others, not even for the instant between create and rename, and it
    replaces an older file whatever that file's mode was."""
    path = Path(path)
    tmp = path.with_suffix(path.suffix + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, PRIVATE_MODE if private else 0o666)
    if private:
        os.fchmod(fd, PRIVATE_MODE)  # a temporary left by a kill keeps its old mode under O_CREAT
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def open_private(path: str | os.PathLike, mode: str = "w"):
    """A text handle on ``path`` (``w``: truncate, ``a``: append) that only the owner can read: created
    0600, and an existing file (an older run's, appended to) is made 0600 too."""
    if mode not in ("w", "a"):
        raise ValueError(f"open_private mode must be 'w' or 'a', got {mode!r}")
    flags = os.O_WRONLY | os.O_CREAT | (os.O_APPEND if mode == "a" else os.O_TRUNC)
    fd = os.open(path, flags, PRIVATE_MODE)
    os.fchmod(fd, PRIVATE_MODE)
    return os.fdopen(fd, mode, encoding="utf-8")


def make_private(path: str | os.PathLike) -> None:
    """Create ``path`` empty if it does not exist, and make it 0600 (a file another library opens, such
    as an SQLite database: its journal files take the database's mode)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, PRIVATE_MODE)
    try:
        os.fchmod(fd, PRIVATE_MODE)
    finally:
        os.close(fd)
