"""From a ModelSpec to a LoadedModel with LoRA or X-LoRA adapters around the base model.

The base loads through the ordinary loader (HF safetensors or GGUF); its targeted linears are
then swapped for LoraLinear wrappers in place. X-LoRA adds the classifier and the two-pass
XLoraModel around the same base; plain LoRA returns the base itself (merged or wrapped).
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import torch
from safetensors import safe_open

from mistralrs_cli.adapters.classifier import build_classifier
from mistralrs_cli.adapters.files import (
    AdapterFiles,
    adapter_folder,
    find_adapter,
    open_source,
    xlora_file,
)
from mistralrs_cli.adapters.lora import attach, base_shapes, merge
from mistralrs_cli.adapters.lora_files import LoraAdapter, read_lora_adapter
from mistralrs_cli.adapters.ordering import (
    Ordering,
    check_layers,
    check_order,
    read_ordering,
    same_model_id,
)
from mistralrs_cli.adapters.xlora import XLoraModel
from mistralrs_cli.adapters.xlora_config import read_xlora_config
from mistralrs_cli.errors import AdapterError
from mistralrs_cli.loading.loaded import LoadedModel
from mistralrs_cli.spec import ModelSpec

log = logging.getLogger(__name__)


def load_base(spec: ModelSpec) -> LoadedModel:
    """The base model of an adapter spec, through the ordinary HF or GGUF loader."""
    from mistralrs_cli.loading.loader import load_model

    kind = "gguf-mistral" if "gguf" in spec.kind else "mistral"
    return load_model(dataclasses.replace(spec, kind=kind))


def load_xlora(spec: ModelSpec) -> LoadedModel:
    """`x-lora-mistral` / `x-lora-gguf-mistral`: base + adapters + classifier -> XLoraModel."""
    if not spec.xlora_model_id:
        raise AdapterError(f"{spec.kind}: -x/--xlora-model-id is required (a folder or Hub id)")
    if spec.order is None:
        raise AdapterError(f"{spec.kind}: -o/--order is required (see ordering.json.template)")
    if spec.tgt_non_granular_index is not None and spec.tgt_non_granular_index < 0:
        raise AdapterError(f"--tgt-non-granular-index must be >= 0, got {spec.tgt_non_granular_index}")
    ordering = read_ordering(spec.order)
    what = f"X-LoRA model {spec.xlora_model_id}"
    source, listing = open_source(spec.xlora_model_id, spec.token_source, what)
    settings = read_xlora_config(xlora_file(source, listing, ("xlora_config.json",), what))
    # Files first (cheap), so a missing adapter fails before the base model loads.
    names = check_order(ordering, settings.adapters, "the X-LoRA config")
    files = [find_adapter(source, listing, name, what) for name in names]
    path = xlora_file(source, listing, ("xlora_classifier.safetensors", "adapter_model.safetensors"), what)
    loaded = load_base(spec)
    mismatch = _base_mismatch(spec, ordering, settings.base_model_id)
    try:
        if settings.hidden_size != loaded.config.hidden_size:
            raise AdapterError(
                f"{what}: hidden_size {settings.hidden_size} in xlora_config.json, the base has {loaded.config.hidden_size}"
            )
        shapes = base_shapes(loaded.model)
        adapters = _read_adapters(files, shapes)
        adapted = set(adapters[0].weights)
        for a in adapters[1:]:
            if set(a.weights) != adapted:
                odd = sorted(adapted ^ set(a.weights))[0]
                raise AdapterError(
                    f"{what}: adapters {adapters[0].name!r} and {a.name!r} target different modules ({odd}); "
                    "X-LoRA needs every adapter on the same modules"
                )
        layer_paths = check_layers(ordering, set(shapes), adapted)
        classifier = build_classifier(settings, _read_tensors(path, what), len(layer_paths), len(names), str(path))
    except AdapterError as e:
        if mismatch:
            raise AdapterError(f"{e.message} (note: {mismatch})") from None
        raise
    if mismatch:
        log.warning("%s; every adapter tensor fits the base, continuing", mismatch)
    if names != settings.adapters:
        log.warning("%s: 'order' differs from the config's adapter order; classifier output i is order[i]", ordering.source)
    classifier = classifier.to(loaded.device)
    wrappers = attach(loaded.model, adapters, layer_paths, loaded.dtype, loaded.device)
    model = XLoraModel(loaded.model, classifier, wrappers, names, layer_paths, spec.tgt_non_granular_index).eval()
    info = {**loaded.info, "adapters": list(names), "xlora_layers": len(layer_paths),
            "tgt_non_granular_index": spec.tgt_non_granular_index}
    return dataclasses.replace(loaded, model=model, info=info)


def load_lora(spec: ModelSpec) -> LoadedModel:
    """`lora-mistral` / `lora-gguf-mistral`: one or several PEFT adapters, merged or not."""
    files = lora_files(spec)
    loaded = load_base(spec)
    adapters = _read_adapters(files, base_shapes(loaded.model))
    if wants_merge(spec):
        merged, wrappers = merge(loaded.model, adapters, loaded.dtype, loaded.device)
    else:
        merged, wrappers = 0, attach(loaded.model, adapters, None, loaded.dtype, loaded.device)
    info = {**loaded.info, "adapters": [a.name for a in adapters], "lora_merged": merged,
            "lora_wrapped": len(wrappers)}
    return dataclasses.replace(loaded, info=info)


def lora_files(spec: ModelSpec) -> list[AdapterFiles]:
    """Adapters from `-a` (each a folder/Hub id), or `-o` naming subfolders of one adapter repo."""
    if spec.order is not None:
        repo = spec.xlora_model_id or (spec.adapter_ids[0] if len(spec.adapter_ids) == 1 else None)
        if repo is None:
            raise AdapterError(f"{spec.kind}: with -o, give exactly one adapter repo (-a) holding the adapters")
        ordering = read_ordering(spec.order)
        if not ordering.order:
            raise AdapterError(f"{ordering.source}: 'order' is empty; list the adapters to load")
        what = f"adapters {repo}"
        source, listing = open_source(repo, spec.token_source, what)
        return [find_adapter(source, listing, name, what) for name in ordering.order]
    if not spec.adapter_ids:
        raise AdapterError(f"{spec.kind}: give at least one LoRA adapter (-a FOLDER_OR_HUB_ID)")
    return [adapter_folder(a, spec.token_source) for a in spec.adapter_ids]


def wants_merge(spec: ModelSpec) -> bool:
    """Whether the spec asks to fold the adapters into the base weights."""
    return spec.lora_merge


def _read_adapters(files: list[AdapterFiles], shapes: dict[str, tuple[int, int]]) -> list[LoraAdapter]:
    names = [f.name for f in files]
    for f in files:
        if names.count(f.name) > 1:
            raise AdapterError(f"adapter {f.name!r} is given twice")
    return [read_lora_adapter(f.config, f.weights, f.name, shapes) for f in files]


def _read_tensors(path: Path, what: str) -> dict[str, torch.Tensor]:
    try:
        with safe_open(str(path), framework="pt") as f:
            return {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # safetensors raises several types for corrupt files
        raise AdapterError(f"{what}: unreadable {path.name} ({str(e).splitlines()[0]})") from None


def _base_mismatch(spec: ModelSpec, ordering: Ordering, config_base: str | None) -> str | None:
    """A sentence when the base ids of -m, the ordering file and xlora_config.json disagree."""
    given = spec.model_id if "gguf" not in spec.kind else None
    ids = [("-m", given), ("the ordering file", ordering.base_model_id), ("xlora_config.json", config_base)]
    named = [(k, v) for k, v in ids if v]
    for i, (ka, va) in enumerate(named):
        for kb, vb in named[i + 1 :]:
            if not same_model_id(va, vb):
                return f"base model {va!r} ({ka}) differs from {vb!r} ({kb})"
    return None
