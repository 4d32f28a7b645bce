"""`mistralrs x-lora-ordering`: write an ordering file (adapter order + generated layer numbering).

The base model's shape comes from `--num-layers`, a `--config` file or `-m` (its config.json
only: no weights are downloaded). With `-x`, adapter names and adapted modules are read from
the X-LoRA model itself. Register with `app.command("x-lora-ordering")(x_lora_ordering)`.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from mistralrs_cli.cli.exit_codes import exit_on_user_error
from mistralrs_cli.errors import AdapterError, ConfigError

# NOTE: the adapter modules (torch, safetensors) are imported inside the functions, so that
# registering this command keeps `mistralrs --help` fast.

__all__ = ["x_lora_ordering", "ordering_for"]


def x_lora_ordering(
    output: Annotated[Path | None, typer.Option("-o", "--output", help="Write here (default: stdout).")] = None,
    model_id: Annotated[
        str | None, typer.Option("-m", "--model-id", help="Base model folder or Hub id (only its config.json is read).")
    ] = None,
    config: Annotated[Path | None, typer.Option("--config", help="A config.json giving the base model's shape.")] = None,
    num_layers: Annotated[int | None, typer.Option("--num-layers", min=1, help="Decoder layers of the base model.")] = None,
    adapter: Annotated[
        list[str] | None, typer.Option("-a", "--adapter", help="Adapter name, in classifier order. Repeatable.")
    ] = None,
    xlora_model_id: Annotated[
        str | None, typer.Option("-x", "--xlora-model-id", help="Take adapter names and adapted modules from this X-LoRA model.")
    ] = None,
    target_modules: Annotated[
        str | None, typer.Option("--target-modules", help="Comma-separated projections (default: all seven).")
    ] = None,
    base_model_id: Annotated[
        str | None, typer.Option("--base-model-id", help="Recorded in the file (default: -m).")
    ] = None,
    token_source: Annotated[str, typer.Option("--token-source", help="Hub token source (see mistralrs --help).")] = "cache",
) -> None:
    """Write an ordering file for X-LoRA: fill in `order`, keep the generated `layers`."""
    from mistralrs_cli.adapters.ordering import dump_ordering

    with exit_on_user_error(output):
        targets = tuple(t.strip() for t in target_modules.split(",") if t.strip()) if target_modules else None
        data = ordering_for(model_id, config, num_layers, tuple(adapter or ()), xlora_model_id, targets,
                            base_model_id, token_source)
        text = dump_ordering(data)
        if output is None:
            sys.stdout.write(text)
        else:
            output.write_text(text, encoding="utf-8")
            typer.echo(f"wrote {output} ({len(data['layers'])} layers)", err=True)


def ordering_for(
    model_id: str | None,
    config: Path | None,
    num_layers: int | None,
    adapters: tuple[str, ...],
    xlora_model_id: str | None,
    targets: tuple[str, ...] | None,
    base_model_id: str | None,
    token_source: str = "cache",
) -> dict:
    """The ordering file content for the given options (see `x_lora_ordering`)."""
    from mistralrs_cli.adapters.lora_files import PROJECTION_NAMES
    from mistralrs_cli.adapters.ordering import generate_ordering

    if xlora_model_id:
        names, adapted, config_base = _from_xlora(xlora_model_id, token_source)
        adapters = adapters or names
        base_model_id = base_model_id or model_id or config_base
        data = {"order": list(adapters), "layers": {p: i for i, p in enumerate(adapted)}}
        if base_model_id:
            data["base_model_id"] = base_model_id
        return data
    sources = [s for s in (model_id, config, num_layers) if s is not None]
    if len(sources) != 1:
        raise ConfigError("x-lora-ordering: give exactly one of -m, --config or --num-layers (or -x)")
    layers = num_layers if num_layers is not None else _num_layers(model_id, config, token_source)
    return generate_ordering(layers, targets or PROJECTION_NAMES, adapters, base_model_id or model_id)


def _num_layers(model_id: str | None, config: Path | None, token_source: str) -> int:
    from mistralrs_cli.adapters.files import open_source

    if config is None:
        source, listing = open_source(model_id, token_source, f"model {model_id}")
        if "config.json" not in listing:
            raise ConfigError(f"model {model_id}: missing config.json")
        config = source.get("config.json")
    try:
        raw = json.loads(Path(config).read_text(encoding="utf-8"))
        return int(raw["num_hidden_layers"])
    except (OSError, json.JSONDecodeError) as e:
        raise ConfigError(f"{config}: unreadable config.json ({e})") from None
    except (KeyError, TypeError, ValueError):
        raise ConfigError(f"{config}: no integer num_hidden_layers") from None


def _from_xlora(xlora_model_id: str, token_source: str) -> tuple[tuple[str, ...], list[str], str | None]:
    """(adapter names, adapted module paths in model order, base_model_id) of an X-LoRA model."""
    from safetensors import safe_open

    from mistralrs_cli.adapters.files import CONFIG, WEIGHTS, find_adapter, open_source, xlora_file
    from mistralrs_cli.adapters.lora_files import adapted_modules
    from mistralrs_cli.adapters.xlora_config import read_xlora_config

    what = f"X-LoRA model {xlora_model_id}"
    source, listing = open_source(xlora_model_id, token_source, what)
    settings = read_xlora_config(xlora_file(source, listing, ("xlora_config.json",), what))
    files = find_adapter(source, listing, settings.adapters[0], what)
    try:
        with safe_open(str(files.weights), framework="pt") as f:
            keys = list(f.keys())
    except Exception as e:  # safetensors raises several types for corrupt files
        raise AdapterError(f"{what}: unreadable {WEIGHTS} of {files.name!r} ({str(e).splitlines()[0]})") from None
    adapted = adapted_modules(keys)
    if not adapted:
        raise AdapterError(f"{what}: adapter {files.name!r} has no LoRA weights ({CONFIG} alone is not enough)")
    return settings.adapters, adapted, settings.base_model_id
