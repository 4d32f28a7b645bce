"""`mistralrs serve ...` and the original `mistralrs --port ...` form as real processes, stopped by signals."""

from __future__ import annotations

import signal
import socket
import threading
import time

import openai
import pytest
from typer.testing import CliRunner

from mistralrs_cli.cli import app
from tests.frontends.server.conftest import ServerProcess

MSG = [{"role": "user", "content": "Hi"}]


def _stream_then_signal(server: ServerProcess, sig: int, model: str, api_key: str = "none") -> tuple[list[str], int]:
    """Start a stream, signal the server at its first chunk; the stream must still finish."""
    finishes: list[str] = []
    stream = server.client(api_key).chat.completions.create(model=model, messages=MSG, max_tokens=20, stream=True,
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
    model = str(tiny_mistral_dir)  # the path given on the command line is a valid `model`
    assert server.client("k1").chat.completions.create(model=model, messages=MSG, max_tokens=3, temperature=0).usage.completion_tokens == 3
    finishes, code = _stream_then_signal(server, signal.SIGTERM, model, "k1")
    assert finishes == ["length"] and code == 0, "".join(server.lines)
    assert "WARNING" not in "".join(server.lines)  # a drain on SIGTERM is a normal shutdown


def test_original_form_with_env_key_stops_on_sigint(tiny_mistral_dir, spawn):
    server = spawn(["--port", "0", "mistral", "-m", str(tiny_mistral_dir)],
                   env={"MISTRALRS_API_KEY": "k2"})
    with pytest.raises(openai.AuthenticationError):
        server.client("wrong").models.list()
    finishes, code = _stream_then_signal(server, signal.SIGINT, tiny_mistral_dir.name, "k2")
    assert finishes == ["length"] and code == 0, "".join(server.lines)
    assert "WARNING" not in "".join(server.lines)


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
