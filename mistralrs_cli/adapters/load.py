"""LoRA and X-LoRA adapters around a loaded base model, in two steps.

`prepare` reads and checks everything that needs no base model (ordering file, X-LoRA config,
where each adapter's files are), so that a mistake fails before a large base loads. `apply`
then reads the adapter weights against the base's shapes and swaps its targeted linears for
LoraLinear wrappers in place: X-LoRA adds the classifier and the two-pass XLoraModel around
the same base; plain LoRA returns the base itself (merged or wrapped). The base is loaded by
the caller (cli/compose.py): this package never calls a loader.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path

from mistralrs_cli.adapters.classifier import build_classifier
from mistralrs_cli.adapters.files import (
    AdapterFiles,
    adapter_folder,
    find_adapter,
    open_source,
    xlora_file,
)
from mistralrs_cli.adapters.lora import attach, base_shapes, merge
from mistralrs_cli.adapters.lora_files import LoraAdapter, read_lora_adapter, read_tensors
from mistralrs_cli.adapters.ordering import (
    Ordering,
    check_layers,
    check_order,
    read_ordering,
    same_model_id,
)
from mistralrs_cli.adapters.spec import AdapterSpec, LoraSpec, XLoraSpec
from mistralrs_cli.adapters.xlora import XLoraModel
from mistralrs_cli.adapters.xlora_config import XLoraSettings, read_xlora_config
from mistralrs_cli.errors import AdapterError
from mistralrs_cli.loading.loaded import LoadedModel

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PreparedLora:
    """Plain LoRA adapters located and checked, waiting for their base."""

    files: tuple[AdapterFiles, ...]
    merge: bool


@dataclass(frozen=True)
class PreparedXLora:
    """An X-LoRA model's config, ordering and files, checked, waiting for its base."""

    spec: XLoraSpec
    what: str
    ordering: Ordering
    settings: XLoraSettings
    names: tuple[str, ...]
    files: tuple[AdapterFiles, ...]
    classifier: Path
    mismatch: str | None  # the base ids of -m, the ordering file and the config disagree


Prepared = PreparedLora | PreparedXLora


def prepare(
    spec: AdapterSpec, *, command: str, token_source: str = "cache", base_model_id: str | None = None
) -> Prepared | None:
    """Check the adapter files of `spec` before the base loads; `command` names the subcommand in errors.

    `base_model_id` is the HF base given with -m (None for a GGUF base), compared with the ids
    the ordering file and the X-LoRA config record.
    """
    if isinstance(spec, XLoraSpec):
        return _prepare_xlora(spec, command, token_source, base_model_id)
    if isinstance(spec, LoraSpec):
        return PreparedLora(tuple(lora_files(spec, command, token_source)), spec.merge)
    return None


def apply(prepared: Prepared | None, loaded: LoadedModel) -> LoadedModel:
    """The base `loaded` with the prepared adapters in place (itself when there are none)."""
    if isinstance(prepared, PreparedXLora):
        return _apply_xlora(prepared, loaded)
    if isinstance(prepared, PreparedLora):
        return _apply_lora(prepared, loaded)
    return loaded


def _prepare_xlora(spec: XLoraSpec, command: str, token_source: str, base_model_id: str | None) -> PreparedXLora:
    if not spec.xlora_model_id:
        raise AdapterError(f"{command}: -x/--xlora-model-id is required (a folder or Hub id)")
    if spec.order is None:
        raise AdapterError(f"{command}: -o/--order is required (see ordering.json.template)")
    if spec.tgt_non_granular_index is not None and spec.tgt_non_granular_index < 0:
        raise AdapterError(f"--tgt-non-granular-index must be >= 0, got {spec.tgt_non_granular_index}")
    ordering = read_ordering(spec.order)
    what = f"X-LoRA model {spec.xlora_model_id}"
    source, listing = open_source(spec.xlora_model_id, token_source, what)
    settings = read_xlora_config(xlora_file(source, listing, ("xlora_config.json",), what))
    names = check_order(ordering, settings.adapters, "the X-LoRA config")
    files = tuple(find_adapter(source, listing, name, what) for name in names)
    classifier = xlora_file(source, listing, ("xlora_classifier.safetensors", "adapter_model.safetensors"), what)
    mismatch = _base_mismatch(base_model_id, ordering, settings.base_model_id)
    return PreparedXLora(spec, what, ordering, settings, names, files, classifier, mismatch)


