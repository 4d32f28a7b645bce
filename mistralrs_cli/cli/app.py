"""The Typer app: modes (chat, batch, serve, bench, compile) x model subcommands, plus the original top-level form.

The CLI only parses: the root records the global options, a mode records its flags, and each
model subcommand turns its options into one ModelSpec that `compose.run_mode` runs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import click
import typer
from typer.core import TyperOption

from mistralrs_cli import __version__
from mistralrs_cli.cli import options as o
from mistralrs_cli.cli.compose import run_model_command
from mistralrs_cli.cli.global_options import GlobalOptions
from mistralrs_cli.cli.mode_flags import Invocation
from mistralrs_cli.cli.model_commands import register_model_commands
from mistralrs_cli.cli.modes import MODES
from mistralrs_cli.cli.ordering import x_lora_ordering
from mistralrs_cli.cli.pull import pull_default_model
from mistralrs_cli.cli.xlora_demo import x_lora_demo

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
        bool, typer.Option("--prefix-cache/--no-prefix-cache", help="Share the KV cache of identical prompt prefixes between requests (on by default; models whose KV depends on more than the tokens, like X-LoRA with frozen scalings, never share).")
    ] = True,
    no_kv_cache: Annotated[bool, typer.Option("--no-kv-cache", help="Recompute the whole sequence every step (debugging).")] = False,
    kv_cache_mem: Annotated[
        float | None, typer.Option("--kv-cache-mem", help="KV cache budget in MiB (default: what --max-seqs x the context can use, at most 1 GiB on CPU or half the free GPU memory).")
    ] = None,
    compile_step: Annotated[
        bool | None, typer.Option("--compile/--no-compile", envvar="MISTRALRS_COMPILE", show_default=False, help="Decode through a torch.compile'd step (default: on where it can run: CPU with g++; each batch size compiles in the background on first use, eager meanwhile, cached on disk). --no-compile: always eager.")
    ] = None,
    chat_template: Annotated[
        str | None, typer.Option("-c", "--chat-template", help="Jinja chat template (file, or JSON file with 'chat_template') overriding the model's.")
    ] = None,
    interactive: Annotated[bool, typer.Option("-i", "--interactive", help="Chat in the terminal (the original's spelling of `chat`).")] = False,
    debug: Annotated[bool, typer.Option("--debug", help="Show full tracebacks on errors.")] = False,
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True, help="Show the version and exit.")] = False,
) -> None:
    """Global options come before the mode or model subcommand."""
    if port is not None and interactive:
        raise typer.BadParameter("--port and -i/--interactive exclude each other")
    ctx.obj = Invocation(GlobalOptions(
        port=port, serve_ip=serve_ip, log=log, truncate_sequence=truncate_sequence, max_seqs=max_seqs,
        prefix_cache=prefix_cache, no_kv_cache=no_kv_cache, kv_cache_mem=kv_cache_mem, compile=compile_step,
        chat_template=chat_template, interactive=interactive, debug=debug,
    ))
    if ctx.invoked_subcommand is None:
        run_model_command(ctx, "default", {})


for _group in (app, *MODES.values()):
    register_model_commands(_group, run_model_command)
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
