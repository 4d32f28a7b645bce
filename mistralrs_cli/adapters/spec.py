"""Which adapters go over the base model: plain LoRA or X-LoRA, as given on the command line."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class LoraSpec:
    """Plain LoRA: adapter folders/Hub ids (`-a`), or one adapter repo plus an ordering file (`-o`)."""

    adapter_ids: tuple[str, ...] = ()
    order: Path | None = None
    merge: bool = False


@dataclass(frozen=True)
class XLoraSpec:
    """X-LoRA: the X-LoRA model (classifier + adapters), its ordering file, the scaling freeze point."""

    xlora_model_id: str | None = None
    order: Path | None = None
    tgt_non_granular_index: int | None = None


AdapterSpec = LoraSpec | XLoraSpec | None
