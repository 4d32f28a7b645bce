"""Batch result files: answers in OUT.jsonl, errors in OUT.errors.jsonl, each line fsync'd; resume reads answers only."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any


def errors_path(output: Path) -> Path:
    """OUT.jsonl -> OUT.errors.jsonl beside it (OUT -> OUT.errors.jsonl for other names)."""
    stem = output.stem if output.suffix == ".jsonl" else output.name
    return output.with_name(stem + ".errors.jsonl")


def cut_torn_tail(path: Path) -> int:
    """Drop a last line without its newline (a kill -9 mid-write); the file's new size."""
    if not path.exists():
        return 0
    data = path.read_bytes()
    end = data.rfind(b"\n") + 1
    if end != len(data):
        with path.open("r+b") as f:
            f.truncate(end)
            f.flush()
            os.fsync(f.fileno())
    return end


def _replace(path: Path, fill: Callable[[IO[bytes]], None]) -> None:
    """Rewrite path atomically: a crash leaves either the old file or the new one."""
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("wb") as f:
        fill(f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def load_answered(path: Path) -> set[str]:
    """custom_ids answered in an output file; only successes count, so errors are retried.

    A torn last line is cut off. A file that holds anything but unique successes (error records
    written by older versions, repeated custom_ids) is rewritten to hold only the first success of each.
    """
    if not path.exists():
        return set()
    cut_torn_tail(path)
    done: set[str] = set()
    keep: list[bytes] = []
    dirty = False
    with path.open("rb") as f:
        for raw in f:
            try:
                record = json.loads(raw)
            except (json.JSONDecodeError, UnicodeDecodeError):
                record = None
            cid = record.get("custom_id") if isinstance(record, dict) else None
            if isinstance(cid, str) and record.get("error") is None and record.get("response") and cid not in done:
                done.add(cid)
                keep.append(raw)
            else:
                dirty = True
    if dirty:
        _replace(path, lambda f: f.writelines(keep))
    return done


class OutputWriter:
    """Appends one JSON line per record, flushed and fsync'd so a crash never loses a finished answer."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.f = path.open("a", encoding="utf-8")

    def write(self, record: dict[str, Any]) -> None:
        """Write a whole line in one call, then flush it to disk."""
        self.f.write(json.dumps(record, ensure_ascii=False) + "\n")
        self.f.flush()
        os.fsync(self.f.fileno())

    def close(self) -> None:
        """Close the file."""
        self.f.close()


class ErrorLog(OutputWriter):
    """The errors file: appended (fsync'd) during a run, then cut down to this run's errors when it completes.

    Until then the previous run's errors stay in front, so an interrupted run loses nothing written.
    """

    def __init__(self, path: Path) -> None:
        self.start = cut_torn_tail(path)
        self.count = 0
        super().__init__(path)

    def write(self, record: dict[str, Any]) -> None:
        """Append one error record."""
        super().write(record)
        self.count += 1

    def finish(self) -> None:
        """The run completed: keep only the errors that still stand (none -> no file)."""
        self.close()
        if self.count == 0:
            self.path.unlink(missing_ok=True)
        elif self.start:
            with self.path.open("rb") as src:
                src.seek(self.start)
                _replace(self.path, lambda f: shutil.copyfileobj(src, f))
