"""The DNS-rebinding guard (Host header check), --allowed-hosts, and --api-key-file."""

from __future__ import annotations

import json
import time

import httpx
import openai
import pytest
from typer.testing import CliRunner

from mistralrs_cli.cli import app
from mistralrs_cli.frontends.server_http import host_allowed, host_name, is_loopback
from tests.frontends.server.conftest import LiveServer

MSG = [{"role": "user", "content": "Hi"}]


def _get(live: LiveServer, path: str, host: str) -> httpx.Response:
    with live.http() as http:
        return http.get(path, headers={"Host": host})


@pytest.mark.parametrize("host", ["localhost", "LOCALHOST:1234", "127.0.0.1", "127.0.0.1:80", "[::1]", "[::1]:8080",
                                  "localhost.", "127.0.0.2:1"])
def test_a_loopback_server_accepts_loopback_names(server: LiveServer, host):
    assert _get(server, "/health", host).status_code == 200
    assert _get(server, "/v1/models", host).status_code == 200


@pytest.mark.parametrize("host", ["attacker.example", "attacker.example:1234", "localhost.attacker.example",
                                  "127.0.0.1.nip.io", "[::2]:80", "0.0.0.0", ""])
def test_a_loopback_server_refuses_other_names_in_openai_shape(server: LiveServer, request_log, host):
    for path in ("/health", "/v1/models", "/metrics"):
        r = _get(server, path, host)
        assert r.status_code == 400, (path, r.text)
        error = r.json()["error"]
        assert error["code"] == "host_not_allowed" and error["type"] == "invalid_request_error"
        assert "--allowed-hosts" in error["message"]
    # Refused requests are logged too.
    deadline = time.monotonic() + 10
    while not any(r["status"] == 400 and r["path"] == "/metrics"
                  for r in map(json.loads, request_log.read_text().splitlines())):
        assert time.monotonic() < deadline, "the refusal was not logged"
        time.sleep(0.02)


def test_a_refused_host_never_reaches_the_engine(server: LiveServer):
    with server.http() as http:
        r = http.post("/v1/chat/completions", headers={"Host": "evil.example"},
                      json={"model": "tiny", "messages": MSG, "max_tokens": 2})
    assert r.status_code == 400 and r.json()["error"]["code"] == "host_not_allowed"


def test_allowed_hosts_extend_the_loopback_names(fresh_server):
    live = fresh_server(allowed_hosts=("box.lan", "llm.example.com"))
    assert _get(live, "/health", "box.lan:1234").status_code == 200
    assert _get(live, "/health", "LLM.example.com").status_code == 200
    assert _get(live, "/health", "localhost").status_code == 200
    assert _get(live, "/health", "other.lan").status_code == 400
    client = openai.OpenAI(base_url=live.url + "/v1", api_key="none", max_retries=0,
                           default_headers={"Host": "box.lan"})
    assert client.chat.completions.create(model="tiny", messages=MSG, max_tokens=2).usage.completion_tokens == 2


def test_a_server_bound_beyond_loopback_checks_only_when_told(fresh_server):
    open_server = fresh_server(host="0.0.0.0")
    assert _get(open_server, "/health", "192.168.1.5:1234").status_code == 200
    strict = fresh_server(host="0.0.0.0", allowed_hosts=("llm.example.com",))
    assert _get(strict, "/health", "llm.example.com").status_code == 200
    assert _get(strict, "/health", "evil.example").status_code == 400
    anything = fresh_server(allowed_hosts=("*",))
    assert _get(anything, "/health", "evil.example").status_code == 200


def test_host_parsing():
    assert host_name("[::1]:8080") == "[::1]" and host_name("Example.COM:80") == "example.com"
    assert host_name("::1") == "::1" and host_name("box") == "box"
    assert is_loopback("::1") and is_loopback("[::1]") and is_loopback("127.8.9.1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("::") and not is_loopback("localhost.example")
    assert host_allowed(None, "127.0.0.1", ())  # HTTP/1.0 without Host: no browser sent it
    assert not host_allowed("example.com", "localhost", ())


def _serve(args: list[str], env: dict[str, str] | None = None):
    return CliRunner().invoke(app, ["serve", "--port", "0", *args, "mistral", "-m", "unused"], env=env)


def test_allowed_hosts_option_is_validated():
    result = _serve(["--allowed-hosts", "ok.example, bad host"])
    assert result.exit_code == 2 and "--allowed-hosts 'bad host'" in result.output
    assert "Traceback" not in result.output


@pytest.mark.parametrize(("content", "expected"), [(None, "cannot read it"), ("", "one line"),
                                                  ("two\nlines\n", "one line")])
def test_a_bad_api_key_file_is_a_one_line_error(tmp_path, content, expected):
    key_file = tmp_path / "key"
    if content is not None:
        key_file.write_text(content)
    result = _serve(["--api-key-file", str(key_file)])
    assert result.exit_code == 2 and expected in result.output and "Traceback" not in result.output


def test_api_key_and_api_key_file_conflict(tmp_path):
    key_file = tmp_path / "key"
    key_file.write_text("k\n")
    result = _serve(["--api-key", "k", "--api-key-file", str(key_file)])
    assert result.exit_code == 2 and "give only one" in result.output


def test_api_key_file_and_allowed_hosts_on_a_real_process(tiny_mistral_dir, spawn, tmp_path):
    key_file = tmp_path / "key"
    key_file.write_text("from-file\n")
    # The file, on the command line, wins over the environment's key.
    server = spawn(["serve", "--port", "0", "--api-key-file", str(key_file), "--allowed-hosts", "a.example,b.example",
                    "--allowed-hosts", "c.example", "mistral", "-m", str(tiny_mistral_dir)],
                   env={"MISTRALRS_API_KEY": "from-env"})
    with pytest.raises(openai.AuthenticationError):
        server.client("from-env").models.list()
    assert server.client("from-file").models.list().data
    for host, status in (("a.example", 200), ("b.example:9", 200), ("c.example", 200), ("d.example", 400)):
        assert httpx.get(server.url + "/health", headers={"Host": host}).status_code == status, host
