"""`load_model(spec)`: the one entry point from a ModelSpec to a LoadedModel."""

from __future__ import annotations

from mistralrs_cli.errors import ConfigError
from mistralrs_cli.loading.loaded import LoadedModel
from mistralrs_cli.spec import ModelSpec


def load_model(spec: ModelSpec) -> LoadedModel:
    """Load the model for `spec`; on a CUDA device its hot ops run through kernels_cuda."""
    from mistralrs_cli.models.kernel_ops import set_kernels, wants_kernels

    loaded = _load(spec)
    if wants_kernels(loaded.device):
        set_kernels(loaded.model, True)
        loaded.info["kernels"] = "kernels_cuda (numba)"
    return loaded


def _load(spec: ModelSpec) -> LoadedModel:
    """Dispatch on the spec's kind to the loader that understands it."""
    if spec.kind == "mistral":
        from mistralrs_cli.loading.hf import load_hf

        return load_hf(spec)
    if spec.kind in ("x-lora-mistral", "x-lora-gguf-mistral"):
        from mistralrs_cli.adapters.load import load_xlora

        return load_xlora(spec)
    if spec.kind in ("lora-mistral", "lora-gguf-mistral"):
        from mistralrs_cli.adapters.load import load_lora

        return load_lora(spec)
    if spec.kind == "gguf-mistral":
        from mistralrs_cli.loading.gguf import load_gguf

        return load_gguf(spec)
    if spec.kind == "default":
        from mistralrs_cli.loading.default_model import load_default

        return load_default(spec)
    raise ConfigError(f"{spec.kind}: not yet available in this version")
