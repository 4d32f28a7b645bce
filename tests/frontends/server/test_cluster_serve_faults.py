"""`serve --ray`'s bad input and faults that need no running Ray: one line, exit 2, before any model loads."""

from __future__ import annotations

import sys

import pytest
from typer.testing import CliRunner

from mistralrs_cli.cli import app


def _serve(*args: str) -> tuple[int, list[str]]:
    """Exit code and the non-empty output lines of `mistralrs serve ARGS mistral -m unused` (nothing to load)."""
    result = CliRunner().invoke(app, ["serve", *args, "mistral", "-m", "unused"])
    return result.exit_code, [line for line in result.output.splitlines() if line.strip()]


def test_ray_without_the_extra_names_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # what `import ray` meets when the extra is not installed
    code, lines = _serve("--ray", "--port", "0")
    assert code == 2 and lines == ['error: --ray needs Ray Serve, an optional extra: pip install -e ".[cluster]"']


@pytest.mark.parametrize("args", [
    ["--ray", "--replicas", "0"],  # a bare --ray before an option
    ["--replicas", "0", "--ray"],  # a bare --ray before the model subcommand
    ["--ray", "auto", "--replicas", "0"],
])
def test_zero_replicas_is_refused_whatever_the_address(args):
    code, lines = _serve(*args)
    assert code == 2 and lines == ["error: --replicas 0: serving needs at least one replica"]


@pytest.mark.parametrize("args, message", [
    (["--replicas", "2"], "error: --replicas only applies with --ray (serve on a Ray cluster)"),
    (["--gpus-per-replica", "1"], "error: --gpus-per-replica only applies with --ray (serve on a Ray cluster)"),
    (["--ray", "--cpus-per-replica", "-1"], "error: --cpus-per-replica -1.0: expected a number of at least 0"),
    (["--ray", "head-node"], "error: --ray 'head-node': expected no value (a local Ray instance), auto, host:port "
                             "or ray://host:port"),
    (["--ray", "127.0.0.1:6379", "--port", "0"], "error: --port 0 picks a free port on this machine only; with "
                                                 "--ray ADDRESS give the port the head node should listen on"),
])
def test_bad_cluster_flags_are_one_line(args, message):
    code, lines = _serve(*args)
    assert code == 2 and lines == [message]


@pytest.mark.parametrize("address", ["127.0.0.1:1", "ray://127.0.0.1:1"])
def test_an_address_nobody_answers_is_one_line(address):
    pytest.importorskip("ray.serve", reason="the cluster extra (pip install -e '.[cluster]')")
    code, lines = _serve("--ray", address)
    assert code == 2 and len(lines) == 1, lines
    assert lines[0].startswith(f"error: --ray {address}: cannot reach a Ray cluster at 127.0.0.1:1 (")
