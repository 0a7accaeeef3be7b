"""Files shared by services: durable writes (a kill -9 leaves the old file or the new one, never half)
and JSONL reading with the line number in every error."""

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


def write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to a temporary sibling, fsync it, then rename it over ``path``."""
    path = Path(path)
    tmp = path.with_suffix(path.suffix + ".tmp")
    with tmp.open("w", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
