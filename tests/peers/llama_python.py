"""An interpreter that has llama_cpp for the tests that need one, or a pytest skip (CI has none).

Set MISTRALRS_LLAMA_PYTHON to a venv's python that has llama-cpp-python; otherwise this
interpreter is used when it can import llama_cpp.
"""

from __future__ import annotations

import os
import subprocess
import sys
import venv
from functools import cache
from pathlib import Path

import pytest


@cache
def _has_llama_cpp(python: str) -> bool:
    try:
        return subprocess.run([python, "-c", "import llama_cpp"], capture_output=True, timeout=60).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def llama_python() -> str:
    """The interpreter with llama_cpp, or skip the test."""
    python = os.environ.get("MISTRALRS_LLAMA_PYTHON") or sys.executable
    if not _has_llama_cpp(python):
        pytest.skip(f"no llama_cpp in {python} (set MISTRALRS_LLAMA_PYTHON to a venv that has llama-cpp-python)")
    return python


def bare_python(folder: Path) -> str:
    """A real Python interpreter without llama_cpp: a fresh venv (no pip, no system site-packages)."""
    venv.EnvBuilder(with_pip=False, symlinks=True).create(folder)
    python = folder / "bin" / "python"
    assert not _has_llama_cpp(str(python))
    return str(python)
