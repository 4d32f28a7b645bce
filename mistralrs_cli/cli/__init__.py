"""The command line: the Typer app (`app`), its console-script entry (`main`) and the composition root."""

from mistralrs_cli.cli.app import app, main

__all__ = ["app", "main"]
