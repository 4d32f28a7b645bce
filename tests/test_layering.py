"""The rooms' layering (pyproject's [tool.importlinter] contracts) holds, and would catch a breach."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def _lint(cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(cwd)}  # the copy under test, before any installed one
    return subprocess.run([str(LINT_IMPORTS), "--no-cache"], cwd=cwd, env=env, capture_output=True,
                          text=True, check=False)


def test_the_layering_contracts_hold():
    result = _lint(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


def test_a_frontend_that_imports_a_loader_breaks_the_contract(tmp_path):
    for package in ("mistralrs_cli", "kernels_cuda"):
        shutil.copytree(ROOT / package, tmp_path / package, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    chat = tmp_path / "mistralrs_cli" / "frontends" / "chat.py"
    chat.write_text(chat.read_text() + "\nfrom mistralrs_cli.loading import loader  # noqa: E402,F401\n")
    result = _lint(tmp_path)
    assert result.returncode != 0
    assert "mistralrs_cli.frontends.chat -> mistralrs_cli.loading.loader" in result.stdout