def _apply_xlora(p: PreparedXLora, loaded: LoadedModel) -> LoadedModel:
    """Base + adapters + classifier -> XLoraModel."""
    settings, what = p.settings, p.what
    try:
        if settings.hidden_size != loaded.config.hidden_size:
            raise AdapterError(
                f"{what}: hidden_size {settings.hidden_size} in xlora_config.json, the base has {loaded.config.hidden_size}"
            )
        shapes = base_shapes(loaded.model)
        adapters = _read_adapters(p.files, shapes)
        adapted = set(adapters[0].weights)
        for a in adapters[1:]:
            if set(a.weights) != adapted:
                odd = sorted(adapted ^ set(a.weights))[0]
                raise AdapterError(
                    f"{what}: adapters {adapters[0].name!r} and {a.name!r} target different modules ({odd}); "
                    "X-LoRA needs every adapter on the same modules"
                )
        layer_paths = check_layers(p.ordering, set(shapes), adapted)
        classifier = build_classifier(settings, read_tensors(p.classifier, what), len(layer_paths), len(p.names),
                                      str(p.classifier))
    except AdapterError as e:
        if p.mismatch:
            raise AdapterError(f"{e.message} (note: {p.mismatch})") from None
        raise
    if p.mismatch:
        log.warning("%s; every adapter tensor fits the base, continuing", p.mismatch)
    if p.names != settings.adapters:
        log.warning("%s: 'order' differs from the config's adapter order; classifier output i is order[i]", p.ordering.source)
    classifier = classifier.to(loaded.device)
    tgt = p.spec.tgt_non_granular_index
    wrappers = attach(loaded.model, adapters, layer_paths, loaded.dtype, loaded.device)
    model = XLoraModel(loaded.model, classifier, wrappers, p.names, layer_paths, tgt).eval()
    info = {**loaded.info, "adapters": list(p.names), "xlora_layers": len(layer_paths),
            "tgt_non_granular_index": tgt}
    return dataclasses.replace(loaded, model=model, info=info)


def _apply_lora(p: PreparedLora, loaded: LoadedModel) -> LoadedModel:
    """One or several PEFT adapters, merged or not, on the base itself."""
    adapters = _read_adapters(p.files, base_shapes(loaded.model))
    if p.merge:
        merged, wrappers = merge(loaded.model, adapters, loaded.dtype, loaded.device)
    else:
        merged, wrappers = 0, attach(loaded.model, adapters, None, loaded.dtype, loaded.device)
    info = {**loaded.info, "adapters": [a.name for a in adapters], "lora_merged": merged,
            "lora_wrapped": len(wrappers)}
    return dataclasses.replace(loaded, info=info)


def lora_files(spec: LoraSpec, command: str, token_source: str = "cache") -> list[AdapterFiles]:
    """Adapters from `-a` (each a folder/Hub id), or `-o` naming subfolders of one adapter repo."""
    if spec.order is not None:
        repo = spec.adapter_ids[0] if len(spec.adapter_ids) == 1 else None
        if repo is None:
            raise AdapterError(f"{command}: with -o, give exactly one adapter repo (-a) holding the adapters")
        ordering = read_ordering(spec.order)
        if not ordering.order:
            raise AdapterError(f"{ordering.source}: 'order' is empty; list the adapters to load")
        what = f"adapters {repo}"
        source, listing = open_source(repo, token_source, what)
        return [find_adapter(source, listing, name, what) for name in ordering.order]
    if not spec.adapter_ids:
        raise AdapterError(f"{command}: give at least one LoRA adapter (-a FOLDER_OR_HUB_ID)")
    return [adapter_folder(a, token_source) for a in spec.adapter_ids]


def _read_adapters(files: tuple[AdapterFiles, ...], shapes: dict[str, tuple[int, int]]) -> list[LoraAdapter]:
    names = [f.name for f in files]
    for f in files:
        if names.count(f.name) > 1:
            raise AdapterError(f"adapter {f.name!r} is given twice")
    return [read_lora_adapter(f.config, f.weights, f.name, shapes) for f in files]


def _base_mismatch(given: str | None, ordering: Ordering, config_base: str | None) -> str | None:
    """A sentence when the base ids of -m, the ordering file and xlora_config.json disagree."""
    ids = [("-m", given), ("the ordering file", ordering.base_model_id), ("xlora_config.json", config_base)]
    named = [(k, v) for k, v in ids if v]
    for i, (ka, va) in enumerate(named):
        for kb, vb in named[i + 1 :]:
            if not same_model_id(va, vb):
                return f"base model {va!r} ({ka}) differs from {vb!r} ({kb})"
    return None
