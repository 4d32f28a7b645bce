"""`mistralrs batch --ray`: a real Ray cluster on this machine answers a batch exactly as one process does.

One Ray head (`ray start --head`, 2 CPUs, token auth with a token of its own) serves the module;
the batches run as separate `mistralrs` processes that join it (or, once, start their own local
instance), so a driver can be SIGKILLed and a worker's process killed as a user would.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mistralrs_cli.cli import app

pytest.importorskip("ray")

runner = CliRunner(env={"COLUMNS": "300"})
ROWS = [{"id": f"r{i}", "prompt": f"Prompt number {i} " + "word " * (i % 7), "max_tokens": 48} for i in range(40)]
RAY_BIN = Path(sys.executable).with_name("ray")


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _answers(records: list[dict]) -> dict[str, str]:
    """custom_id -> generated text of each answer."""
    return {r["custom_id"]: r["response"]["body"]["choices"][0]["text"] for r in records if r["error"] is None}


def _served(stderr: str) -> dict[int, int]:
    """worker slot -> requests it served, from the summary line."""
    summary = stderr[stderr.index("served per worker:"):]
    return {int(slot): int(n) for slot, n in re.findall(r"worker (\d+) on node \S+ \(id \w+\) (\d+) \(", summary)}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _session_pids(sid: int) -> list[int]:
    """Processes of the session `sid` (the Ray head this module started, and its workers)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if os.getsid(int(entry.name)) == sid:
                    pids.append(int(entry.name))
            except OSError:
                pass
    return pids


@pytest.fixture(scope="module")
def ray_env():
    """The environment of every process of this module's cluster: token auth with a token of its own."""
    return {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32),
            "RAY_USAGE_STATS_ENABLED": "0"}


@pytest.fixture(scope="module")
def ray_head(ray_env):
    """A Ray head with 2 CPUs in a session of its own; its address. Every process of that session ends with it."""
    port = _free_port()
    temp_dir = tempfile.mkdtemp(prefix="rayb-", dir="/tmp")  # short: Ray's socket paths must fit 107 bytes
    start = subprocess.Popen([str(RAY_BIN), "start", "--head", f"--port={port}", "--num-cpus=2",
                              "--include-dashboard=false", f"--temp-dir={temp_dir}"],
                             env=ray_env, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             text=True)
    try:
        said, _ = start.communicate(timeout=180)
        assert start.returncode == 0, said
        yield f"127.0.0.1:{port}"
    finally:
        for pid in _session_pids(start.pid):  # `ray start` ran as its session's leader: the session is the head's
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.fixture(scope="module")
def batch_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("cluster-batch") / "in.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    return path


@pytest.fixture(scope="module")
def reference(tiny_mistral_dir, batch_file):
    """The single-process answers of the batch file (greedy)."""
    out = batch_file.with_name("reference.jsonl")
    res = runner.invoke(app, ["batch", str(batch_file), "-o", str(out), "mistral", "-m", str(tiny_mistral_dir)])
    assert res.exit_code == 0, res.output
    answers = _answers(_lines(out))
    assert len(answers) == len(ROWS)
    return answers


def _cmd(src: Path, out: Path, model_dir: Path, *ray_flags: str) -> list[str]:
    return [sys.executable, "-m", "mistralrs_cli", "batch", str(src), "-o", str(out), *ray_flags,
            "mistral", "-m", str(model_dir)]


def _count_lines(path: Path) -> int:
    return path.read_text().count("\n") if path.exists() else 0


class Running:
    """A `mistralrs batch` process whose stderr is collected as it comes."""

    def __init__(self, cmd: list[str], env: dict[str, str]) -> None:
        self.proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        self.stderr: list[str] = []
        self.reader = threading.Thread(target=lambda: self.stderr.extend(self.proc.stderr), daemon=True)
        self.reader.start()

    def wait_until(self, condition, what: str, limit: float = 240.0) -> None:
        deadline = time.monotonic() + limit  # a guard against a hang, not a speed check
        while not condition():
            assert self.proc.poll() is None, f"the batch ended before {what}: {''.join(self.stderr)}"
            assert time.monotonic() < deadline, f"no {what} in {limit:.0f} s: {''.join(self.stderr)}"
            time.sleep(0.02)

    def finish(self) -> tuple[int, str]:
        code = self.proc.wait(timeout=300)
        self.reader.join(10)
        return code, "".join(self.stderr)


