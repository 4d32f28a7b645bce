"""Typer option declarations (Annotated aliases), written once and shared by every mode and model subcommand."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

MODEL = "Model options"
SOURCE = "Source options"
SAMPLING = "Sampling options"
CONSTRAINT = "Output constraint (one of)"

# --- model subcommands -------------------------------------------------------------------
ModelId = Annotated[
    str | None,
    typer.Option("-m", "--model-id", help="Local folder or Hugging Face Hub id (owner/name).", rich_help_panel=MODEL),
]
TokenizerJson = Annotated[
    str | None,
    typer.Option("-t", "--tokenizer-json", help="Use this tokenizer.json instead of the model's.", rich_help_panel=MODEL),
]
WeightFile = Annotated[
    list[str] | None,
    typer.Option(
        "--weight-file",
        help="Use this safetensors file (path, or name inside the model) instead of the default shards. Repeatable.",
        rich_help_panel=MODEL,
    ),
]
RepeatLastN = Annotated[
    int,
    typer.Option("--repeat-last-n", min=0, help="Window (tokens) of the repetition penalty.", rich_help_panel=MODEL),
]
QuantizedModelId = Annotated[
    str | None,
    typer.Option(
        "-m", "--quantized-model-id",
        help="Local folder or Hub id holding the GGUF file (omit when -f is a path).",
        rich_help_panel=MODEL,
    ),
]
QuantizedFilename = Annotated[
    str | None,
    typer.Option("-f", "--quantized-filename", help="The .gguf file name (or a path to it).", rich_help_panel=MODEL),
]
TokModelId = Annotated[
    str | None,
    typer.Option(
        "-t", "--tok-model-id",
        help="HF folder/Hub id to take the tokenizer and chat template from (default: the GGUF's own).",
        rich_help_panel=MODEL,
    ),
]
XLoraModelId = Annotated[
    str | None,
    typer.Option("-x", "--xlora-model-id", help="Folder or Hub id of the X-LoRA model (classifier + adapters).", rich_help_panel=MODEL),
]
Order = Annotated[
    Path | None,
    typer.Option("-o", "--order", help="The ordering file (see ordering.json.template).", rich_help_panel=MODEL),
]
TgtNonGranularIndex = Annotated[
    int | None,
    typer.Option(
        "--tgt-non-granular-index",
        help="Compute X-LoRA scalings for the first N generated tokens only, then freeze them.",
        rich_help_panel=MODEL,
    ),
]
AdapterIds = Annotated[
    list[str] | None,
    typer.Option("-a", "--adapter", help="LoRA adapter folder or Hub id. Repeatable.", rich_help_panel=MODEL),
]
LoraMerge = Annotated[
    bool,
    typer.Option("--merge", help="Merge the LoRA deltas into dense base weights at load (faster; quantized bases stay unmerged).",
                 rich_help_panel=MODEL),
]
Revision = Annotated[str, typer.Option("--revision", help="Hub revision (branch, tag or commit).", rich_help_panel=SOURCE)]
TokenSource = Annotated[
    str,
    typer.Option(
        "--token-source",
        help="Hub token: cache (HF_TOKEN, then ~/.cache/huggingface/token), env:NAME, literal:TOKEN, path:FILE, none.",
        rich_help_panel=SOURCE,
    ),
]
Dtype = Annotated[
    str,
    typer.Option(
        "--dtype",
        help="auto | f32 | bf16 | f16. auto: GGUF stays 4-bit on CPU (int4 matmuls, f32 activations), "
        "safetensors compute in f32 on CPU; on GPU the checkpoint's half type. f32/bf16/f16 dequantize GGUF.",
        rich_help_panel=SOURCE,
    ),
]
Device = Annotated[str, typer.Option("--device", help="auto | cpu | cuda | cuda:N.", rich_help_panel=SOURCE)]

# --- sampling (chat and batch defaults) --------------------------------------------------------
Temperature = Annotated[
    float | None, typer.Option("--temperature", help="0 = greedy.", rich_help_panel=SAMPLING)
]
TopP = Annotated[float | None, typer.Option("--top-p", help="Nucleus sampling mass in (0, 1].", rich_help_panel=SAMPLING)]
TopK = Annotated[int | None, typer.Option("--top-k", help="Keep the K most likely tokens (0 = off).", rich_help_panel=SAMPLING)]
MaxTokens = Annotated[int | None, typer.Option("--max-tokens", help="Most tokens to generate per reply.", rich_help_panel=SAMPLING)]
BatchMaxTokens = Annotated[
    int | None,
    typer.Option("--max-tokens", help="Default most tokens per answer; a line's own max_tokens overrides it.", rich_help_panel=SAMPLING),
]
Seed = Annotated[int | None, typer.Option("--seed", help="Seed for reproducible sampling.", rich_help_panel=SAMPLING)]

# --- output constraint (chat) -------------------------------------------------------------------
JsonSchema = Annotated[
    Path | None,
    typer.Option("--json-schema", metavar="<file>", help="Hold every answer to the JSON Schema in the file (a JSON object): "
                 "the output parses and validates. The REPL's /schema changes it.", rich_help_panel=CONSTRAINT),
]
Regex = Annotated[
    str | None,
    typer.Option("--regex", metavar="<pattern>", help="Hold every answer to this regex, matched against the whole "
                 "answer (Rust regex syntax). The REPL's /regex changes it.", rich_help_panel=CONSTRAINT),
]

# --- serving ---------------------------------------------------------------------------------
Port = Annotated[int | None, typer.Option("-p", "--port", help="Serve the OpenAI-compatible API on this port.")]
ServeIp = Annotated[
    str, typer.Option("--serve-ip", "--host", help="Address to bind (default loopback only).")
]
