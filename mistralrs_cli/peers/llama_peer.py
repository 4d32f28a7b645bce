"""The client side of the llama.cpp peer: start `llama_cpp_worker.py` under a chosen interpreter and drive it.

The worker stays alive across rounds (its own process: its own load time, threads and peak RSS).
llama.cpp built natively can die on its first eval on AMX CPUs (docs/performance.md): when the
worker is killed by a signal, the peer says so in one line and, once, starts a fresh worker with
ggml's extra buffer types off, reloads the model and repeats the command.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mistralrs_cli.errors import MistralrsError

WORKER = Path(__file__).with_name("llama_cpp_worker.py")
BUILD_HINT = ("install it into a separate venv (`CMAKE_ARGS=\"-DGGML_NATIVE=ON\" pip install llama-cpp-python`) "
              "and pass --llama-python VENV/bin/python")


class PeerError(MistralrsError):
    """The peer cannot run: no interpreter, no llama_cpp, or its worker failed (exit code 2)."""


class PeerCrashed(PeerError):
    """The worker process died while a command was in flight (`returncode` < 0: killed by a signal)."""

    def __init__(self, message: str, returncode: int) -> None:
        super().__init__(message)
        self.returncode = returncode


def death(returncode: int) -> str:
    """How a process ended, in words: "killed by SIGSEGV", "exited with code 3"."""
    if returncode < 0:
        try:
            return f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    return f"exited with code {returncode}"


class _Process:
    """One worker process: JSON lines in, JSON lines out; stderr kept in a file for error messages."""

    def __init__(self, python: str) -> None:
        self.python = python
        self._stderr = tempfile.TemporaryFile()
        try:
            self.proc = subprocess.Popen([python, "-u", str(WORKER)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                         stderr=self._stderr, text=True, encoding="utf-8", errors="replace")
        except OSError as e:
            self._stderr.close()
            raise PeerError(f"--llama-python {python}: cannot run it ({e.strerror or e})") from None

    @property
    def pid(self) -> int:
        """The worker's process id."""
        return self.proc.pid

    def read(self) -> dict[str, Any]:
        """The next reply; PeerCrashed if the process died first, PeerError if it answered nonsense."""
        line = self.proc.stdout.readline()
        if not line:
            code = self.proc.wait()
            raise PeerCrashed(f"the llama.cpp worker ({self.python}) {death(code)}{self._stderr_tail()}", code)
        try:
            reply = json.loads(line)
        except json.JSONDecodeError:
            reply = None
        if not isinstance(reply, dict):
            raise PeerError(f"--llama-python {self.python}: the llama.cpp worker answered {line.strip()[:80]!r} "
                            "(is it a Python 3 interpreter?)")
        return reply

    def call(self, cmd: str, **args: Any) -> dict[str, Any]:
        """Send one command and return its reply; PeerError if the worker reports an error."""
        try:
            self.proc.stdin.write(json.dumps({"cmd": cmd, **args}) + "\n")
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError):
            pass  # the process is gone: read() says how
        reply = self.read()
        if "error" in reply:
            raise PeerError(f"llama.cpp {cmd}: {reply['error']}")
        return reply

    def close(self) -> None:
        """Ask the worker to quit; kill it if it does not within a few seconds."""
        if self.proc.poll() is None:
            try:
                self.proc.stdin.write('{"cmd": "quit"}\n')
                self.proc.stdin.close()
                self.proc.wait(timeout=5)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()
        for stream in (self.proc.stdout, self.proc.stdin):
            if stream is not None and not stream.closed:
                try:
                    stream.close()
                except OSError:
                    pass
        self._stderr.close()

    def _stderr_tail(self) -> str:
        self._stderr.seek(0)
        lines = [line.strip() for line in self._stderr.read().decode("utf-8", "replace").splitlines() if line.strip()]
        return f": {lines[-1][:200]}" if lines else ""


class LlamaPeer:
    """llama.cpp through llama-cpp-python in a worker process under `python`; close() (or `with`) ends it.

    Creating one checks the interpreter and that it can import llama_cpp (PeerError with what
    to do if not). `notify` receives the one-line crash notice before the retry.
    """

    def __init__(self, python: str | None = None, notify: Callable[[str], None] | None = None) -> None:
        self.python = python or sys.executable
        self.notify = notify or (lambda line: print(line, file=sys.stderr))
        self.extra_bufts = True
        self.crashed: str | None = None  # how the first worker died, when it did
        self._load_args: dict[str, Any] | None = None
        self.last_load: dict[str, Any] | None = None  # the latest load's reply (a retry reloads)
        self.last_rss: float | None = None  # the worker's peak RSS (MiB) in its latest reply
        self._proc = self._start()
        self.version: str = self._hello["version"]

    def _start(self) -> _Process:
        if not Path(self.python).exists():
            raise PeerError(f"--llama-python {self.python}: no such file")
        proc = _Process(self.python)
        try:
            hello = proc.read()
        except PeerCrashed as e:
            proc.close()
            raise PeerError(f"--llama-python {self.python}: {e.message.removeprefix('the ')} before answering; "
                            "is it a Python 3 interpreter?") from None
        except PeerError:
            proc.close()
            raise
        if "missing" in hello:
            proc.close()
            raise PeerError(f"llama.cpp: {self.python} cannot import llama_cpp; {BUILD_HINT}")
        if not hello.get("ready"):
            proc.close()
            raise PeerError(f"llama.cpp worker: {hello.get('error', hello)}")
        self._hello = hello
        return proc

    @property
    def pid(self) -> int:
        """The current worker's process id."""
        return self._proc.pid

    def load(self, model: str | Path, threads: int, n_ctx: int) -> dict[str, Any]:
        """Load the GGUF `model` with `threads` threads and room for `n_ctx` tokens: load_s, n_vocab, peak_rss_mib."""
        self._load_args = {"model": str(model), "threads": threads, "n_ctx": n_ctx}
        return self._call("load", **self._load_args)  # sets last_load

    def round(self, prompt: list[int], tokens: int) -> dict[str, Any]:
        """Greedy, EOS ignored, exactly `tokens` tokens after `prompt`: ttft_s, decode_s, *_tok_s, tokens."""
        return self._call("round", prompt=prompt, tokens=tokens)

    def _call(self, cmd: str, **args: Any) -> dict[str, Any]:
        try:
            return self._send(cmd, **args)
        except PeerCrashed as e:
            if not self.extra_bufts or e.returncode >= 0:
                raise
            self.crashed = e.message
            self.notify(f"{e.message}; retrying with ggml's extra buffer types off (use_extra_bufts=False, "
                        "the AMX crash in docs/performance.md)")
            self.extra_bufts = False
            self._proc.close()
            self._proc = self._start()
            if cmd != "load" and self._load_args is not None:
                self._send("load", **self._load_args)
            return self._send(cmd, **args)

    def _send(self, cmd: str, **args: Any) -> dict[str, Any]:
        if cmd == "load":
            args["extra_bufts"] = self.extra_bufts
        reply = self._proc.call(cmd, **args)
        if cmd == "load":
            self.last_load = reply
        self.last_rss = reply.get("peak_rss_mib", self.last_rss)
        return reply

    def close(self) -> None:
        """End the worker."""
        self._proc.close()

    def __enter__(self) -> LlamaPeer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