def test_local_ray_batch_equals_one_process_and_uses_both_workers(tiny_mistral_dir, batch_file, reference,
                                                                  tmp_path):
    out = tmp_path / "out.jsonl"
    res = subprocess.run(_cmd(batch_file, out, tiny_mistral_dir, "--ray", "--workers", "2"),
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    records = _lines(out)
    ids = [r["custom_id"] for r in records]
    assert sorted(ids) == sorted(reference) and len(ids) == len(set(ids))
    assert _answers(records) == reference
    served = _served(res.stderr)
    assert sorted(served) == [1, 2] and all(n > 0 for n in served.values()) and sum(served.values()) == 40
    assert "on a local Ray instance" in res.stderr
    assert not (tmp_path / "out.errors.jsonl").exists()


def test_sigkilled_driver_resumes_each_id_once(tiny_mistral_dir, batch_file, reference, ray_head, ray_env,
                                               tmp_path):
    out = tmp_path / "out.jsonl"
    flags = ("--ray", ray_head, "--workers", "2", "--max-concurrency", "1")
    run = Running(_cmd(batch_file, out, tiny_mistral_dir, *flags), ray_env)
    run.wait_until(lambda: _count_lines(out) >= 3, "3 answers")
    os.kill(run.proc.pid, signal.SIGKILL)
    run.finish()
    partial = _count_lines(out)
    assert 3 <= partial < 40, "the driver must be killed mid-way"
    with out.open("a") as f:  # a line torn by the kill
        f.write('{"id": "batch_req_x", "custom_id": "r3')
    res = subprocess.run(_cmd(batch_file, out, tiny_mistral_dir, *flags), env=ray_env, capture_output=True,
                         text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert f"+ {partial} from an earlier run" in res.stderr
    records = _lines(out)
    ids = [r["custom_id"] for r in records]
    assert sorted(ids) == sorted(reference) and len(ids) == len(set(ids))
    assert _answers(records) == reference


def test_killed_worker_is_retried_elsewhere_and_nothing_is_written_twice(tiny_mistral_dir, batch_file, reference,
                                                                         ray_head, ray_env, tmp_path):
    out = tmp_path / "out.jsonl"
    flags = ("--ray", ray_head, "--workers", "2", "--max-concurrency", "2")
    run = Running(_cmd(batch_file, out, tiny_mistral_dir, *flags), ray_env)

    def worker_pids() -> dict[int, int]:
        return {int(slot): int(pid) for slot, pid in
                re.findall(r"worker (\d+) on node .* loaded the model in .* \(pid (\d+)\)", "".join(run.stderr))}

    run.wait_until(lambda: len(worker_pids()) == 2 and _count_lines(out) >= 4, "2 loaded workers and 4 answers")
    os.kill(worker_pids()[1], signal.SIGKILL)
    at_kill = _count_lines(out)
    code, stderr = run.finish()
    assert code == 0, stderr
    assert at_kill <= 30, "the worker must be killed while it still has lines to answer"
    assert re.search(r"worker 1 on node .* died \(", stderr), stderr
    records = _lines(out)
    ids = [r["custom_id"] for r in records]
    assert len(ids) == len(set(ids)) == 40, "every line written exactly once"
    assert _answers(records) == reference
    served = _served(stderr)
    assert sum(served.values()) == 40


def test_a_worker_that_cannot_load_fails_the_run_naming_its_node(tiny_mistral_dir, batch_file, ray_head, ray_env,
                                                                 tmp_path):
    broken = tmp_path / "no-weights"
    shutil.copytree(tiny_mistral_dir, broken, ignore=shutil.ignore_patterns("*.safetensors"))
    out = tmp_path / "out.jsonl"
    res = subprocess.run(_cmd(batch_file, out, broken, "--ray", ray_head), env=ray_env, capture_output=True,
                         text=True, timeout=300)
    assert res.returncode == 2, res.stderr
    errors = [line for line in res.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, res.stderr
    assert re.match(r"error: worker 1 on node \d+\.\d+\.\d+\.\d+ \(id \w{8}\) cannot load the model: \S", errors[0])
    assert "Traceback" not in res.stderr
    assert _count_lines(out) == 0


def test_more_than_the_cluster_holds_is_one_line(batch_file, tiny_mistral_dir, ray_head, ray_env, tmp_path):
    # 2 CPUs and no GPU: after the bounded wait for nodes that might still join, one line.
    flags = ("--ray", ray_head, "--workers", "3", "--gpus-per-worker", "1")
    res = subprocess.run(_cmd(batch_file, tmp_path / "out.jsonl", tiny_mistral_dir, *flags), env=ray_env,
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 2, res.stderr
    errors = [line for line in res.stderr.splitlines() if line.startswith("error:")]
    assert errors == ["error: the Ray cluster cannot hold 3 workers of 1 CPU, 1 GPU each: its 1 node(s) have 2 CPUs "
                      "and 0 GPUs in all, room for 0 (see --workers, --cpus-per-worker, --gpus-per-worker)"], res.stderr


@pytest.mark.parametrize(("flags", "said"), [
    (["--ray", "--workers", "0"], "--workers 0: a batch on Ray needs at least one worker"),
    (["--workers", "2"], "--workers only applies with --ray"),
    (["--ray", "--cpus-per-worker", "-1"], "--cpus-per-worker -1.0: expected a number of at least 0"),
    (["--ray", "127.0.0.1:1"], "--ray 127.0.0.1:1: cannot reach a Ray cluster at 127.0.0.1:1"),
])
def test_bad_cluster_flags_are_one_line(batch_file, tiny_mistral_dir, flags, said):
    res = runner.invoke(app, ["batch", str(batch_file), *flags, "mistral", "-m", str(tiny_mistral_dir)])
    assert res.exit_code == 2, res.output
    assert said in res.output and "Traceback" not in res.output


def test_ray_alone_leaves_the_input_file_in_place(tmp_path, tiny_mistral_dir):
    res = runner.invoke(app, ["batch", "--ray", str(tmp_path / "missing.jsonl"), "mistral", "-m",
                              str(tiny_mistral_dir)])
    assert res.exit_code == 2, res.output
    assert "missing.jsonl: no such file" in res.output  # the input checks run before Ray starts


def test_without_ray_installed_the_extra_is_named(batch_file, tiny_mistral_dir):
    script = ("import sys; sys.modules['ray'] = None; from mistralrs_cli.cli import main; "
              f"sys.argv = ['mistralrs', 'batch', {str(batch_file)!r}, '--ray', 'mistral', '-m', "
              f"{str(tiny_mistral_dir)!r}]; main()")
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert res.returncode == 2, res.stderr
    assert 'error: --ray needs Ray, an optional extra: pip install -e ".[cluster]"' in res.stderr
