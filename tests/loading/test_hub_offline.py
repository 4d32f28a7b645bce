"""A Hub id that is not in the local HF cache while the Hub cannot be asked: one line, exit 2, no retries.

"Unreachable" is made deterministic with HF_ENDPOINT on a closed local port (the real Hub is not
reachable in CI either); HF_HUB_OFFLINE=1 is the other way in.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest

from tests.loading.test_hub_cache import _make_cache

NOT_CACHED = "is not in the local Hugging Face cache and"


def _closed_port_endpoint() -> str:
    with socket.socket() as s:  # a port the OS just handed out and nobody listens on once closed
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def _env(tmp_path, mode: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "TRANSFORMERS_"))}
    env["HF_HOME"] = str(tmp_path / "hf-home")
    if mode == "offline":
        env["HF_HUB_OFFLINE"] = "1"
    else:
        env["HF_ENDPOINT"] = _closed_port_endpoint()
    return env


def _run(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "mistralrs_cli", "chat", "--max-tokens", "5", *args]
    return subprocess.run(cmd, input="Hello", capture_output=True, text=True, env=env, timeout=300)


def _assert_one_line(res: subprocess.CompletedProcess, expected: str) -> None:
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert res.returncode == 2, res.stderr
    assert lines == [expected], res.stderr
    assert res.stdout == ""


WHY = {"offline": "HF_HUB_OFFLINE is set", "unreachable": "the Hub is unreachable (offline)"}


@pytest.mark.parametrize("mode", ["offline", "unreachable"])
def test_uncached_hub_id_is_one_line(tmp_path, mode):
    res = _run(["mistral", "-m", "someone/some-model"], _env(tmp_path, mode))
    _assert_one_line(res, f"error: someone/some-model {NOT_CACHED} {WHY[mode]}")


@pytest.mark.parametrize("mode", ["offline", "unreachable"])
def test_uncached_gguf_repo_is_one_line(tmp_path, mode):
    res = _run(["gguf-mistral", "-m", "someone/some-gguf", "-f", "model.Q4_K_M.gguf"], _env(tmp_path, mode))
    _assert_one_line(res, f"error: someone/some-gguf {NOT_CACHED} {WHY[mode]}")


def test_uncached_lora_repo_is_one_line(tiny_mistral_dir, tmp_path):
    res = _run(["lora-mistral", "-m", str(tiny_mistral_dir), "-a", "someone/some-lora"], _env(tmp_path, "unreachable"))
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert res.returncode == 2 and len(lines) == 1, res.stderr
    assert f"someone/some-lora {NOT_CACHED} {WHY['unreachable']}" in lines[0]


def test_cached_hub_id_runs_when_hub_unreachable(tiny_mistral_dir, tmp_path):
    """Without HF_HUB_OFFLINE, an unreachable Hub falls back to the cache at once (no retry lines)."""
    env = _env(tmp_path, "unreachable")
    _make_cache(tiny_mistral_dir, tmp_path / "hf-home" / "hub")
    res = _run(["mistral", "-m", "tiny-org/tiny-mistral"], env)
    assert res.returncode == 0, res.stderr
    assert "Retry" not in res.stderr and "WARNING" not in res.stderr, res.stderr
    direct = _run(["mistral", "-m", str(tiny_mistral_dir)], env)
    assert res.stdout == direct.stdout


def test_cached_repo_missing_file_names_the_file(tiny_mistral_dir, tmp_path):
    """A cached snapshot lacking a file the model needs names that file, not the whole repo."""
    env = _env(tmp_path, "offline")
    _make_cache(tiny_mistral_dir, tmp_path / "hf-home" / "hub")
    snap = next((tmp_path / "hf-home" / "hub" / "models--tiny-org--tiny-mistral" / "snapshots").iterdir())
    (snap / "tokenizer.json").unlink()
    res = _run(["mistral", "-m", "tiny-org/tiny-mistral"], env)
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert res.returncode == 2 and len(lines) == 1, res.stderr
    assert f"tiny-org/tiny-mistral: tokenizer.json {NOT_CACHED} {WHY['offline']}" in lines[0]
