"""The Typer app: modes (chat, batch, serve, bench) x model subcommands, plus the original top-level form.

The CLI only parses: each model subcommand turns its options into one ModelSpec, and
`runner.run_mode` hands it to the mode the user chose.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import click
import typer
from typer.core import TyperGroup, TyperOption

from mistralrs_cli import __version__
from mistralrs_cli import cli_options as o
from mistralrs_cli.ordering_cli import x_lora_ordering
from mistralrs_cli.pull_cli import pull_default_model
from mistralrs_cli.runner import ModeOptions, run_mode
from mistralrs_cli.spec import ModelSpec
from mistralrs_cli.xlora_demo_cli import x_lora_demo

HELP = (
    "Fast, correct inference for Mistral-family models: chat in the terminal, run JSONL batches, "
    "serve an OpenAI-compatible API. With no model subcommand the embedded default model is used.\n\n"
    "Examples:\n\n"
    "  mistralrs chat mistral -m mistralai/Mistral-7B-Instruct-v0.1\n\n"
    "  mistralrs batch prompts.jsonl -o answers.jsonl\n\n"
    "  mistralrs serve --port 1234 gguf-mistral -f model.Q4_K_M.gguf\n\n"
    "  mistralrs --port 1234 mistral -m ./my-model   (original form: serves; without --port it chats)"
)

_display_type = TyperOption.display_type_rich


def _plain_switches(self: TyperOption, ctx: click.Context) -> str | None:
    """On/off flags take no value: show them as plain switches, not `<bool>` (typer's default)."""
    return None if self.is_flag else _display_type(self, ctx)


TyperOption.display_type_rich = _plain_switches  # type: ignore[method-assign]

app = typer.Typer(help=HELP, no_args_is_help=False, add_completion=False, rich_markup_mode="rich")
chat_app = typer.Typer(help="Chat with a model in the terminal (one-shot when stdin is not a terminal).")
class InterspersedGroup(TyperGroup):
    """A mode group whose options may follow its positional argument (`batch IN.jsonl -o OUT mistral ...`).

    Everything before the first model subcommand belongs to the mode; the rest to the subcommand.
    """

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        split = next((i for i, a in enumerate(args) if a in self.commands), len(args))
        ctx.allow_interspersed_args = True
        rest = click.Command.parse_args(self, ctx, args[:split]) + args[split:]
        if rest:
            ctx._protected_args, ctx.args = rest[:1], rest[1:]
        return ctx.args


batch_app = typer.Typer(cls=InterspersedGroup, help="Run a JSONL file of requests through the engine; resumable.")
serve_app = typer.Typer(help="Serve an OpenAI-compatible HTTP API.")
bench_app = typer.Typer(help="Measure TTFT, prefill, batch-1 decode and N-way throughput on a model (adapter models: also the base alone).")
MODES = {"chat": chat_app, "batch": batch_app, "serve": serve_app, "bench": bench_app}


def _version(value: bool) -> None:
    if value:
        typer.echo(f"mistralrs {__version__}")
        raise typer.Exit()


@app.callback(invoke_without_command=True)
def root(
    ctx: typer.Context,
    port: o.Port = None,
    serve_ip: o.ServeIp = "127.0.0.1",
    log: Annotated[Path | None, typer.Option("-l", "--log", help="Write every request and response to this file (JSON lines).")] = None,
    truncate_sequence: Annotated[
        bool, typer.Option("--truncate-sequence", help="Truncate prompts longer than the context (keeping room for max_tokens) instead of rejecting them.")
    ] = False,
    max_seqs: Annotated[
        int | None, typer.Option("--max-seqs", min=1, help="Most sequences running at once (default 32 on CPU, 128 on GPU).")
    ] = None,
    prefix_cache: Annotated[
        bool, typer.Option("--prefix-cache", help="Share the KV cache of identical prompt prefixes between requests.")
    ] = False,
    no_kv_cache: Annotated[bool, typer.Option("--no-kv-cache", help="Recompute the whole sequence every step (debugging).")] = False,
    kv_cache_mem: Annotated[
        float | None, typer.Option("--kv-cache-mem", help="KV cache budget in MiB (default: what --max-seqs x the context can use, at most 1 GiB on CPU or half the free GPU memory).")
    ] = None,
    chat_template: Annotated[
        str | None, typer.Option("-c", "--chat-template", help="Jinja chat template (file, or JSON file with 'chat_template') overriding the model's.")
    ] = None,
    interactive: Annotated[bool, typer.Option("-i", "--interactive", help="Chat in the terminal (the original's spelling of `chat`).")] = False,
    debug: Annotated[bool, typer.Option("--debug", help="Show full tracebacks on errors.")] = False,
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True, help="Show the version and exit.")] = False,
) -> None:
    """Global options come before the mode or model subcommand."""
    ctx.obj = ModeOptions(
        port=port,
        serve_ip=serve_ip,
        log=log,
        truncate_sequence=truncate_sequence,
        max_seqs=max_seqs,
        prefix_cache=prefix_cache,
        no_kv_cache=no_kv_cache,
        kv_cache_mem=kv_cache_mem,
        chat_template=chat_template,
        debug=debug,
    )
    if port is not None and interactive:
        raise typer.BadParameter("--port and -i/--interactive exclude each other")
    if interactive:
        ctx.obj.mode = "chat"
    if ctx.invoked_subcommand is None:
        run_mode(ctx, ModelSpec(kind="default", chat_template=chat_template))


