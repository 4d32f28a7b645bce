"""One way for the small commands (pull, x-lora-ordering, x-lora-demo) to turn user errors into one line and an exit code."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import typer

from mistralrs_cli.errors import MistralrsError


@contextmanager
def exit_on_user_error(writing: object = None) -> Iterator[None]:
    """MistralrsError -> its one line and exit code; OSError -> "cannot write WRITING", exit 2."""
    try:
        yield
    except MistralrsError as e:
        typer.echo(f"error: {e.message}", err=True)
        raise typer.Exit(e.exit_code) from None
    except OSError as e:
        target = writing if writing is not None else (e.filename or "a file")
        typer.echo(f"error: cannot write {target}: {e.strerror or e}", err=True)
        raise typer.Exit(2) from None
