"""`mistralrs pull`: fetch the embedded default model into the cache ahead of its first use."""

from __future__ import annotations

import typer

from mistralrs_cli.cli.exit_codes import exit_on_user_error


def pull_default_model() -> None:
    """Download the default model (SmolLM2-135M-Instruct Q4_1 GGUF) unless it is already here."""
    from mistralrs_cli.loading.default_model import resolve_default_model

    with exit_on_user_error():
        found = resolve_default_model()
    typer.echo(f"default model ({found.origin}): {found.gguf_path}")
