"""Loading Hugging Face safetensors checkpoints (one file, sharded, or any `--weight-file`)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from mistralrs_cli.errors import ConfigError, ModelSourceError, WeightError
from mistralrs_cli.loading.devices import pick_device, pick_dtype
from mistralrs_cli.loading.hf_config import config_from_hf
from mistralrs_cli.loading.hf_tokenizer import load_hf_tokenizer
from mistralrs_cli.loading.loaded import LoadedModel
from mistralrs_cli.loading.source import ModelSource
from mistralrs_cli.loading.spec import HfSource, LoadOptions
from mistralrs_cli.loading.weights import build_empty_model, load_state_dict
from mistralrs_cli.models.config import ModelConfig


def read_config(source: ModelSource) -> ModelConfig:
    """ModelConfig from the source's config.json."""
    if not source.has("config.json"):
        raise ConfigError(f"{source.model_id}: missing config.json")
    path = source.get("config.json")
    return config_from_hf(read_json(path, "config.json"), str(path))


def read_json(path: Path, what: str) -> Any:
    """A JSON file's value; unreadable, non-UTF-8, invalid or absurdly nested JSON is a ConfigError."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise ConfigError(f"{path}: unreadable {what} ({e.strerror or e})") from None
    except ValueError as e:  # JSONDecodeError and UnicodeDecodeError
        raise ConfigError(f"{path}: unreadable {what} ({str(e).splitlines()[0]})") from None
    except RecursionError:
        raise ConfigError(f"{path}: unreadable {what} (nested too deeply)") from None


def generation_eos_ids(path: Path) -> tuple[int, ...]:
    """`eos_token_id` (one id or a list) of generation_config.json, checked like config.json's."""
    raw = read_json(path, "generation_config.json")
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: generation_config.json must be a JSON object")
    eos = raw.get("eos_token_id")
    ids = eos if isinstance(eos, list) else [] if eos is None else [eos]
    if not all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in ids):
        raise ConfigError(f"{path}: invalid eos_token_id: must be a token id or a list of ids (got {eos!r:.60})")
    return tuple(ids)


def weight_paths(source: ModelSource, weight_files: tuple[str, ...]) -> list[Path]:
    """The safetensors files to read: `--weight-file`s, the shard index, or model.safetensors."""
    if weight_files:
        out = []
        for wf in weight_files:
            path = Path(wf).expanduser()
            out.append(path if path.is_file() else _get_weight(source, wf))
        return out
    if source.has("model.safetensors.index.json"):
        index_path = source.get("model.safetensors.index.json")
        try:
            index = json.loads(index_path.read_text())
            shards = sorted(set(index["weight_map"].values()))
        except (json.JSONDecodeError, KeyError, AttributeError) as e:
            raise WeightError(f"{index_path}: invalid shard index ({e})") from None
        return [source.get(s) for s in shards]
    if source.has("model.safetensors"):
        return [source.get("model.safetensors")]
    if source.local is not None:
        found = sorted(source.local.glob("*.safetensors"))
        if found:
            return found
    raise WeightError(f"{source.model_id}: no safetensors weights (pass --weight-file)")


def _get_weight(source: ModelSource, name: str) -> Path:
    try:
        return source.get(name)
    except ModelSourceError:
        raise WeightError(f"--weight-file {name}: no such file here or in {source.model_id}") from None


def iter_safetensors(paths: list[Path]) -> Iterator[tuple[str, torch.Tensor, Path]]:
    """(name, tensor, file) for every tensor of every file, memory-mapped."""
    for path in paths:
        try:
            with safe_open(str(path), framework="pt") as f:
                for name in f.keys():
                    yield name, f.get_tensor(name), path
        except WeightError:
            raise
        except Exception as e:
            raise WeightError(f"{path}: unreadable safetensors ({str(e).splitlines()[0]})") from None


def load_hf(source: HfSource, options: LoadOptions, name: str) -> LoadedModel:
    """Load an HF Mistral/Llama checkpoint; `name` is the model's display name."""
    if not source.model_id:
        raise ModelSourceError("mistral: -m/--model-id is required (a local folder or a Hub id)")
    files = ModelSource(source.model_id, options.revision, options.token_source)
    cfg = read_config(files)
    paths = weight_paths(files, source.weight_files)
    tensors: dict[str, torch.Tensor] = {}
    for tensor_name, tensor, _ in iter_safetensors(paths):
        tensors[tensor_name] = tensor
    first = next(iter(tensors.values()), None)
    device = pick_device(options.device)
    dtype = pick_dtype(options.dtype, device, first.dtype if first is not None else None)
    source_name = paths[0].parent.name if len(paths) > 1 else str(paths[0])
    model = load_state_dict(build_empty_model(cfg), tensors, dtype, device, source_name)
    tokenizer = load_hf_tokenizer(files, source.tokenizer_json, options.chat_template)
    tokenizer.add_eos_ids(cfg.eos_token_ids)
    if files.has("generation_config.json"):
        tokenizer.add_eos_ids(generation_eos_ids(files.get("generation_config.json")))
    return LoadedModel(model, cfg, tokenizer, name, device, dtype, {"format": "safetensors"})
