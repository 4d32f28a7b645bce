"""LoadedModel: what every loader returns and the engine consumes."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from mistralrs_cli.loading.tokenizer import TextTokenizer
from mistralrs_cli.models.config import ModelConfig
from mistralrs_cli.models.contract import CausalLM


@dataclass
class LoadedModel:
    """A ready model: weights on their device, tokenizer, chat template and a display name."""

    model: CausalLM  # MistralForCausalLM, or an adapter wrapper around it
    config: ModelConfig
    tokenizer: TextTokenizer
    name: str
    device: torch.device
    dtype: torch.dtype
    # Loader-specific facts for `bench`, `/stats` and logs (quant types, adapter names...).
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def compute_dtype(self) -> str:
        """The activations' dtype ("float32"), whatever the weights are stored as."""
        return str(self.dtype).removeprefix("torch.")

    @property
    def weights(self) -> str:
        """How the weights are stored: the loader's description (e.g. int4), else dense in the compute dtype."""
        return str(self.info.get("weights") or f"dense {self.compute_dtype}")
