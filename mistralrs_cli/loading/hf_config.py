"""ModelConfig from a transformers config.json dict, checked against its schema (config_schema.py)."""

from __future__ import annotations

from typing import Any

from mistralrs_cli.errors import ConfigError
from mistralrs_cli.loading.config_schema import HFConfig, validate_dict
from mistralrs_cli.models.config import ModelConfig

SUPPORTED_ARCHITECTURES = ("MistralForCausalLM", "LlamaForCausalLM")
SUPPORTED_MODEL_TYPES = ("mistral", "llama")


def config_from_hf(raw: Any, source: str = "config.json") -> ModelConfig:
    """Build from a transformers config.json dict (checked against its schema), rejecting
    unsupported architectures; every bad value is a one-line ConfigError naming the field."""
    if isinstance(raw, dict):
        _check_architecture(raw, source)
    c: HFConfig = validate_dict(HFConfig, raw, source, ConfigError, "config.json")
    n_heads = c.num_attention_heads
    head_dim = c.head_dim or c.hidden_size // n_heads
    if head_dim < 1:
        raise ConfigError(
            f"{source}: hidden_size {c.hidden_size} is smaller than num_attention_heads {n_heads} "
            "(set head_dim)"
        )
    params = c.rope_parameters
    theta = params.rope_theta if params and params.rope_theta is not None else c.rope_theta
    cfg = ModelConfig(
        vocab_size=c.vocab_size,
        hidden_size=c.hidden_size,
        intermediate_size=c.intermediate_size,
        num_hidden_layers=c.num_hidden_layers,
        num_attention_heads=n_heads,
        num_key_value_heads=c.num_key_value_heads or n_heads,
        head_dim=head_dim,
        max_position_embeddings=c.max_position_embeddings,
        rms_norm_eps=c.rms_norm_eps,
        rope_theta=theta if theta is not None else 10000.0,
        rope_scaling=_rope_scaling(c.rope_scaling if _given(c.rope_scaling) else params),
        partial_rotary_factor=c.partial_rotary_factor,
        sliding_window=_sliding_window(c),
        tie_word_embeddings=bool(c.tie_word_embeddings),
        attention_bias=bool(c.attention_bias),
        mlp_bias=bool(c.mlp_bias),
        hidden_act=c.hidden_act,
        model_type=c.model_type or "mistral",
        bos_token_id=c.bos_token_id,
        eos_token_ids=_as_tuple(c.eos_token_id),
    )
    cfg.validate(source)
    return cfg


def _given(scaling: Any) -> bool:
    """Whether a rope_scaling entry says anything (`{}` defers to rope_parameters, as before)."""
    return scaling is not None and bool(scaling.model_dump(exclude_none=True))


def _check_architecture(raw: dict[str, Any], source: str) -> None:
    archs = raw.get("architectures") or []
    archs = [a for a in archs if isinstance(a, str)] if isinstance(archs, list) else []
    model_type = raw.get("model_type") or ""
    model_type = model_type if isinstance(model_type, str) else ""
    if model_type not in SUPPORTED_MODEL_TYPES and not any(a in SUPPORTED_ARCHITECTURES for a in archs):
        got = ", ".join(archs) or model_type or "unknown"
        raise ConfigError(
            f"{source}: unsupported architecture {got}; supported: " + ", ".join(SUPPORTED_ARCHITECTURES)
        )


def _as_tuple(value: int | list[int] | None) -> tuple[int, ...]:
    if value is None:
        return ()
    if isinstance(value, list):
        return tuple(value)
    return (value,)


def _rope_scaling(scaling: Any) -> dict[str, Any] | None:
    if scaling is None:
        return None
    out = scaling.model_dump(exclude_none=True)
    out.pop("rope_theta", None)
    out.pop("type", None)
    out["rope_type"] = scaling.rope_type or scaling.type or "default"
    return None if out["rope_type"] == "default" else out


def _sliding_window(c: Any) -> int | None:
    if c.model_type == "llama" or c.use_sliding_window is False:
        return None
    return c.sliding_window or None
