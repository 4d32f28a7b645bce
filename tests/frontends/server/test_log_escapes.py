"""Every answered request reaches the --log request log: odd text, undecodable bodies, aborted work."""

from __future__ import annotations

import json
import socket
import threading
import time

import httpx

from mistralrs_cli.frontends.request_log import RequestLog
from tests.frontends.server.conftest import LiveServer

MSG = [{"role": "user", "content": "Hi"}]
NO_EOS = {"logit_bias": {"2": -100}}  # the tiny model's EOS id: requests run to max_tokens


def _records(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _wait_for_record(path, match, what: str) -> dict:
    """The first log record `match` accepts (the line is written just after the response ends)."""
    deadline = time.monotonic() + 10
    while True:
        found = [r for r in _records(path) if match(r)]
        if found:
            return found[0]
        assert time.monotonic() < deadline, f"no log record for {what}"
        time.sleep(0.02)


def test_a_lone_surrogate_in_an_ignored_field_is_answered_and_logged(server: LiveServer, request_log):
    body = json.dumps({"model": "tiny", "messages": MSG, "max_tokens": 2, "temperature": 0,
                       "user": "surrogate-probe", "metadata": {"foo": "\ud800"}})  # ensure_ascii: sent as the escape \ud800
    assert "\\ud800" in body
    with server.http() as http:
        r = http.post("/v1/chat/completions", content=body, headers={"content-type": "application/json"})
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 2
    record = _wait_for_record(request_log, lambda r: isinstance(r["request"], dict)
                              and r["request"].get("user") == "surrogate-probe", "the surrogate request")
    assert record["status"] == 200 and record["request"]["metadata"]["foo"] == "\ud800"  # escaped in the file, read back whole
    assert record["response"]["usage"]["completion_tokens"] == 2


def test_a_body_nested_too_deeply_to_parse_gets_400_and_a_log_line(server: LiveServer, request_log):
    deep = "[" * 100_000
    nested = '{"messages": [], "user": "deep-probe", "foo": ' + "[" * 100_000 + "]" * 100_000 + "}"
    with server.http() as http:
        for body in (deep, nested):
            r = http.post("/v1/chat/completions", content=body, headers={"content-type": "application/json"})
            assert r.status_code == 400, r.text
            assert "nested too deeply" in r.json()["error"]["message"]
            assert r.json()["error"]["type"] == "invalid_request_error"
        assert http.get("/health").status_code == 200  # the server is unharmed
    for body in (deep, nested):
        record = _wait_for_record(request_log, lambda r, b=body: r["request"] == b, "the deep body")
        assert record["status"] == 400 and record["path"] == "/v1/chat/completions"
        assert "nested too deeply" in record["response"]["error"]["message"]


def test_a_record_that_cannot_be_serialized_is_still_written(tmp_path):
    log = RequestLog(tmp_path / "log.jsonl")
    loop: list = []
    loop.append(loop)  # circular: json.dumps raises ValueError
    log.write({"path": "/v1/completions", "status": 200, "request": loop, "text": "\udcff"})
    log.close()
    [record] = _records(tmp_path / "log.jsonl")
    assert record == {"path": "/v1/completions", "status": 200, "request": {"unloggable": "list"}, "text": "\udcff"}


def _raw_post(live: LiveServer, body: dict) -> socket.socket:
    """A POST sent over a bare socket, so the test decides exactly when the client leaves."""
    port = int(live.url.rsplit(":", 1)[1])
    data = json.dumps(body).encode()
    sock = socket.create_connection(("127.0.0.1", port))
    sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                 b"Content-Length: " + str(len(data)).encode() + b"\r\n\r\n" + data)
    return sock


def _gate_after(live: LiveServer, steps: int) -> threading.Event:
    """Hold the engine at its `steps`-th step until the returned event is set (a deterministic pause)."""
    runner = live.state.engine.core.runner
    run, count, gate = runner.run, [0], threading.Event()

    def gated_run(*args, **kwargs):
        count[0] += 1
        if count[0] >= steps:
            gate.wait(60)
        return run(*args, **kwargs)

    runner.run = gated_run
    return gate


def _wait(predicate, what: str) -> None:
    deadline = time.monotonic() + 30
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def test_an_aborted_request_logs_the_tokens_it_generated(fresh_server, tmp_path):
    log_file = tmp_path / "log.jsonl"
    live = fresh_server(log_file=log_file)
    for stream in (False, True):
        user = f"leaver-{'stream' if stream else 'plain'}"
        gate = _gate_after(live, 7)  # the prompt step, then 5 tokens, then the engine waits
        sock = _raw_post(live, {"model": "tiny", "messages": MSG, "max_tokens": 100, "user": user,
                                "stream": stream, **NO_EOS})
        _wait(lambda: sum(sum(t.generated.values()) for t in list(live.state.tickets)) >= 5, "5 tokens")
        sock.close()
        _wait(lambda: live.state.in_flight == 0, "the server to see the client leave")
        gate.set()
        live.wait_idle(timeout=30)
        record = _wait_for_record(log_file, lambda r, u=user: isinstance(r["request"], dict)
                                  and r["request"].get("user") == u, user)
        assert record["status"] == (200 if stream else 499)
        response = record["response"]
        assert response["aborted"] and response["usage"]["completion_tokens"] >= 5, response
        assert response["usage"]["prompt_tokens"] > 0 and response["choices"][0]["text"]
    assert live.state.metrics.aborted == 2


def test_a_refused_request_is_logged(server: LiveServer, request_log):
    with httpx.Client(base_url=server.url, timeout=60) as http:
        r = http.post("/v1/chat/completions", content=b"\xff\xfe not json", headers={"content-type": "application/json"})
    assert r.status_code == 400
    record = _wait_for_record(request_log, lambda r: r["request"] == "\ufffd\ufffd not json", "the bad body")
    assert record["status"] == 400