@chat_app.callback(invoke_without_command=True)
def chat(
    ctx: typer.Context,
    system: Annotated[str | None, typer.Option("--system", help="System prompt.")] = None,
    messages: Annotated[
        Path | None, typer.Option("--messages", help="Non-interactive: read a JSON list of chat messages from this file ('-' = stdin).")
    ] = None,
    no_markdown: Annotated[bool, typer.Option("--no-markdown", help="Print replies as plain text.")] = False,
    temperature: o.Temperature = None,
    top_p: o.TopP = None,
    top_k: o.TopK = None,
    max_tokens: o.MaxTokens = None,
    seed: o.Seed = None,
) -> None:
    """Chat with the model; pick a model subcommand or use the embedded default."""
    _set_mode(ctx, "chat", system=system, messages=messages, markdown=not no_markdown,
              sampling=dict(temperature=temperature, top_p=top_p, top_k=top_k, max_tokens=max_tokens, seed=seed))


@batch_app.callback(invoke_without_command=True)
def batch(
    ctx: typer.Context,
    input_file: Annotated[Path, typer.Argument(help="JSONL requests (OpenAI Batch API lines or {prompt|messages}).")],
    output: Annotated[Path | None, typer.Option("-o", "--output", help="Output JSONL of answers (default: INPUT.out.jsonl); errors go to OUT.errors.jsonl. Re-running resumes: answered lines are kept, errors retried.")] = None,
    max_concurrency: Annotated[int, typer.Option("--max-concurrency", min=1, help="Most requests in flight at once.")] = 64,
    temperature: o.Temperature = None,
    top_p: o.TopP = None,
    top_k: o.TopK = None,
    max_tokens: o.BatchMaxTokens = None,
    seed: o.Seed = None,
) -> None:
    """Answer every line of a JSONL file; outputs are flushed per line."""
    _set_mode(ctx, "batch", input_file=input_file, output=output, max_concurrency=max_concurrency,
              sampling=dict(temperature=temperature, top_p=top_p, top_k=top_k, max_tokens=max_tokens, seed=seed))


@serve_app.callback(invoke_without_command=True)
def serve(
    ctx: typer.Context,
    port: o.Port = None,
    serve_ip: o.ServeIp = "127.0.0.1",
    api_key: Annotated[
        str | None, typer.Option("--api-key", envvar="MISTRALRS_API_KEY", help="Require this Bearer token on /v1 "
                                 "routes. Prefer the MISTRALRS_API_KEY variable or --api-key-file: a key on the "
                                 "command line shows in `ps`.")
    ] = None,
    api_key_file: Annotated[
        Path | None, typer.Option("--api-key-file", metavar="<file>", help="Read the API key from this file "
                                  "(one line; overrides MISTRALRS_API_KEY).")
    ] = None,
    allowed_hosts: Annotated[
        list[str] | None,
        typer.Option("--allowed-hosts", metavar="<names>", help="Host names accepted besides localhost, "
                     "127.0.0.1 and [::1] (repeatable or comma-separated; * for any). Requests naming others "
                     "get 400, which stops DNS-rebinding web pages."),
    ] = None,
    served_model_name: Annotated[
        list[str] | None,
        typer.Option("--served-model-name", metavar="<name>", help="Name clients use for the model (repeatable; default: the model's "
                     "name). Requests naming another model get 404 model_not_found."),
    ] = None,
    quiet: Annotated[bool, typer.Option("-q", "--quiet", help="No access-log line per request on stderr.")] = False,
) -> None:
    """Serve /v1/chat/completions, /v1/completions and /v1/models."""
    # By name: typer's and click's ParameterSource enums are distinct classes.
    if api_key_file is not None and getattr(ctx.get_parameter_source("api_key"), "name", "") == "ENVIRONMENT":
        api_key = None  # the file, given on the command line, overrides the environment
    _set_mode(ctx, "serve", port=port, serve_ip=serve_ip, api_key=api_key, api_key_file=api_key_file,
              served_model_name=served_model_name, quiet=quiet, allowed_hosts=allowed_hosts)


