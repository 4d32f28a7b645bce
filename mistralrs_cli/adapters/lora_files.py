"""Reading one PEFT LoRA adapter (adapter_config.json + adapter_model.safetensors) for our model.

Tensors use PEFT's names (`base_model.model.model.layers.{L}.self_attn.q_proj.lora_A.weight`).
Every field of adapter_config.json is either honoured (r, lora_alpha, use_rslora, target
modules, exclude_modules, layers_to_transform, rank_pattern, alpha_pattern), known to matter only
for training, or rejected with a message naming it; every tensor is checked against the base.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import torch
from pydantic import Field
from safetensors import safe_open

from mistralrs_cli.errors import AdapterError
from mistralrs_cli.loading.config_schema import MAX_DIM, Strict, validate_dict

# The adaptable linears of a decoder layer, in module-registration order (PEFT's X-LoRA numbering).
PROJECTIONS: tuple[tuple[str, str], ...] = (
    ("self_attn", "q_proj"),
    ("self_attn", "k_proj"),
    ("self_attn", "v_proj"),
    ("self_attn", "o_proj"),
    ("mlp", "gate_proj"),
    ("mlp", "up_proj"),
    ("mlp", "down_proj"),
)
PROJECTION_NAMES: tuple[str, ...] = tuple(name for _, name in PROJECTIONS)

# Fields that only shape training or initialisation, or are metadata: inference ignores them.
_TRAINING_ONLY = frozenset(
    "task_type peft_type auto_mapping peft_version base_model_name_or_path revision inference_mode "
    "lora_dropout init_lora_weights loftq_config eva_config corda_config lora_ga_config megatron_core "
    "runtime_config qalora_group_size ensure_weight_tying layers_pattern".split()
)
_HONOURED = frozenset(
    "r lora_alpha use_rslora target_modules exclude_modules layers_to_transform rank_pattern "
    "alpha_pattern bias".split()
)
_TENSOR = re.compile(
    r"^(?:.*?\.)?(model\.layers\.\d+\.(?:self_attn|mlp)\.[a-z_]+)\.lora_([AB])(?:\.[^.]+)?\.weight$"
)
# PEFT's default targets for Mistral/Llama when target_modules is missing.
_DEFAULT_TARGETS = ("q_proj", "v_proj")


@dataclass
class LoraAdapter:
    """One adapter: per adapted module its A (r, in) and B (out, r) and its alpha/r scale."""

    name: str
    weights: dict[str, tuple[torch.Tensor, torch.Tensor]]
    scales: dict[str, float]
    source: str = ""
    config: dict[str, Any] = field(default_factory=dict)

    @property
    def modules(self) -> list[str]:
        """Adapted module paths, in model order."""
        return sorted(self.weights, key=module_sort_key)


def module_path(layer: int, projection: str) -> str:
    """`model.layers.{layer}.self_attn.q_proj` for a projection name such as `q_proj`."""
    parent = dict((p, s) for s, p in PROJECTIONS)[projection]
    return f"model.layers.{layer}.{parent}.{projection}"


def projection_paths(num_layers: int, targets: tuple[str, ...] = PROJECTION_NAMES) -> list[str]:
    """Module paths of the targeted projections, in registration order (PEFT's X-LoRA numbering)."""
    return [module_path(i, p) for i in range(num_layers) for p in PROJECTION_NAMES if p in targets]


def module_sort_key(path: str) -> tuple[int, int]:
    """Sort key giving registration order: (layer, projection rank)."""
    parts = path.split(".")
    try:
        return int(parts[2]), PROJECTION_NAMES.index(parts[-1])
    except (IndexError, ValueError):
        return (1 << 30, 0)


def adapted_modules(keys: Iterable[str]) -> list[str]:
    """Module paths adapted by a set of PEFT tensor names, in model order."""
    return sorted({m.group(1) for k in keys if (m := _TENSOR.match(k))}, key=module_sort_key)


def read_lora_adapter(
    config_path: Path, weights_path: Path, name: str, shapes: Mapping[str, tuple[int, int]]
) -> LoraAdapter:
    """Read and validate one adapter against the base's projection shapes {path: (in, out)}."""
    where = f"adapter {name!r} ({config_path.parent})"
    cfg = _read_config(config_path, where)
    tensors = read_tensors(weights_path, where)
    pairs: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in tensors.items():
        m = _TENSOR.match(key)
        if m is None:
            raise AdapterError(f"{where}: unsupported tensor {key!r} in {weights_path.name} ({_why(key)})")
        pairs.setdefault(m.group(1), {})[m.group(2)] = tensor
    targeted = {p for p in shapes if _is_targeted(cfg, p)}
    if unknown := _first(set(pairs) - set(shapes)):
        raise AdapterError(f"{where}: weights for {unknown}, which the base model does not have")
    if untargeted := _first(set(pairs) - targeted):
        raise AdapterError(f"{where}: weights for {untargeted}, which target_modules does not name")
    if missing := _first(targeted - set(pairs)):
        raise AdapterError(f"{where}: no weights for {missing} in {weights_path.name}, yet target_modules names it")
    weights, scales = {}, {}
    for path, ab in pairs.items():
        weights[path] = _check_pair(where, path, ab, shapes[path], _pattern_value(cfg, "rank_pattern", "r", path))
        scales[path] = _scale(cfg, path)
    if not weights:
        raise AdapterError(f"{where}: {weights_path.name} holds no LoRA weights")
    return LoraAdapter(name, weights, scales, str(weights_path.parent), cfg)


def _first(paths: set[str]) -> str | None:
    """The first module path in model order, or None."""
    return min(paths, key=module_sort_key) if paths else None


class LoraConfigSchema(Strict):
    """The honoured fields of adapter_config.json, typed (PEFT writes null for unset ones)."""

    peft_type: str | None = None
    r: Annotated[int, Field(ge=1, le=MAX_DIM)] = 8
    lora_alpha: float = 8.0
    use_rslora: bool | None = None
    target_modules: str | list[str] | None = None
    exclude_modules: str | list[str] | None = None
    layers_to_transform: Annotated[int, Field(ge=0)] | list[Annotated[int, Field(ge=0)]] | None = None
    rank_pattern: dict[str, Annotated[int, Field(ge=1, le=MAX_DIM)]] | None = None
    alpha_pattern: dict[str, float] | None = None
    bias: str | None = None


def _read_config(path: Path, where: str) -> dict[str, Any]:
    try:
        cfg = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as e:
        raise AdapterError(f"{where}: unreadable {path.name} ({str(e).splitlines()[0] if str(e) else type(e).__name__})") from None
    if not isinstance(cfg, dict):
        raise AdapterError(f"{where}: {path.name} is not a JSON object")
    if cfg.get("peft_type", "LORA") != "LORA":
        raise AdapterError(f"{where}: peft_type {cfg['peft_type']!r:.60} is not supported (only LORA)")
    if cfg.get("bias", "none") != "none":
        raise AdapterError(f"{where}: bias={cfg['bias']!r:.60} is not supported (only 'none')")
    for key, value in cfg.items():
        if key not in _HONOURED and key not in _TRAINING_ONLY and value not in (None, False, {}, [], ""):
            raise AdapterError(f"{where}: adapter_config.json field {key}={value!r:.60} is not supported")
    typed = validate_dict(LoraConfigSchema, cfg, f"{where}: {path.name}", AdapterError, path.name)
    # Each pattern compiled as it is used below: whole-path regexes and rank/alpha suffix keys.
    keys = [*(typed.rank_pattern or {}), *(typed.alpha_pattern or {})]
    patterns = [(p, p) for p in (typed.target_modules, typed.exclude_modules) if isinstance(p, str)]
    for pattern, used in patterns + [(k, _suffix_regex(k)) for k in keys]:
        try:
            re.compile(used)
        except (re.error, RecursionError, OverflowError) as e:
            raise AdapterError(f"{where}: invalid pattern {pattern!r:.60} in adapter_config.json ({e})") from None
    # Normalised values (defaults filled in, nulls as PEFT reads them) for the matching code below.
    cfg.update(typed.model_dump(include={"r", "lora_alpha", "target_modules", "exclude_modules",
                                         "layers_to_transform", "rank_pattern", "alpha_pattern", "use_rslora"}))
    return cfg


def read_tensors(path: Path, where: str) -> dict[str, torch.Tensor]:
    """Every tensor of a safetensors file; a corrupt file is an AdapterError naming `where`."""
    try:
        with safe_open(str(path), framework="pt") as f:
            return {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # safetensors raises several types for corrupt files
        raise AdapterError(f"{where}: unreadable {path.name} ({str(e).splitlines()[0]})") from None


def _why(key: str) -> str:
    if "lora_embedding" in key or "embed_tokens" in key:
        return "LoRA on embeddings is not supported"
    if "lora_magnitude_vector" in key:
        return "DoRA is not supported"
    if "lm_head" in key:
        return "LoRA on lm_head is not supported"
    if key.endswith(".bias"):
        return "LoRA biases are not supported"
    return "only q/k/v/o/gate/up/down_proj of the decoder layers can be adapted"


def _is_targeted(cfg: Mapping[str, Any], path: str) -> bool:
    """PEFT's module matching: exclude_modules, target_modules (list, regex or all-linear), layers."""
    exclude = cfg.get("exclude_modules")
    if exclude:
        if isinstance(exclude, str) and re.fullmatch(exclude, path):
            return False
        if not isinstance(exclude, str) and (path in exclude or any(path.endswith(f".{e}") for e in exclude)):
            return False
    targets = cfg.get("target_modules") or list(_DEFAULT_TARGETS)
    if targets == "all-linear":
        return True
    if isinstance(targets, str):
        return re.fullmatch(targets, path) is not None
    if not (path in targets or any(path.endswith(f".{t}") for t in targets)):
        return False
    layers = cfg.get("layers_to_transform")
    if layers is None or layers == []:
        return True
    layer = int(path.split(".")[2])
    return layer == layers if isinstance(layers, int) else layer in layers


def _pattern_value(cfg: Mapping[str, Any], pattern_field: str, default_field: str, path: str) -> Any:
    """rank_pattern / alpha_pattern lookup as PEFT does it (first key matching a suffix of the path)."""
    for key, value in (cfg.get(pattern_field) or {}).items():
        if re.match(_suffix_regex(key), path):
            return value
    return cfg[default_field]


def _suffix_regex(key: str) -> str:
    """PEFT's rank_pattern / alpha_pattern key as a regex over the module path."""
    return rf"(.*\.)?({key})$"


def _scale(cfg: Mapping[str, Any], path: str) -> float:
    r = int(_pattern_value(cfg, "rank_pattern", "r", path))
    alpha = float(_pattern_value(cfg, "alpha_pattern", "lora_alpha", path))
    return alpha / (math.sqrt(r) if cfg.get("use_rslora") else r)


def _check_pair(
    where: str, path: str, ab: Mapping[str, torch.Tensor], shape: tuple[int, int], rank: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """A (r, in) and B (out, r) present, 2-D, of the base linear's shape and the config's rank."""
    if "A" not in ab or "B" not in ab:
        raise AdapterError(f"{where}: {path} has lora_{'AB'['A' in ab]} but not lora_{'BA'['A' in ab]}")
    a, b = ab["A"], ab["B"]
    n_in, n_out = shape
    if a.dim() != 2 or b.dim() != 2 or a.shape[1] != n_in or b.shape[0] != n_out or a.shape[0] != b.shape[1]:
        raise AdapterError(
            f"{where}: {path} lora_A {tuple(a.shape)} / lora_B {tuple(b.shape)} do not fit the base "
            f"linear ({n_in} -> {n_out}): expected ({rank}, {n_in}) / ({n_out}, {rank})"
        )
    if a.shape[0] != int(rank):
        raise AdapterError(
            f"{where}: {path} has rank {a.shape[0]} but adapter_config.json says r={rank}"
        )
    return a, b
