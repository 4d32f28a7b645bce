"""User errors become one line on stderr and an exit code, never a traceback (unless --debug)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import typer
from rich.console import Console
from rich.markup import escape

from mistralrs_cli.errors import MistralrsError

INTERRUPTED = 130  # the shell's code for SIGINT

stderr = Console(stderr=True)


def print_error(message: str) -> None:
    """`error: MESSAGE` on stderr, on one line however long."""
    stderr.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)


@contextmanager
def exit_on_mode_error(debug: bool = False) -> Iterator[None]:
    """For the modes: MistralrsError -> its line and exit code (re-raised with --debug); Ctrl-C -> 130."""
    try:
        yield
    except MistralrsError as e:
        if debug:
            raise
        print_error(e.message)
        raise typer.Exit(e.exit_code) from None
    except KeyboardInterrupt:
        raise typer.Exit(INTERRUPTED) from None


@contextmanager
def exit_on_user_error(writing: object = None) -> Iterator[None]:
    """For the small commands (pull, x-lora-ordering, x-lora-demo): MistralrsError -> its line and
    exit code; OSError -> "cannot write WRITING", exit 2."""
    try:
        yield
    except MistralrsError as e:
        typer.echo(f"error: {e.message}", err=True)
        raise typer.Exit(e.exit_code) from None
    except OSError as e:
        target = writing if writing is not None else (e.filename or "a file")
        typer.echo(f"error: cannot write {target}: {e.strerror or e}", err=True)
        raise typer.Exit(2) from None
