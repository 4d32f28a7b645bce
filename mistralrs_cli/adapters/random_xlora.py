"""Random LoRA adapters and X-LoRA folders for a base model's shape, in the formats our loader reads.

Used by `mistralrs x-lora-demo` (a small X-LoRA to try offline) and benchmarks/bench_xlora.py
(decode speed). The weights are random: the model's output means nothing, only the mechanics
and the speed do. Layout (canonical, see docs/x-lora.md):

    ROOT/xlora_config.json, ROOT/xlora_classifier.safetensors, ROOT/ordering.json,
    ROOT/expert{i}/adapter_config.json, ROOT/expert{i}/adapter_model.safetensors
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file

from mistralrs_cli.adapters.lora_files import PROJECTION_NAMES, PROJECTIONS
from mistralrs_cli.adapters.ordering import dump_ordering, generate_ordering
from mistralrs_cli.models.config import ModelConfig

__all__ = ["RandomXLora", "projection_shapes", "write_random_lora", "write_random_xlora"]

_PARENT = {name: parent for parent, name in PROJECTIONS}


@dataclass(frozen=True)
class RandomXLora:
    """Where write_random_xlora put things."""

    root: Path
    ordering: Path
    adapters: tuple[Path, ...]


def projection_shapes(cfg: ModelConfig) -> dict[str, tuple[int, int]]:
    """(in, out) features of each of the seven projections of a decoder layer."""
    h, i = cfg.hidden_size, cfg.intermediate_size
    q, kv = cfg.num_attention_heads * cfg.head_dim, cfg.num_key_value_heads * cfg.head_dim
    return {"q_proj": (h, q), "k_proj": (h, kv), "v_proj": (h, kv), "o_proj": (q, h),
            "gate_proj": (h, i), "up_proj": (h, i), "down_proj": (i, h)}


def write_random_lora(
    folder: Path, cfg: ModelConfig, rank: int, generator: torch.Generator,
    targets: tuple[str, ...] = PROJECTION_NAMES, std: float = 0.02,
) -> Path:
    """A PEFT LoRA folder (alpha = 2 * rank) with random A and B on `targets` of every layer."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "adapter_config.json").write_text(json.dumps(
        {"peft_type": "LORA", "r": rank, "lora_alpha": 2 * rank, "lora_dropout": 0.0, "bias": "none",
         "target_modules": list(targets), "task_type": "CAUSAL_LM"}, indent=2))
    shapes = projection_shapes(cfg)
    tensors = {}
    for layer in range(cfg.num_hidden_layers):
        for proj in (p for p in PROJECTION_NAMES if p in targets):
            n_in, n_out = shapes[proj]
            key = f"base_model.model.model.layers.{layer}.{_PARENT[proj]}.{proj}"
            tensors[f"{key}.lora_A.weight"] = torch.randn(rank, n_in, generator=generator) * std
            tensors[f"{key}.lora_B.weight"] = torch.randn(n_out, rank, generator=generator) * std
    save_file(tensors, str(folder / "adapter_model.safetensors"))
    return folder


def write_random_xlora(
    root: Path, cfg: ModelConfig, n_adapters: int = 3, rank: int = 16, *, size: int = 256, seed: int = 0,
    targets: tuple[str, ...] = PROJECTION_NAMES, ordering: Path | None = None,
) -> RandomXLora:
    """A random X-LoRA folder (experts expert0.., a depth-2 layerwise classifier) and its ordering file.

    The ordering file goes to `ordering` (default ROOT/ordering.json).
    """
    root.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(seed)
    names = [f"expert{a}" for a in range(n_adapters)]
    adapters = tuple(write_random_lora(root / name, cfg, rank, g, targets) for name in names)
    n_layers = cfg.num_hidden_layers * len([p for p in PROJECTION_NAMES if p in targets])
    # xlora_size is always written: loaders disagree on its default.
    (root / "xlora_config.json").write_text(json.dumps(
        {"hidden_size": cfg.hidden_size, "adapters": {n: n for n in names}, "xlora_depth": 2, "xlora_size": size,
         "xlora_dropout_p": 0.0, "layerwise_scalings": True, "enable_softmax": True, "softmax_temperature": 1.0,
         "top_k_lora": None, "scaling_pass_value": 0.0, "global_scaling_weight": 1.0, "use_bias": True}, indent=2))
    save_file({"inner.0.weight": torch.randn(size, cfg.hidden_size, generator=g) * 0.05,
               "inner.0.bias": torch.zeros(size),
               "last.weight": torch.randn(n_adapters * n_layers, size, generator=g) * 0.05,
               "last.bias": torch.zeros(n_adapters * n_layers)}, str(root / "xlora_classifier.safetensors"))
    ordering = ordering or root / "ordering.json"
    ordering.write_text(dump_ordering(generate_ordering(cfg.num_hidden_layers, targets, tuple(names))))
    return RandomXLora(root, ordering, adapters)
