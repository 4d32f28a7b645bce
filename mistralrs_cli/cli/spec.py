"""ModelSpec: everything a model subcommand says about which model to load, as one frozen value."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mistralrs_cli.adapters.spec import AdapterSpec, LoraSpec, XLoraSpec
from mistralrs_cli.cli.model_commands import MODEL_COMMANDS
from mistralrs_cli.loading.spec import BaseSource, DefaultSource, GgufSource, HfSource, LoadOptions

_LOAD_FIELDS = tuple(f.name for f in dataclasses.fields(LoadOptions))


@dataclass(frozen=True)
class ModelSpec:
    """Which model to load and how: the base's source, load options, adapters; built by `model_spec`."""

    command: str  # the model subcommand, canonical spelling ("gguf-mistral", never "mistral-gguf")
    base: BaseSource
    load: LoadOptions
    adapters: AdapterSpec = None
    repeat_last_n: int = 64

    @property
    def display_name(self) -> str:
        """A short name for logs, /v1/models and the chat banner (an X-LoRA model's own, not its base's)."""
        name = next(iter(self._given_names()), None) or self.command
        return Path(name).name if Path(name).exists() else name

    def command_line_names(self) -> tuple[str, ...]:
        """The model path or id given on the command line (as typed and resolved), for requests that name it.

        An X-LoRA model is named by its X-LoRA model id, never by its base.
        """
        given = self._given_names()
        names: list[str] = []
        for name in given[:1] if self._xlora_id() else given:
            names.append(name)
            if Path(name).exists():
                names.append(str(Path(name).resolve()))
        return tuple(dict.fromkeys(names))

    def base_only(self) -> ModelSpec:
        """The same base model without its adapters (the bench's comparison); itself when it has none."""
        if self.adapters is None:
            return self
        command = "gguf-mistral" if isinstance(self.base, GgufSource) else "mistral"
        return dataclasses.replace(self, command=command, adapters=None)

    def _xlora_id(self) -> str | None:
        return self.adapters.xlora_model_id if isinstance(self.adapters, XLoraSpec) else None

    def _given_names(self) -> list[str]:
        """Ids and paths given on the command line, most specific first (X-LoRA model, then base)."""
        base = self.base
        ids: list[str | None] = []
        if isinstance(base, HfSource):
            ids = [base.model_id]
        elif isinstance(base, GgufSource):
            ids = [base.quantized_filename, base.quantized_model_id]
        return [n for n in (self._xlora_id(), *ids) if n]


def model_spec(command: str, **options: Any) -> ModelSpec:
    """The ModelSpec of model subcommand `command` given its options by their Python names.

    Names are the subcommand's parameters (model_id, weight_file, quantized_filename, adapter,
    order, merge, dtype, device...) plus chat_template; unset ones take the CLI's defaults.
    """
    if command not in MODEL_COMMANDS:
        raise ValueError(f"unknown model subcommand {command!r} (one of {', '.join(MODEL_COMMANDS)})")
    cmd = MODEL_COMMANDS[command]
    values = {p.name: p.default for p in cmd.params}
    unknown = sorted(set(options) - set(values) - {"chat_template"})
    if unknown:
        raise TypeError(f"{command} takes no option {unknown[0]!r}")
    values.update(options)
    load = LoadOptions(**{k: values[k] for k in _LOAD_FIELDS if values.get(k) is not None})
    return ModelSpec(command, _base(cmd.base, values), load, _adapters(cmd.adapters, values),
                     values.get("repeat_last_n", 64))


def _base(kind: str, v: dict[str, Any]) -> BaseSource:
    if kind == "hf":
        return HfSource(v["model_id"], tuple(v.get("weight_file") or ()), v["tokenizer_json"])
    if kind == "gguf":
        return GgufSource(v["quantized_model_id"], v["quantized_filename"], v["tok_model_id"])
    return DefaultSource()


def _adapters(kind: str | None, v: dict[str, Any]) -> AdapterSpec:
    order = Path(v["order"]) if v.get("order") is not None else None
    if kind == "xlora":
        return XLoraSpec(v["xlora_model_id"], order, v["tgt_non_granular_index"])
    if kind == "lora":
        return LoraSpec(tuple(v["adapter"] or ()), order, bool(v.get("merge", False)))
    return None
