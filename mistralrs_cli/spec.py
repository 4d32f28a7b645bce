"""ModelSpec: everything a model subcommand says about which model to load, as one frozen value."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

MODEL_KINDS = (
    "default",
    "mistral",
    "gguf-mistral",
    "x-lora-mistral",
    "x-lora-gguf-mistral",
    "lora-mistral",
    "lora-gguf-mistral",
)


@dataclass(frozen=True)
class ModelSpec:
    """Which model to load and how; produced by the CLI, consumed by `loading.load_model`."""

    kind: str = "default"
    # HF safetensors (mistral, x-lora-mistral, lora-mistral)
    model_id: str | None = None
    revision: str = "main"
    weight_files: tuple[str, ...] = ()
    tokenizer_json: str | None = None
    # GGUF (gguf-mistral, x-lora-gguf-mistral, lora-gguf-mistral)
    quantized_model_id: str | None = None
    quantized_filename: str | None = None
    tok_model_id: str | None = None
    # adapters
    xlora_model_id: str | None = None
    order: Path | None = None
    tgt_non_granular_index: int | None = None
    adapter_ids: tuple[str, ...] = ()
    lora_merge: bool = False
    # shared
    chat_template: str | None = None
    token_source: str = "cache"
    dtype: str = "auto"
    device: str = "auto"
    repeat_last_n: int = 64
    extra: dict[str, str] = field(default_factory=dict, compare=False)

    @property
    def display_name(self) -> str:
        """A short name for logs, /v1/models and the chat banner (an X-LoRA model's own, not its base's)."""
        name = self.xlora_model_id or self.model_id or self.quantized_filename or self.quantized_model_id or self.kind
        return Path(name).name if name and Path(name).exists() else (name or self.kind)
