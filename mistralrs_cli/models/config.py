"""ModelConfig: the flat description of a Mistral/Llama model (loaders build it from config.json or GGUF metadata)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from mistralrs_cli.errors import ConfigError


@dataclass(frozen=True)
class ModelConfig:
    """Hyper-parameters shared by every loader (HF safetensors, GGUF) and the one model implementation."""

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    max_position_embeddings: int = 4096
    rms_norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    rope_scaling: dict[str, Any] | None = None
    partial_rotary_factor: float = 1.0
    sliding_window: int | None = None
    tie_word_embeddings: bool = False
    attention_bias: bool = False
    mlp_bias: bool = False
    hidden_act: str = "silu"
    model_type: str = "mistral"
    bos_token_id: int | None = None
    eos_token_ids: tuple[int, ...] = field(default_factory=tuple)

    @property
    def rotary_dim(self) -> int:
        """Number of head dimensions that rotary embeddings rotate (HF `partial_rotary_factor`)."""
        return int(self.head_dim * self.partial_rotary_factor)

    def validate(self, source: str = "config") -> None:
        """Reject configs the model cannot run, or can only run into NaN, with a message naming the field."""
        sizes = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                 "num_attention_heads", "num_key_value_heads", "head_dim", "max_position_embeddings")
        for name in sizes:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{source}: {name} must be a positive integer, got {value!r}")
        for name in ("rms_norm_eps", "rope_theta"):
            if not _positive(getattr(self, name)):
                raise ConfigError(f"{source}: {name} must be a finite number > 0, got {getattr(self, name)!r}")
        if self.hidden_act not in ("silu", "swish"):
            raise ConfigError(f"{source}: unsupported hidden_act {self.hidden_act!r} (only silu)")
        if self.num_attention_heads % self.num_key_value_heads:
            raise ConfigError(
                f"{source}: num_attention_heads ({self.num_attention_heads}) is not a multiple "
                f"of num_key_value_heads ({self.num_key_value_heads})"
            )
        if not 0 < self.partial_rotary_factor <= 1:
            raise ConfigError(f"{source}: partial_rotary_factor must be in (0, 1], got {self.partial_rotary_factor}")
        if self.rotary_dim < 2 or self.rotary_dim % 2:
            raise ConfigError(f"{source}: rotary dimension {self.rotary_dim} must be even and at least 2")
        _check_rope_scaling(self.rope_scaling, source)


def _positive(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0


def _check_rope_scaling(scaling: dict[str, Any] | None, source: str) -> None:
    """The keys each rope type needs, present and sane: a missing factor would only fail per request."""
    kind = (scaling or {}).get("rope_type", "default")
    if kind not in ("default", "linear", "llama3"):
        raise ConfigError(f"{source}: unsupported rope_scaling type {kind!r} (default, linear, llama3)")
    if scaling is None or kind == "default":
        return
    needed = ["factor"]
    if kind == "llama3":
        needed += ["low_freq_factor", "high_freq_factor", "original_max_position_embeddings"]
    for key in needed:
        if key not in scaling or scaling[key] is None:
            raise ConfigError(f"{source}: rope_scaling type {kind!r} needs rope_scaling.{key}")
        if not _positive(scaling[key]):
            raise ConfigError(f"{source}: rope_scaling.{key} must be a finite number > 0, got {scaling[key]!r}")
    if kind == "llama3" and not scaling["high_freq_factor"] > scaling["low_freq_factor"]:
        raise ConfigError(
            f"{source}: rope_scaling.high_freq_factor ({scaling['high_freq_factor']}) must be greater "
            f"than low_freq_factor ({scaling['low_freq_factor']})"
        )
