"""Entry point for `python -m mistralrs_cli`."""

from mistralrs_cli.cli import main

main()
