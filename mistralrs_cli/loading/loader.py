"""`load_model(spec)`: the one entry point from a ModelSpec to a LoadedModel."""

from __future__ import annotations

from mistralrs_cli.errors import ConfigError
from mistralrs_cli.loading.loaded import LoadedModel
from mistralrs_cli.spec import ModelSpec


def load_model(spec: ModelSpec) -> LoadedModel:
    """Dispatch on the spec's kind to the loader that understands it."""
    if spec.kind == "mistral":
        from mistralrs_cli.loading.hf import load_hf

        return load_hf(spec)
    raise ConfigError(f"{spec.kind}: not yet available in this version")
