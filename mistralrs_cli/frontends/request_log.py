"""`--log FILE`: one JSON object per request and response, appended and flushed per line (every mode)."""

from __future__ import annotations

import json
import threading
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from mistralrs_cli.errors import ConfigError


class RequestLog:
    """Appends one JSON object per line to a file, flushed per line so a crash loses nothing."""

    def __init__(self, path: Path) -> None:
        try:
            self._file = open(path, "a", encoding="utf-8")  # closed by close()
        except OSError as e:
            raise ConfigError(f"--log {path}: cannot open for writing ({e.strerror})") from None
        self._lock = threading.Lock()

    def write(self, record: dict[str, Any]) -> None:
        """Append one record (text that cannot be encoded is escaped, never dropped)."""
        try:
            # ensure_ascii: a lone surrogate ("\ud800") is written escaped, never a UnicodeEncodeError.
            line = json.dumps(record, ensure_ascii=True, default=str)
        except (ValueError, RecursionError):  # a circular or too deeply nested value: keep the rest
            line = json.dumps({k: _flat(v) for k, v in record.items()}, ensure_ascii=True, default=str)
        with self._lock:
            self._file.write(line + "\n")
            self._file.flush()

    def close(self) -> None:
        """Close the file."""
        with self._lock:
            self._file.close()


def _flat(value: Any) -> Any:
    """`value` if it serializes, else a marker saying it could not (the record itself is never lost)."""
    try:
        json.dumps(value, ensure_ascii=True, default=str)
    except (ValueError, RecursionError):
        return {"unloggable": type(value).__name__}
    return value


def now_iso() -> str:
    """The current UTC time as the log's timestamp."""
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")
