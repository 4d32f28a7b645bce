"""Loading (503), client disconnects, engine errors mid-stream, a full queue, shutdown, and /metrics."""

from __future__ import annotations

import json
import threading
import time

import httpx
import openai
import pytest

from mistralrs_cli.engine import Engine, EngineConfig
from mistralrs_cli.errors import ConfigError
from tests.frontends.server.conftest import LiveServer, slow_down

MSG = [{"role": "user", "content": "Hi"}]
NO_EOS = {"logit_bias": {"2": -100}}  # the tiny model's EOS id: sampled requests then run to max_tokens


def _gate(live: LiveServer) -> threading.Event:
    """Hold every engine step until the returned event is set (requests stay admitted, mid-flight)."""
    runner = live.state.engine.core.runner
    run, gate = runner.run, threading.Event()

    def gated_run(*args, **kwargs):
        gate.wait(60)
        return run(*args, **kwargs)

    runner.run = gated_run
    return gate


def _events(lines) -> list[str]:
    return [line[len("data: "):] for line in lines if line.startswith("data: ")]


def _stream_in_thread(live: LiveServer, body: dict, out: list[str], first: threading.Event | None = None) -> threading.Thread:
    def run() -> None:
        with httpx.Client(base_url=live.url, timeout=60) as http, \
                http.stream("POST", "/v1/chat/completions", json={**body, "stream": True}) as r:
            for line in r.iter_lines():
                out.append(line)
                if first is not None and line.startswith("data: "):
                    first.set()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def _wait(predicate, timeout: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def test_503_while_loading_then_ready(fresh_server, tiny_loaded):
    gate = threading.Event()
    live = fresh_server(load=lambda: gate.wait(20) and Engine(tiny_loaded, EngineConfig(max_seqs=4)))
    with live.http() as http:
        health = http.get("/health")
        assert health.status_code == 503 and health.json()["status"] == "loading"
        assert "mistralrs_model_loaded 0" in http.get("/metrics").text
    with pytest.raises(openai.InternalServerError) as e:
        live.client().chat.completions.create(model="tiny", messages=MSG, max_tokens=2)
    assert e.value.status_code == 503 and e.value.code == "model_loading"
    gate.set()
    with live.http() as http:
        _wait(lambda: http.get("/health").status_code == 200, what="the model to load")
    assert live.client().chat.completions.create(model="tiny", messages=MSG, max_tokens=2,
                                                temperature=0).usage.completion_tokens == 2


def test_failed_load_is_reported(fresh_server):
    def load():
        raise ConfigError("config.json has no hidden_size")

    live = fresh_server(load=load)
    with live.http() as http:
        _wait(lambda: http.get("/health").json()["status"] == "failed", what="the load to fail")
        r = http.get("/v1/models")
    assert r.status_code == 503 and "hidden_size" in r.json()["error"]["message"]
    assert isinstance(live.state.load_error, ConfigError)


def test_client_disconnects_abort_their_requests_only(fresh_server, tmp_path):
    log_file = tmp_path / "log.jsonl"
    live = fresh_server(log_file=log_file)
    slow_down(live, 0.03)
    other: list = []
    bystander = threading.Thread(target=lambda: other.append(
        live.client().chat.completions.create(model="tiny", messages=MSG, max_tokens=30, temperature=0)))
    bystander.start()
    # A stream read for a few events, then dropped.
    with httpx.Client(base_url=live.url, timeout=60) as http, \
            http.stream("POST", "/v1/chat/completions",
                        json={"messages": MSG, "max_tokens": 200, "stream": True, "user": "leaver", **NO_EOS}) as r:
        assert len(_events(line for _, line in zip(range(6), r.iter_lines(), strict=False))) >= 2
    # A plain request whose client gives up.
    with pytest.raises(httpx.ReadTimeout), httpx.Client(base_url=live.url, timeout=0.5) as http:
        http.post("/v1/chat/completions", json={"messages": MSG, "max_tokens": 200, "user": "impatient", **NO_EOS})
    bystander.join(30)
    assert other and other[0].usage.completion_tokens == 30 and other[0].choices[0].finish_reason == "length"
    live.wait_idle(timeout=60)
    assert live.state.metrics.aborted == 2
    # Both 200-token requests were stopped, not run out: at 30 ms a step, 200 tokens need 6 s of
    # the client being gone, while each left after a few tokens (a count, not a clock, is checked).
    assert live.state.engine.stats().generated_tokens < 30 + 200
    _wait(lambda: len(log_file.read_text().splitlines()) >= 3, what="log lines")
    records = {r["request"]["user"]: r for r in map(json.loads, log_file.read_text().splitlines())
               if isinstance(r["request"], dict) and r["request"].get("user")}
    assert records["leaver"]["status"] == 200 and records["leaver"]["response"]["aborted"]
    assert records["impatient"]["status"] == 499


def test_engine_error_mid_stream_ends_with_error_event_and_done(fresh_server):
    live = fresh_server()
    runner = live.state.engine.core.runner
    run, steps = runner.run, []

    def failing_run(*args, **kwargs):
        steps.append(1)
        if len(steps) > 3:
            raise RuntimeError("simulated device failure")
        return run(*args, **kwargs)

    runner.run = failing_run
    lines: list[str] = []
    # NO_EOS: a sampled EOS within the first three tokens would end the stream before the failure.
    _stream_in_thread(live, {"messages": MSG, "max_tokens": 50, **NO_EOS}, lines).join(20)
    events = _events(lines)
    assert events[-1] == "[DONE]"
    error = json.loads(events[-2])["error"]
    assert error["type"] == "server_error" and "simulated device failure" in error["message"]
    steps.clear()
    with pytest.raises(openai.InternalServerError) as e:  # the same failure, not streamed: a 500
        live.client().chat.completions.create(model="tiny", messages=MSG, max_tokens=50, extra_body=NO_EOS)
    assert e.value.status_code == 500
    runner.run = run  # the engine recovers: later requests are served
    assert live.client().chat.completions.create(model="tiny", messages=MSG, max_tokens=3,
                                                temperature=0).usage.completion_tokens == 3
    live.wait_idle()


def test_full_queue_gets_429_and_health_stays_fast(fresh_server):
    live = fresh_server(max_queue=2)
    gate = _gate(live)  # both requests stay in flight until the checks are done, however slow the machine
    outs: list[list[str]] = [[], []]
    threads = [_stream_in_thread(live, {"messages": MSG, "max_tokens": 25}, out) for out in outs]
    _wait(lambda: live.state.in_flight == 2, what="two requests in flight")
    with pytest.raises(openai.RateLimitError) as e:
        live.client().chat.completions.create(model="tiny", messages=MSG, max_tokens=2)
    assert e.value.code == "queue_full"
    with live.http() as http:  # /health answers while the queue is full (no wall-clock bound: machines are noisy)
        assert http.get("/health").json()["in_flight"] == 2
    gate.set()
    for thread in threads:
        thread.join(30)
    assert all(_events(out)[-1] == "[DONE]" for out in outs)
    live.wait_idle()


def test_shutdown_drains_short_requests_and_aborts_long_ones(fresh_server):
    # Deterministic on any machine: a step in which every request already streams waits
    # until a new request is queued or the drain begins, so both are mid-stream at the
    # drain; then the short one runs its last few steps, and once it is done each step
    # takes 0.5 s, so the long one's ~190 remaining tokens can never fit the 5 s drain.
    live = fresh_server(drain_timeout=5)
    state, engine = live.state, live.state.engine
    run = engine.core.runner.run

    def staged_run(chunks, *args, **kwargs):
        deadline = time.monotonic() + 30
        if all(c.seq.num_output >= 1 for c in chunks):
            while not state.draining and engine._inbox.empty() and time.monotonic() < deadline:
                time.sleep(0.01)
        if state.draining and all(c.seq.request.max_tokens == 200 for c in chunks):
            time.sleep(0.5)
        return run(chunks, *args, **kwargs)

    engine.core.runner.run = staged_run
    short, long_, started_short, started_long = [], [], threading.Event(), threading.Event()
    threads = [_stream_in_thread(live, {"messages": MSG, "max_tokens": 200, **NO_EOS}, long_, started_long)]
    assert started_long.wait(30)
    threads.append(_stream_in_thread(live, {"messages": MSG, "max_tokens": 10, **NO_EOS}, short, started_short))
    assert started_short.wait(30)
    live.stop()  # as on SIGTERM
    for thread in threads:
        thread.join(30)
    for out, finish in ((short, "length"), (long_, "stop")):
        events = _events(out)
        assert events[-1] == "[DONE]"
        finishes = [c["finish_reason"] for e in events[:-1] for c in json.loads(e)["choices"] if c["finish_reason"]]
        assert finishes == [finish]


def test_metrics_page(server: LiveServer):
    list(server.client().chat.completions.create(model="tiny", messages=MSG, max_tokens=3, stream=True))
    server.wait_idle()
    with server.http() as http:
        text = http.get("/metrics").text
    values = {line.split(" ")[0]: float(line.split(" ")[1]) for line in text.splitlines() if not line.startswith("#")}
    assert values['mistralrs_requests_total{endpoint="/v1/chat/completions",status="200"}'] >= 1
    assert values["mistralrs_completion_tokens_total"] >= 3
    assert values["mistralrs_kv_cache_blocks_used"] == 0 and values["mistralrs_kv_cache_blocks_total"] > 0
    assert values["mistralrs_running_sequences"] == 0 and values["mistralrs_waiting_sequences"] == 0
    assert values['mistralrs_time_to_first_token_seconds_count{endpoint="/v1/chat/completions"}'] >= 1
    inf = values['mistralrs_request_duration_seconds_bucket{endpoint="/v1/chat/completions",le="+Inf"}']
    assert inf == values['mistralrs_request_duration_seconds_count{endpoint="/v1/chat/completions"}'] >= 1
