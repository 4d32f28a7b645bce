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
        line = json.dumps(record, ensure_ascii=True, default=str)
        with self._lock:
            self._file.write(line + "\n")
            self._file.flush()

    def close(self) -> None:
        """Close the file."""
        with self._lock:
            self._file.close()


def now_iso() -> str:
    """The current UTC time as the log's timestamp."""
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")
