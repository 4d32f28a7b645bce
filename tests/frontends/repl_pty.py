"""Spawning the real chat REPL in a pseudo-terminal (pexpect), shared by the REPL tests."""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import pexpect

# prompt_toolkit draws "> " as ">" plus a cursor move over the space.
PROMPT = r">(?:\x08\x1b\[2C| )"


def spawn_repl(model_dir: Path, tmp_path: Path, *mode_args: str) -> pexpect.spawn:
    """`mistralrs chat MODE_ARGS mistral -m MODEL_DIR` in a 40x120 terminal, history under tmp_path."""
    env = {**os.environ, "XDG_DATA_HOME": str(tmp_path), "TERM": "xterm", "COLUMNS": "120", "LINES": "40",
           "PROMPT_TOOLKIT_NO_CPR": "1"}
    args = ["-m", "mistralrs_cli", "chat", *mode_args, "mistral", "-m", str(model_dir), "--repeat-last-n", "0"]
    return pexpect.spawn(sys.executable, args, env=env, encoding="utf-8", timeout=60, dimensions=(40, 120),
                         preexec_fn=_interruptible)


def _interruptible() -> None:
    """Give the REPL Ctrl-C even when the suite runs as a background job (`pytest &` in a script):
    such jobs inherit SIGINT ignored, and Python then installs no KeyboardInterrupt handler."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
