"""The ordering file (`-o ordering.json`): which adapter is classifier output i, which module is LoRA layer k.

```
{"order": ["adapter_a", "adapter_b"],                      # filled in by the user
 "layers": {"model.layers.0.self_attn.q_proj": 0, ...},    # generated: module -> LoRA layer index
 "base_model_id": "HuggingFaceH4/zephyr-7b-beta"}
```
`layers` counts the adapted modules in registration order (per decoder layer q, k, v, o,
gate, up, down), which is PEFT's numbering; `mistralrs x-lora-ordering` writes it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mistralrs_cli.adapters.lora_files import PROJECTION_NAMES, module_sort_key, projection_paths
from mistralrs_cli.errors import AdapterError

_KNOWN = frozenset({"order", "layers", "base_model_id"})


@dataclass(frozen=True)
class Ordering:
    """A parsed ordering file (not yet checked against a model)."""

    order: tuple[str, ...]
    layers: dict[str, int] | None
    base_model_id: str | None
    source: str = "ordering file"


def read_ordering(path: Path) -> Ordering:
    """Parse an ordering file, checking its types."""
    try:
        raw = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise AdapterError(f"ordering file {path}: unreadable ({e})") from None
    return parse_ordering(raw, f"ordering file {path}")


def parse_ordering(raw: Any, where: str = "ordering file") -> Ordering:
    """Check the JSON shape of an ordering file."""
    if not isinstance(raw, dict):
        raise AdapterError(f"{where}: expected a JSON object with 'order' and 'layers'")
    if raw.get("preload_adapters"):
        raise AdapterError(f"{where}: 'preload_adapters' is not supported (pass each LoRA adapter with -a)")
    unknown = sorted(set(raw) - _KNOWN - {"preload_adapters"})
    if unknown:
        raise AdapterError(f"{where}: unknown field {unknown[0]!r} (expected order, layers, base_model_id)")
    order = raw.get("order")
    if not isinstance(order, list) or not all(isinstance(a, str) for a in order):
        raise AdapterError(f"{where}: 'order' must be a list of adapter names")
    if len(set(order)) != len(order):
        dup = next(a for a in order if order.count(a) > 1)
        raise AdapterError(f"{where}: 'order' names adapter {dup!r} twice")
    layers = raw.get("layers")
    if layers is not None and (
        not isinstance(layers, dict)
        or not all(isinstance(v, int) and not isinstance(v, bool) for v in layers.values())
    ):
        raise AdapterError(f"{where}: 'layers' must map module names to integer indices")
    base = raw.get("base_model_id")
    if base is not None and not isinstance(base, str):
        raise AdapterError(f"{where}: 'base_model_id' must be a string")
    return Ordering(tuple(order), layers, base, where)


def check_order(ordering: Ordering, available: tuple[str, ...], what: str) -> tuple[str, ...]:
    """The adapter names of `order`, each present in `available` and none missing."""
    if not ordering.order:
        raise AdapterError(f"{ordering.source}: 'order' is empty; list the adapters ({', '.join(available)})")
    for name in ordering.order:
        if name not in available:
            raise AdapterError(
                f"{ordering.source}: unknown adapter {name!r} in 'order' ({what} has {', '.join(available)})"
            )
    missing = [a for a in available if a not in ordering.order]
    if missing:
        raise AdapterError(f"{ordering.source}: 'order' leaves out adapter {missing[0]!r} of {what}")
    return ordering.order


def check_layers(ordering: Ordering, model_paths: set[str], adapted: set[str]) -> list[str]:
    """Module paths by LoRA layer index, checked: existing modules, dense indices, the adapted set."""
    layers = ordering.layers
    if layers is None:
        # Older files may omit it: PEFT's numbering is the registration order.
        return sorted(adapted, key=module_sort_key)
    for path in layers:
        if path not in model_paths:
            raise AdapterError(f"{ordering.source}: layer {path!r} is not a module of the base model")
    indices = sorted(layers.values())
    if indices != list(range(len(layers))):
        gap = next((i for i, v in enumerate(indices) if v != i), len(indices))
        raise AdapterError(
            f"{ordering.source}: layer indices must be 0..{len(layers) - 1}, each once (index {gap} is missing or repeated)"
        )
    not_adapted = sorted(set(layers) - adapted, key=module_sort_key)
    if not_adapted:
        raise AdapterError(f"{ordering.source}: layer {not_adapted[0]!r} has no LoRA weights in the adapters")
    unlisted = sorted(adapted - set(layers), key=module_sort_key)
    if unlisted:
        raise AdapterError(f"{ordering.source}: the adapters adapt {unlisted[0]!r}, which 'layers' does not list")
    by_index = [""] * len(layers)
    for path, index in layers.items():
        by_index[index] = path
    return by_index


def same_model_id(a: str | None, b: str | None) -> bool:
    """Whether two model ids name the same model (a local folder matches a Hub id by its name)."""
    if not a or not b:
        return True
    na, nb = a.rstrip("/"), b.rstrip("/")
    return na == nb or Path(na).name == Path(nb).name


def generate_ordering(
    num_layers: int,
    targets: tuple[str, ...] = PROJECTION_NAMES,
    adapters: tuple[str, ...] = (),
    base_model_id: str | None = None,
) -> dict[str, Any]:
    """An ordering file's content: `order` as given, `layers` numbered in registration order."""
    bad = [t for t in targets if t not in PROJECTION_NAMES]
    if bad:
        raise AdapterError(f"unknown target module {bad[0]!r} (choose from {', '.join(PROJECTION_NAMES)})")
    if num_layers < 1:
        raise AdapterError(f"the base model must have at least one layer, got {num_layers}")
    paths = projection_paths(num_layers, tuple(targets))
    data: dict[str, Any] = {"order": list(adapters), "layers": {p: i for i, p in enumerate(paths)}}
    if base_model_id:
        data["base_model_id"] = base_model_id
    return data


def dump_ordering(data: dict[str, Any]) -> str:
    """The ordering file text: one layer per line, stable across runs."""
    return json.dumps(data, indent=2) + "\n"
