"""ModelConfig: the flat description of a Mistral/Llama model, built from HF config.json or GGUF metadata."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from mistralrs_cli.errors import ConfigError

SUPPORTED_ARCHITECTURES = ("MistralForCausalLM", "LlamaForCausalLM")
SUPPORTED_MODEL_TYPES = ("mistral", "llama")


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

    @classmethod
    def from_hf_dict(cls, raw: dict[str, Any], source: str = "config.json") -> ModelConfig:
        """Build from a transformers config.json dict, rejecting unsupported architectures."""
        archs = raw.get("architectures") or []
        model_type = raw.get("model_type", "")
        if model_type not in SUPPORTED_MODEL_TYPES and not any(a in SUPPORTED_ARCHITECTURES for a in archs):
            got = ", ".join(archs) or model_type or "unknown"
            raise ConfigError(
                f"{source}: unsupported architecture {got}; supported: "
                + ", ".join(SUPPORTED_ARCHITECTURES)
            )
        try:
            hidden = int(raw["hidden_size"])
            n_heads = int(raw["num_attention_heads"])
            cfg = cls(
                vocab_size=int(raw["vocab_size"]),
                hidden_size=hidden,
                intermediate_size=int(raw["intermediate_size"]),
                num_hidden_layers=int(raw["num_hidden_layers"]),
                num_attention_heads=n_heads,
                num_key_value_heads=int(raw.get("num_key_value_heads") or n_heads),
                head_dim=int(raw.get("head_dim") or hidden // n_heads),
                max_position_embeddings=int(raw.get("max_position_embeddings", 4096)),
                rms_norm_eps=float(raw.get("rms_norm_eps", 1e-5)),
                rope_theta=float(_rope_theta(raw)),
                rope_scaling=_rope_scaling(raw),
                partial_rotary_factor=float(raw.get("partial_rotary_factor", 1.0)),
                sliding_window=_sliding_window(raw, model_type),
                tie_word_embeddings=bool(raw.get("tie_word_embeddings", False)),
                attention_bias=bool(raw.get("attention_bias", False)),
                mlp_bias=bool(raw.get("mlp_bias", False)),
                hidden_act=str(raw.get("hidden_act", "silu")),
                model_type=model_type or "mistral",
                bos_token_id=raw.get("bos_token_id"),
                eos_token_ids=_as_tuple(raw.get("eos_token_id")),
            )
        except KeyError as e:
            raise ConfigError(f"{source}: missing required field {e.args[0]!r}") from None
        except (TypeError, ValueError) as e:
            raise ConfigError(f"{source}: invalid value ({e})") from None
        cfg.validate(source)
        return cfg

    def validate(self, source: str = "config") -> None:
        """Reject configs the model cannot run, with a message naming the field."""
        if self.hidden_act not in ("silu", "swish"):
            raise ConfigError(f"{source}: unsupported hidden_act {self.hidden_act!r} (only silu)")
        if self.num_attention_heads % self.num_key_value_heads:
            raise ConfigError(
                f"{source}: num_attention_heads ({self.num_attention_heads}) is not a multiple "
                f"of num_key_value_heads ({self.num_key_value_heads})"
            )
        if self.rotary_dim % 2:
            raise ConfigError(f"{source}: rotary dimension {self.rotary_dim} must be even")
        kind = (self.rope_scaling or {}).get("rope_type", "default")
        if kind not in ("default", "linear", "llama3"):
            raise ConfigError(f"{source}: unsupported rope_scaling type {kind!r} (default, linear, llama3)")


def _as_tuple(value: Any) -> tuple[int, ...]:
    if value is None:
        return ()
    if isinstance(value, (list, tuple)):
        return tuple(int(v) for v in value)
    return (int(value),)


def _rope_params(raw: dict[str, Any]) -> dict[str, Any]:
    # transformers 5 moved rope settings into `rope_parameters`; older files use rope_theta/rope_scaling.
    params = raw.get("rope_parameters")
    return params if isinstance(params, dict) else {}


def _rope_theta(raw: dict[str, Any]) -> float:
    return _rope_params(raw).get("rope_theta", raw.get("rope_theta", 10000.0))


def _rope_scaling(raw: dict[str, Any]) -> dict[str, Any] | None:
    scaling = raw.get("rope_scaling") or _rope_params(raw) or None
    if not scaling:
        return None
    scaling = dict(scaling)
    scaling["rope_type"] = scaling.get("rope_type", scaling.get("type", "default"))
    return None if scaling["rope_type"] == "default" else scaling


def _sliding_window(raw: dict[str, Any], model_type: str) -> int | None:
    if model_type == "llama":
        return None
    if raw.get("use_sliding_window") is False:
        return None
    window = raw.get("sliding_window")
    return int(window) if window else None