@bench_app.callback(invoke_without_command=True)
def bench(
    ctx: typer.Context,
    concurrency: Annotated[int, typer.Option("--concurrency", min=1, help="Concurrent requests for the throughput run.")] = 32,
    tokens: Annotated[int, typer.Option("--tokens", min=2, help="Tokens generated per request.")] = 64,
    prompt_len: Annotated[int, typer.Option("--prompt-len", min=1, help="Prompt length in tokens.")] = 64,
    json_out: Annotated[bool, typer.Option("--json", help="Also print the result as JSON on stdout.")] = False,
) -> None:
    """Benchmark the engine on the chosen model (default: the embedded model)."""
    _set_mode(ctx, "bench", concurrency=concurrency, tokens=tokens, prompt_len=prompt_len, json_out=json_out)


def _set_mode(ctx: typer.Context, mode: str, **options: object) -> None:
    opts: ModeOptions = ctx.obj
    opts.mode = mode
    opts.mode_options = options
    if ctx.invoked_subcommand is None:
        run_mode(ctx, ModelSpec(kind="default", chat_template=opts.chat_template))


# --- model subcommands: written once, registered under every mode and at the top level -----


def default_model(ctx: typer.Context, dtype: o.Dtype = "auto", device: o.Device = "auto") -> None:
    """The embedded default model (SmolLM2-135M-Instruct Q4_1 GGUF)."""
    _run(ctx, ModelSpec(kind="default", dtype=dtype, device=device))


def mistral(
    ctx: typer.Context,
    model_id: o.ModelId = None,
    tokenizer_json: o.TokenizerJson = None,
    weight_file: o.WeightFile = None,
    repeat_last_n: o.RepeatLastN = 64,
    revision: o.Revision = "main",
    token_source: o.TokenSource = "cache",
    dtype: o.Dtype = "auto",
    device: o.Device = "auto",
) -> None:
    """A Hugging Face Mistral or Llama model (safetensors, any derivative, any weight file)."""
    _run(ctx, ModelSpec(kind="mistral", model_id=model_id, tokenizer_json=tokenizer_json,
                        weight_files=tuple(weight_file or ()), repeat_last_n=repeat_last_n,
                        revision=revision, token_source=token_source, dtype=dtype, device=device))


def gguf_mistral(
    ctx: typer.Context,
    quantized_model_id: o.QuantizedModelId = None,
    quantized_filename: o.QuantizedFilename = None,
    tok_model_id: o.TokModelId = None,
    repeat_last_n: o.RepeatLastN = 64,
    revision: o.Revision = "main",
    token_source: o.TokenSource = "cache",
    dtype: o.Dtype = "auto",
    device: o.Device = "auto",
) -> None:
    """A GGUF file of Mistral or a derivative (llama architecture included), quantized or not."""
    _run(ctx, ModelSpec(kind="gguf-mistral", quantized_model_id=quantized_model_id,
                        quantized_filename=quantized_filename, tok_model_id=tok_model_id,
                        repeat_last_n=repeat_last_n, revision=revision, token_source=token_source,
                        dtype=dtype, device=device))


def x_lora_mistral(
    ctx: typer.Context,
    model_id: o.ModelId = None,
    tokenizer_json: o.TokenizerJson = None,
    xlora_model_id: o.XLoraModelId = None,
    order: o.Order = None,
    tgt_non_granular_index: o.TgtNonGranularIndex = None,
    repeat_last_n: o.RepeatLastN = 64,
    revision: o.Revision = "main",
    token_source: o.TokenSource = "cache",
    dtype: o.Dtype = "auto",
    device: o.Device = "auto",
) -> None:
    """X-LoRA over an HF base model: a classifier mixes several LoRA adapters per token and layer."""
    _run(ctx, ModelSpec(kind="x-lora-mistral", model_id=model_id, tokenizer_json=tokenizer_json,
                        xlora_model_id=xlora_model_id, order=order,
                        tgt_non_granular_index=tgt_non_granular_index, repeat_last_n=repeat_last_n,
                        revision=revision, token_source=token_source, dtype=dtype, device=device))


