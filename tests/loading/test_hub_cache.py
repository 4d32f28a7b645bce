"""Resolving a Hub id from a local Hugging Face cache with HF_HUB_OFFLINE=1 (a real subprocess)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys


def _make_cache(tiny_dir, cache):
    repo = cache / "models--tiny-org--tiny-mistral"
    commit = "0123456789abcdef0123456789abcdef01234567"
    snap = repo / "snapshots" / commit
    shutil.copytree(tiny_dir, snap)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    return commit


def test_offline_cache_resolves_hub_id(tiny_mistral_dir, tmp_path):
    cache = tmp_path / "hub"
    _make_cache(tiny_mistral_dir, cache)
    env = {**os.environ, "HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1", "HF_TOKEN": ""}
    cmd = [sys.executable, "-m", "mistralrs_cli", "chat", "--max-tokens", "5", "mistral", "-m", "tiny-org/tiny-mistral"]
    res = subprocess.run(cmd, input="Hello", capture_output=True, text=True, env=env, timeout=120)
    assert res.returncode == 0, res.stderr
    direct = subprocess.run(
        [*cmd[:-1], str(tiny_mistral_dir)], input="Hello", capture_output=True, text=True, env=env, timeout=120
    )
    assert res.stdout == direct.stdout

    missing = subprocess.run([*cmd[:-1], "tiny-org/absent"], input="Hello", capture_output=True, text=True,
                             env=env, timeout=120)
    assert missing.returncode == 2
    assert "tiny-org/absent" in missing.stderr and "Traceback" not in missing.stderr


def test_token_sources(tmp_path, monkeypatch):
    from mistralrs_cli.loading.source import hf_token

    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    assert hf_token("cache") is None
    (tmp_path / "token").write_text("hf_file\n")
    assert hf_token("cache") == "hf_file"
    monkeypatch.setenv("HF_TOKEN", "hf_env")
    assert hf_token("cache") == "hf_env"
    monkeypatch.setenv("OTHER", "hf_other")
    assert hf_token("env:OTHER") == "hf_other"
    assert hf_token("literal:abc") == "abc"
    assert hf_token("none") is None
