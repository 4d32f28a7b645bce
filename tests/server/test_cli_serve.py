"""`mistralrs serve ...` and the original `mistralrs --port ...` form as real processes, stopped by signals."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time

import httpx
import openai
import pytest
from typer.testing import CliRunner

from mistralrs_cli.cli import app

MSG = [{"role": "user", "content": "Hi"}]


class ServerProcess:
    """`python -m mistralrs_cli ARGS` on a free loopback port, its URL read from stderr."""

    def __init__(self, args: list[str], env: dict[str, str] | None = None) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "mistralrs_cli", *args], stderr=subprocess.PIPE,
                                     stdout=subprocess.DEVNULL, text=True, env={**os.environ, **(env or {})})
        self.lines: list[str] = []

    def wait_ready(self) -> None:
        """Read the URL from stderr, then wait until /health says the model is loaded."""
        for line in self.proc.stderr:
            self.lines.append(line)
            found = re.search(r"listening on (http://127\.0\.0\.1:\d+)/v1", line)
            if found:
                self.url = found.group(1)
                break
        else:
            pytest.fail("server did not start:\n" + "".join(self.lines))
        # Keep draining stderr so the child never blocks on a full pipe.
        threading.Thread(target=lambda: self.lines.extend(self.proc.stderr), daemon=True).start()
        deadline = time.monotonic() + 60
        while httpx.get(self.url + "/health").status_code != 200:
            assert time.monotonic() < deadline, "model did not load:\n" + "".join(self.lines)
            time.sleep(0.1)

    def client(self, api_key: str = "none") -> openai.OpenAI:
        """The SDK for this server."""
        return openai.OpenAI(base_url=self.url + "/v1", api_key=api_key, max_retries=0, timeout=60)

    def stop(self, sig: int) -> int:
        """Send `sig` and return the exit code (killing the process if it hangs)."""
        self.proc.send_signal(sig)
        try:
            return self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise


@pytest.fixture
def spawn():
    """Start ServerProcesses; any still running at the end of the test is killed."""
    procs: list[ServerProcess] = []

    def make(args: list[str], env: dict[str, str] | None = None) -> ServerProcess:
        server = ServerProcess(args, env)
        procs.append(server)
        server.wait_ready()
        return server

    yield make
    for server in procs:
        if server.proc.poll() is None:
            server.proc.kill()
            server.proc.wait(10)


def _stream_then_signal(server: ServerProcess, sig: int, api_key: str = "none") -> tuple[list[str], int]:
    """Start a stream, signal the server at its first chunk; the stream must still finish."""
    finishes: list[str] = []
    stream = server.client(api_key).chat.completions.create(model="m", messages=MSG, max_tokens=20, stream=True,
                                                             logit_bias={"2": -100})  # no EOS: 20 tokens
    code: list[int] = []
    for i, chunk in enumerate(stream):
        if i == 0:
            threading.Thread(target=lambda: code.append(server.stop(sig)), daemon=True).start()
        finishes += [c.finish_reason for c in chunk.choices if c.finish_reason]
    deadline = time.monotonic() + 20
    while not code:
        assert time.monotonic() < deadline, "server did not exit"
        time.sleep(0.05)
    return finishes, code[0]


def test_serve_mode_with_api_key_drains_on_sigterm(tiny_mistral_dir, spawn):
    server = spawn(["serve", "--host", "127.0.0.1", "--port", "0", "--api-key", "k1",
                            "mistral", "-m", str(tiny_mistral_dir)])
    with pytest.raises(openai.AuthenticationError):
        server.client().models.list()
    assert server.client("k1").chat.completions.create(model="m", messages=MSG, max_tokens=3, temperature=0).usage.completion_tokens == 3
    finishes, code = _stream_then_signal(server, signal.SIGTERM, "k1")
    assert finishes == ["length"] and code == 0, "".join(server.lines)


def test_original_form_with_env_key_stops_on_sigint(tiny_mistral_dir, spawn):
    server = spawn(["--port", "0", "mistral", "-m", str(tiny_mistral_dir)],
                   env={"MISTRALRS_API_KEY": "k2"})
    with pytest.raises(openai.AuthenticationError):
        server.client("wrong").models.list()
    finishes, code = _stream_then_signal(server, signal.SIGINT, "k2")
    assert finishes == ["length"] and code == 0, "".join(server.lines)


def test_a_model_that_fails_to_load_stops_the_server_with_its_error(tmp_path):
    missing = tmp_path / "missing"
    result = CliRunner().invoke(app, ["serve", "--port", "0", "mistral", "-m", str(missing)])
    assert result.exit_code == 2 and "listening on" in result.output and "missing" in result.output


def test_port_in_use_is_a_config_error():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = CliRunner().invoke(app, ["serve", "--port", str(port), "mistral", "-m", "unused"])
    assert result.exit_code == 2 and f"cannot listen on 127.0.0.1:{port}" in result.output
