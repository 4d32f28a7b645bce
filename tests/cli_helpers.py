"""Running the CLI in-process in tests, and the one-line-error check every bad-input test makes."""

from __future__ import annotations

from typer.testing import CliRunner

from mistralrs_cli.cli import app

runner = CliRunner(env={"COLUMNS": "200", "NO_COLOR": "1"})


def run_cli(args: list[str], stdin: str = "Hello") -> tuple[int, str]:
    """Exit code and combined output of `mistralrs ARGS` with `stdin` piped in."""
    res = runner.invoke(app, args, input=stdin)
    return res.exit_code, res.output


def assert_one_line_error(code: int, out: str, *needles: str) -> None:
    """Exit code 2, exactly one non-empty line, no traceback, every needle in it."""
    assert code == 2, out
    assert "Traceback" not in out
    lines = [line for line in out.splitlines() if line.strip()]
    assert len(lines) == 1, out
    for needle in needles:
        assert needle in out, out