def x_lora_gguf_mistral(
    ctx: typer.Context,
    quantized_model_id: o.QuantizedModelId = None,
    quantized_filename: o.QuantizedFilename = None,
    tok_model_id: o.TokModelId = None,
    xlora_model_id: o.XLoraModelId = None,
    order: o.Order = None,
    tgt_non_granular_index: o.TgtNonGranularIndex = None,
    repeat_last_n: o.RepeatLastN = 64,
    revision: o.Revision = "main",
    token_source: o.TokenSource = "cache",
    dtype: o.Dtype = "auto",
    device: o.Device = "auto",
) -> None:
    """X-LoRA over a GGUF base model (llama architecture included), quantized or not."""
    _run(ctx, ModelSpec(kind="x-lora-gguf-mistral", quantized_model_id=quantized_model_id,
                        quantized_filename=quantized_filename, tok_model_id=tok_model_id,
                        xlora_model_id=xlora_model_id, order=order,
                        tgt_non_granular_index=tgt_non_granular_index, repeat_last_n=repeat_last_n,
                        revision=revision, token_source=token_source, dtype=dtype, device=device))


def lora_mistral(
    ctx: typer.Context,
    model_id: o.ModelId = None,
    tokenizer_json: o.TokenizerJson = None,
    adapter: o.AdapterIds = None,
    order: o.Order = None,
    merge: o.LoraMerge = False,
    repeat_last_n: o.RepeatLastN = 64,
    revision: o.Revision = "main",
    token_source: o.TokenSource = "cache",
    dtype: o.Dtype = "auto",
    device: o.Device = "auto",
) -> None:
    """Plain LoRA adapters (one or several, merged or not) over an HF base model."""
    _run(ctx, ModelSpec(kind="lora-mistral", model_id=model_id, tokenizer_json=tokenizer_json,
                        adapter_ids=tuple(adapter or ()), order=order, lora_merge=merge,
                        repeat_last_n=repeat_last_n, revision=revision, token_source=token_source,
                        dtype=dtype, device=device))


def lora_gguf_mistral(
    ctx: typer.Context,
    quantized_model_id: o.QuantizedModelId = None,
    quantized_filename: o.QuantizedFilename = None,
    tok_model_id: o.TokModelId = None,
    adapter: o.AdapterIds = None,
    order: o.Order = None,
    repeat_last_n: o.RepeatLastN = 64,
    revision: o.Revision = "main",
    token_source: o.TokenSource = "cache",
    dtype: o.Dtype = "auto",
    device: o.Device = "auto",
) -> None:
    """Plain LoRA adapters over a GGUF base model (deltas applied unmerged on the quantized weights)."""
    _run(ctx, ModelSpec(kind="lora-gguf-mistral", quantized_model_id=quantized_model_id,
                        quantized_filename=quantized_filename, tok_model_id=tok_model_id,
                        adapter_ids=tuple(adapter or ()), order=order, repeat_last_n=repeat_last_n,
                        revision=revision, token_source=token_source, dtype=dtype, device=device))


def _run(ctx: typer.Context, spec: ModelSpec) -> None:
    opts: ModeOptions = ctx.find_root().obj
    if opts.chat_template and not spec.chat_template:
        spec = ModelSpec(**{**spec.__dict__, "chat_template": opts.chat_template})
    run_mode(ctx, spec)


MODEL_COMMANDS = {
    "default": (default_model, ()),
    "mistral": (mistral, ()),
    "gguf-mistral": (gguf_mistral, ("mistral-gguf",)),
    "x-lora-mistral": (x_lora_mistral, ()),
    "x-lora-gguf-mistral": (x_lora_gguf_mistral, ("x-lora-mistral-gguf",)),
    "lora-mistral": (lora_mistral, ()),
    "lora-gguf-mistral": (lora_gguf_mistral, ("lora-mistral-gguf",)),
}

for _group in (app, *MODES.values()):
    for _name, (_func, _aliases) in MODEL_COMMANDS.items():
        _group.command(_name)(_func)
        for _alias in _aliases:
            _group.command(_alias, hidden=True)(_func)
for _mode, _group in MODES.items():
    app.add_typer(_group, name=_mode)
app.command("x-lora-ordering", help="Write an X-LoRA ordering file for a base model and its adapters.")(
    x_lora_ordering
)
app.command("x-lora-demo", help="Write a small random X-LoRA for the default model into a folder (offline).")(x_lora_demo)
app.command("pull", help="Download the embedded default model into the cache now (otherwise it is fetched on first use).")(
    pull_default_model
)


def main() -> None:
    """Console-script entry point."""
    app(prog_name="mistralrs")


if __name__ == "__main__":
    sys.exit(main())
