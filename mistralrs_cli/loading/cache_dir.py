"""mistralrs' own cache folder, shared by the default model, the packed-weights cache and the compiled step."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """mistralrs' own cache folder (`$MISTRALRS_CACHE`, else ~/.cache/mistralrs)."""
    env = os.environ.get("MISTRALRS_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "mistralrs"
