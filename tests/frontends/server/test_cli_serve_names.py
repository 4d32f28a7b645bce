"""`mistralrs serve` as a real process: served model names (404 model_not_found for others), the
access log and --quiet, a shutdown without warnings, a banner that never wraps, the KV budget line,
and an X-LoRA server named after its X-LoRA model."""

from __future__ import annotations

import shutil
import signal

import httpx
import openai
import pytest
from typer.testing import CliRunner

from mistralrs_cli.cli import app
from tests.adapters.helpers import classifier_weights, write_adapter, write_ordering, write_xlora
from tests.frontends.server.conftest import ServerProcess

MSG = [{"role": "user", "content": "Hi"}]
ACCESS = r'127\.0\.0\.1:\d+ - "{method} {path} HTTP/1\.1" {status}'


def _error(e: openai.APIStatusError) -> dict:
    body = e.body if isinstance(e.body, dict) else {}
    return body.get("error", body)


def _chat(server: ServerProcess, model: str) -> openai.types.chat.ChatCompletion:
    return server.client().chat.completions.create(model=model, messages=MSG, max_tokens=2, temperature=0)


def test_served_names_access_log_banner_and_quiet_shutdown(tiny_mistral_dir, tmp_path, spawn):
    # A path long enough that an 80-column console would have wrapped the banner.
    model_dir = tmp_path / ("a-rather-long-folder-name-" * 4) / "tiny-mistral-with-a-long-name"
    shutil.copytree(tiny_mistral_dir, model_dir)
    server = spawn(["serve", "--port", "0", "--served-model-name", "alpha", "--served-model-name", "beta",
                    "mistral", "-m", str(model_dir)])
    banner = server.wait_for(r"listening on http://\S+/v1 .*").group(0)
    assert banner.endswith(f"(loading {model_dir.name}...)")  # the whole banner on one line
    ready = server.wait_for(r"model \S+ ready in .*").group(0)
    assert "KV cache" in ready and "MiB" in ready and "tokens" in ready

    client = server.client()
    assert [m.id for m in client.models.list().data] == ["alpha", "beta"]
    assert _chat(server, "beta").model == "beta"
    assert _chat(server, str(model_dir)).model == "alpha"  # the path given on the command line
    with pytest.raises(openai.NotFoundError) as e:
        _chat(server, "gpt-4o")
    assert e.value.status_code == 404 and _error(e.value)["code"] == "model_not_found"
    assert "gpt-4o" in _error(e.value)["message"] and _error(e.value)["param"] == "model"
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="tiny-mistral0", prompt="Hi", max_tokens=2)
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("gpt-4o")

    server.wait_for(ACCESS.format(method="GET", path="/v1/models", status=200))
    server.wait_for(ACCESS.format(method="POST", path="/v1/chat/completions", status=200))
    server.wait_for(ACCESS.format(method="POST", path="/v1/chat/completions", status=404))
    server.wait_for(ACCESS.format(method="POST", path="/v1/completions", status=404))
    assert server.stop(signal.SIGINT) == 0
    out = "".join(server.lines)
    assert "shutting down" in out and "WARNING" not in out and "Traceback" not in out, out


def test_quiet_has_no_access_log_and_sigterm_no_warning(tiny_mistral_dir, spawn):
    server = spawn(["serve", "--port", "0", "--quiet", "mistral", "-m", str(tiny_mistral_dir)])
    assert _chat(server, tiny_mistral_dir.name).model == tiny_mistral_dir.name  # default: the model's name
    assert httpx.get(server.url + "/health").status_code == 200
    assert server.stop(signal.SIGTERM) == 0
    out = "".join(server.lines)
    assert ' - "' not in out and "HTTP/1.1" not in out, out
    assert "shutting down" in out and "WARNING" not in out, out


def test_xlora_server_reports_the_xlora_model_not_its_base(tiny_mistral_dir, tmp_path, spawn):
    adapters = {f"expert_{i}": write_adapter(tmp_path / f"a{i}", seed=i + 1) for i in range(2)}
    xdir = write_xlora(tmp_path / "my-xlora", adapters, {"xlora_depth": 1}, classifier_weights(2, 14, 1))
    ordering = write_ordering(tmp_path / "ordering.json", list(adapters))
    server = spawn(["serve", "--port", "0", "-q", "x-lora-mistral", "-m", str(tiny_mistral_dir), "-x", str(xdir),
                    "-o", str(ordering)])
    assert server.wait_for(r"listening on \S+ \(loading (\S+)\.\.\.\)").group(1) == "my-xlora"
    assert [m.id for m in server.client().models.list().data] == ["my-xlora"]
    assert _chat(server, "my-xlora").model == "my-xlora"
    assert _chat(server, str(xdir)).model == "my-xlora"
    with pytest.raises(openai.NotFoundError):
        _chat(server, tiny_mistral_dir.name)  # the base is not what this server serves
    assert server.stop(signal.SIGTERM) == 0


def test_empty_served_model_name_is_a_config_error():
    result = CliRunner().invoke(app, ["serve", "--port", "0", "--served-model-name", " ", "mistral", "-m", "unused"])
    assert result.exit_code == 2 and "--served-model-name must not be empty" in result.output
