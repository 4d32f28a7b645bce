"""xlora_config.json: every field honoured, ignored for a stated reason, or rejected by name.

Files come from PEFT (`XLoraConfig`, which also writes PeftConfig's metadata fields) or from
the original xlora package / mistral.rs (which add `use_bias`, `enable_relu_and_dropout`,
`stop_token_id`). Defaults follow PEFT, the reference implementation, except where noted.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mistralrs_cli.errors import AdapterError

# Metadata, or settings that only matter while training (dropout is off at inference).
_IGNORED = frozenset(
    "task_type peft_type auto_mapping peft_version base_model_name_or_path revision inference_mode "
    "xlora_dropout_p use_trainable_adapters stop_token_id device".split()
)
_FIELDS = frozenset(
    "hidden_size adapters base_model_id enable_softmax enable_softmax_topk layerwise_scalings "
    "xlora_depth xlora_size enable_relu_and_dropout use_bias softmax_temperature top_k_lora "
    "scaling_pass_value global_scaling_weight".split()
)


@dataclass(frozen=True)
class XLoraSettings:
    """The inference-relevant X-LoRA settings, validated."""

    hidden_size: int
    adapters: tuple[str, ...]  # names in the config's order
    base_model_id: str | None = None
    enable_softmax: bool = True
    enable_softmax_topk: bool = False
    layerwise_scalings: bool = False
    xlora_depth: int = 1
    xlora_size: int | None = None  # None: read it from the classifier weights
    # PEFT always puts a ReLU between classifier layers; the original package made it optional.
    enable_relu: bool = True
    use_bias: bool = True
    softmax_temperature: float = 1.0
    top_k_lora: int | None = None
    scaling_pass_value: float | None = 0.0  # None: 1 / number of adapters (PEFT's convention)
    global_scaling_weight: float = 1.0

    @property
    def pass_value(self) -> float:
        """The adapters' scaling during the scaling pass."""
        if self.scaling_pass_value is None:
            return 1.0 / len(self.adapters)
        return self.scaling_pass_value


def read_xlora_config(path: Path) -> XLoraSettings:
    """Parse and validate xlora_config.json."""
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as e:  # ValueError: bad JSON or not UTF-8
        raise AdapterError(f"{path}: unreadable xlora_config.json ({str(e).splitlines()[0] if str(e) else type(e).__name__})") from None
    if not isinstance(raw, dict):
        raise AdapterError(f"{path}: xlora_config.json is not a JSON object")
    return parse_xlora_config(raw, str(path))


def parse_xlora_config(raw: dict[str, Any], where: str = "xlora_config.json") -> XLoraSettings:
    """Validate a config dict; unknown fields and unsupported values raise AdapterError."""
    unknown = sorted(set(raw) - _FIELDS - _IGNORED)
    if unknown:
        raise AdapterError(f"{where}: unknown field {unknown[0]!r} (not an X-LoRA setting this version knows)")
    if raw.get("peft_type", "XLORA") not in ("XLORA", None):
        raise AdapterError(f"{where}: peft_type {raw['peft_type']!r} is not XLORA")
    if "hidden_size" not in raw:
        raise AdapterError(f"{where}: missing required field 'hidden_size'")
    if "adapters" not in raw:
        raise AdapterError(f"{where}: missing required field 'adapters'")
    adapters = raw["adapters"]
    if isinstance(adapters, dict):
        names = tuple(str(k) for k in adapters)
    elif isinstance(adapters, list) and all(isinstance(a, str) for a in adapters):
        names = tuple(adapters)
    else:
        raise AdapterError(f"{where}: 'adapters' must be an object {{name: path}} or a list of names")
    if not names:
        raise AdapterError(f"{where}: 'adapters' is empty")
    if len(set(names)) != len(names):
        raise AdapterError(f"{where}: 'adapters' names an adapter twice")
    s = XLoraSettings(
        hidden_size=_int(raw, "hidden_size", where, minimum=1),
        adapters=names,
        base_model_id=_str(raw, "base_model_id", where) or _str(raw, "base_model_name_or_path", where),
        enable_softmax=_bool(raw, "enable_softmax", True, where),
        enable_softmax_topk=_bool(raw, "enable_softmax_topk", False, where),
        layerwise_scalings=_bool(raw, "layerwise_scalings", False, where),
        xlora_depth=_int(raw, "xlora_depth", where, minimum=1, default=1),
        xlora_size=_int(raw, "xlora_size", where, minimum=1) if raw.get("xlora_size") is not None else None,
        enable_relu=_bool(raw, "enable_relu_and_dropout", True, where),
        use_bias=_bool(raw, "use_bias", True, where),
        softmax_temperature=_float(raw, "softmax_temperature", 1.0, where),
        top_k_lora=_int(raw, "top_k_lora", where, minimum=1) if raw.get("top_k_lora") is not None else None,
        scaling_pass_value=_float(raw, "scaling_pass_value", 0.0, where) if raw.get("scaling_pass_value", 0.0) is not None else None,
        global_scaling_weight=_float(raw, "global_scaling_weight", 1.0, where),
    )
    if s.softmax_temperature <= 0:
        raise AdapterError(f"{where}: softmax_temperature must be > 0, got {s.softmax_temperature}")
    if s.top_k_lora is not None and s.top_k_lora > len(names):
        raise AdapterError(f"{where}: top_k_lora={s.top_k_lora} exceeds the {len(names)} adapters")
    p = raw.get("xlora_dropout_p", 0.0)
    if not isinstance(p, (int, float)) or isinstance(p, bool) or not 0.0 <= p < 1.0:
        raise AdapterError(f"{where}: xlora_dropout_p must be a number in [0, 1), got {p!r}")
    return s


def _str(raw: dict[str, Any], key: str, where: str) -> str | None:
    value = raw.get(key)
    if value is not None and not isinstance(value, str):
        raise AdapterError(f"{where}: {key} must be a string, got {value!r:.60}")
    return value


def _bool(raw: dict[str, Any], key: str, default: bool, where: str) -> bool:
    value = raw.get(key, default)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise AdapterError(f"{where}: {key} must be true or false, got {value!r}")
    return value


def _int(raw: dict[str, Any], key: str, where: str, minimum: int, default: int | None = None) -> int:
    value = raw.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise AdapterError(f"{where}: {key} must be an integer >= {minimum}, got {value!r}")
    return value


def _float(raw: dict[str, Any], key: str, default: float, where: str) -> float:
    value = raw.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise AdapterError(f"{where}: {key} must be a finite number, got {value!r}")
    return float(value)
