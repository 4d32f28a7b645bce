"""Finding X-LoRA and LoRA files in a local folder or a Hub repo, in every layout seen in the wild.

X-LoRA model: `xlora_config.json`, `xlora_classifier.safetensors`, and per adapter either a
subfolder `<name>/adapter_config.json` + `<name>/adapter_model.safetensors` (canonical, also
found nested one level deeper) or flat files `<name>_adapter_config.json` +
`<name>_adapter_model.safetensors` (mistral.rs matches "file name contains the adapter name";
so do we when no exact name fits, provided the match is unique).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from mistralrs_cli.errors import AdapterError, ModelSourceError
from mistralrs_cli.loading.source import ModelSource

CONFIG, WEIGHTS = "adapter_config.json", "adapter_model.safetensors"


@dataclass(frozen=True)
class AdapterFiles:
    """Local paths of one adapter's config and weights."""

    name: str
    config: Path
    weights: Path


def open_source(model_id: str, token_source: str, what: str) -> tuple[ModelSource, list[str]]:
    """A ModelSource and its file listing, with errors naming `what` it is."""
    try:
        source = ModelSource(model_id, "main", token_source)
        return source, source.list_files()
    except ModelSourceError as e:
        raise AdapterError(f"{what}: {e.message}") from None


def fetch(source: ModelSource, name: str, what: str) -> Path:
    """Local path of one listed file (downloaded into the HF cache when remote)."""
    try:
        return source.get(name)
    except ModelSourceError as e:
        raise AdapterError(f"{what}: {e.message}") from None


def xlora_file(source: ModelSource, listing: list[str], candidates: tuple[str, ...], what: str) -> Path:
    """The first of `candidates` present at the root of the X-LoRA model."""
    for name in candidates:
        if name in listing:
            return fetch(source, name, what)
    raise AdapterError(f"{what}: missing {' or '.join(candidates)} in {source.model_id}")


def find_adapter(source: ModelSource, listing: list[str], name: str, what: str) -> AdapterFiles:
    """Locate adapter `name`'s config and weights in any supported layout."""
    for config, weights in _candidates(listing, name):
        if config in listing and weights in listing:
            return AdapterFiles(name, fetch(source, config, what), fetch(source, weights, what))
        if config in listing:
            stem = weights.removesuffix("safetensors")
            if f"{stem}bin" in listing:
                raise AdapterError(f"{what}: adapter {name!r} has only {stem}bin; convert it to safetensors")
            raise AdapterError(f"{what}: adapter {name!r} has {config} but no {weights}")
    raise AdapterError(
        f"{what}: no files for adapter {name!r} (looked for {name}/{CONFIG} and {name}_{CONFIG} in {source.model_id})"
    )


def adapter_folder(model_id: str, token_source: str) -> AdapterFiles:
    """A plain LoRA adapter given as a folder or Hub id holding the two PEFT files."""
    what = f"adapter {model_id}"
    source, listing = open_source(model_id, token_source, what)
    name = Path(model_id.rstrip("/")).name
    if CONFIG not in listing:
        raise AdapterError(f"{what}: missing {CONFIG}")
    if WEIGHTS not in listing:
        hint = " (only adapter_model.bin; convert it to safetensors)" if "adapter_model.bin" in listing else ""
        raise AdapterError(f"{what}: missing {WEIGHTS}{hint}")
    return AdapterFiles(name, fetch(source, CONFIG, what), fetch(source, WEIGHTS, what))


def _candidates(listing: list[str], name: str) -> list[tuple[str, str]]:
    """(config, weights) pairs to try, most specific first."""
    out = [(f"{name}/{CONFIG}", f"{name}/{WEIGHTS}")]
    nested = [p for p in listing if p.endswith(f"/{name}/{CONFIG}")]
    if len(nested) == 1:
        folder = nested[0].removesuffix(CONFIG)
        out.append((nested[0], f"{folder}{WEIGHTS}"))
    out.append((f"{name}_{CONFIG}", f"{name}_{WEIGHTS}"))
    # mistral.rs: a root file whose name contains the adapter name (unique matches only).
    configs = [p for p in listing if "/" not in p and p.endswith(CONFIG) and name in p]
    weights = [p for p in listing if "/" not in p and p.endswith(WEIGHTS) and name in p]
    if len(configs) == 1 and len(weights) == 1:
        out.append((configs[0], weights[0]))
    return out
