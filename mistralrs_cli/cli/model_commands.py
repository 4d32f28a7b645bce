"""The model subcommands (mistral, gguf-mistral, x-lora-..., lora-..., default), built from option groups.

Each option group is declared once; a command is its base kind, its adapter kind and the
groups it takes, in help order. `command_function` turns a command into the function typer
registers, its signature generated from the groups (typer reads `__signature__`).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import typer

from mistralrs_cli.cli import options as o


@dataclass(frozen=True)
class Param:
    """One option of a model subcommand: its Python name, typer declaration and default."""

    name: str
    annotation: Any
    default: Any = None

    def parameter(self) -> inspect.Parameter:
        """As a keyword parameter of the generated command function."""
        return inspect.Parameter(self.name, inspect.Parameter.KEYWORD_ONLY, default=self.default,
                                 annotation=self.annotation)


# --- option groups --------------------------------------------------------------------------
HF_BASE = (Param("model_id", o.ModelId), Param("tokenizer_json", o.TokenizerJson))
WEIGHT_FILES = (Param("weight_file", o.WeightFile),)
GGUF_BASE = (
    Param("quantized_model_id", o.QuantizedModelId),
    Param("quantized_filename", o.QuantizedFilename),
    Param("tok_model_id", o.TokModelId),
)
XLORA = (Param("xlora_model_id", o.XLoraModelId), Param("order", o.Order),
         Param("tgt_non_granular_index", o.TgtNonGranularIndex))
LORA = (Param("adapter", o.AdapterIds), Param("order", o.Order))
LORA_MERGE = (Param("merge", o.LoraMerge, False),)
PENALTY = (Param("repeat_last_n", o.RepeatLastN, 64),)
DEVICE = (Param("dtype", o.Dtype, "auto"), Param("device", o.Device, "auto"))
SOURCE = (Param("revision", o.Revision, "main"), Param("token_source", o.TokenSource, "cache"), *DEVICE)

BaseKind = Literal["hf", "gguf", "default"]
AdapterKind = Literal["lora", "xlora"] | None


@dataclass(frozen=True)
class ModelCommand:
    """A model subcommand: what it loads and which options it takes."""

    name: str
    help: str
    base: BaseKind
    adapters: AdapterKind
    params: tuple[Param, ...]
    aliases: tuple[str, ...] = ()  # hidden spellings (mistral.rs' `mistral-gguf`...)


MODEL_COMMANDS: dict[str, ModelCommand] = {c.name: c for c in (
    ModelCommand("default", "The embedded default model (SmolLM2-135M-Instruct Q4_1 GGUF).",
                 "default", None, DEVICE),
    ModelCommand("mistral", "A Hugging Face Mistral or Llama model (safetensors, any derivative, any weight file).",
                 "hf", None, HF_BASE + WEIGHT_FILES + PENALTY + SOURCE),
    ModelCommand("gguf-mistral", "A GGUF file of Mistral or a derivative (llama architecture included), quantized or not.",
                 "gguf", None, GGUF_BASE + PENALTY + SOURCE, ("mistral-gguf",)),
    ModelCommand("x-lora-mistral", "X-LoRA over an HF base model: a classifier mixes several LoRA adapters per token and layer.",
                 "hf", "xlora", HF_BASE + XLORA + PENALTY + SOURCE),
    ModelCommand("x-lora-gguf-mistral", "X-LoRA over a GGUF base model (llama architecture included), quantized or not.",
                 "gguf", "xlora", GGUF_BASE + XLORA + PENALTY + SOURCE, ("x-lora-mistral-gguf",)),
    ModelCommand("lora-mistral", "Plain LoRA adapters (one or several, merged or not) over an HF base model.",
                 "hf", "lora", HF_BASE + LORA + LORA_MERGE + PENALTY + SOURCE),
    ModelCommand("lora-gguf-mistral",
                 "Plain LoRA adapters over a GGUF base model (deltas applied unmerged on the quantized weights).",
                 "gguf", "lora", GGUF_BASE + LORA + PENALTY + SOURCE, ("lora-mistral-gguf",)),
)}

# What a model subcommand does with its parsed options: (context, command name, {option: value}).
RunCommand = Callable[[typer.Context, str, dict[str, Any]], None]


def command_function(command: ModelCommand, run: RunCommand) -> Callable[..., None]:
    """The function typer registers for `command`: its signature lists the command's options."""

    def model_command(ctx: typer.Context, **options: Any) -> None:
        run(ctx, command.name, options)

    ctx_param = inspect.Parameter("ctx", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=typer.Context)
    model_command.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
        [ctx_param, *(p.parameter() for p in command.params)], return_annotation=None
    )
    model_command.__annotations__ = {"ctx": typer.Context, "return": None}
    model_command.__doc__ = command.help
    model_command.__name__ = model_command.__qualname__ = command.name.replace("-", "_")
    return model_command


def register_model_commands(group: typer.Typer, run: RunCommand) -> None:
    """Add every model subcommand (and its hidden aliases) to `group`."""
    for command in MODEL_COMMANDS.values():
        func = command_function(command, run)
        group.command(command.name)(func)
        for alias in command.aliases:
            group.command(alias, hidden=True)(func)
