"""What a loader needs to know: where the base model comes from (a typed source) and how to load it."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class LoadOptions:
    """Options every source shares: Hub revision and token, dtype, device, chat template override."""

    revision: str = "main"
    token_source: str = "cache"
    dtype: str = "auto"
    device: str = "auto"
    chat_template: str | None = None


@dataclass(frozen=True)
class HfSource:
    """A Hugging Face safetensors checkpoint: folder or Hub id, optional weight files and tokenizer."""

    model_id: str | None = None
    weight_files: tuple[str, ...] = ()
    tokenizer_json: str | None = None


@dataclass(frozen=True)
class GgufSource:
    """A GGUF file: a path, or a file name inside a folder or Hub repo; optional HF tokenizer source."""

    quantized_model_id: str | None = None
    quantized_filename: str | None = None
    tok_model_id: str | None = None


@dataclass(frozen=True)
class DefaultSource:
    """The embedded default model (see loading/default_model.py)."""


BaseSource = HfSource | GgufSource | DefaultSource
