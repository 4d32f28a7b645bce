"""`mistralrs serve --ray --replicas 2` as a real process on a real local Ray instance (tiny model).

One deployment serves the whole module (Ray and two replicas take a while to start); the
last test stops it with SIGTERM in the middle of a stream.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest

from tests.frontends.server.conftest import ServerProcess

pytest.importorskip("ray.serve", reason="the cluster extra (pip install -e '.[cluster]')")

KEY = "cluster-key"
MSG = [{"role": "user", "content": "Hi"}]
REPLICA = "x-mistralrs-replica"
CHATS_200 = re.compile(r'^mistralrs_requests_total\{endpoint="/v1/chat/completions",status="200"\} (\d+)$', re.M)


def test_a_replica_that_cannot_load_the_model_is_one_line(tmp_path):
    # First in the module: its own local Ray instance, started and stopped before the shared one.
    result = subprocess.run([sys.executable, "-m", "mistralrs_cli", "serve", "--ray", "--replicas", "2", "--port", "0",
                             "mistral", "-m", str(tmp_path / "missing")], capture_output=True, text=True, timeout=300)
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert result.returncode == 2 and len(errors) == 1, result.stderr
    assert re.fullmatch(r"error: replica \S+@\S+ could not start: the model did not load: model '.*missing': "
                        r"no such folder", errors[0]), errors[0]
    assert "Traceback" not in result.stderr and "listening on" not in result.stderr


@pytest.fixture(scope="module")
def cluster(tiny_mistral_dir) -> Iterator[ServerProcess]:
    """Two replicas on a local Ray instance behind one port, with an API key from the environment."""
    server = ServerProcess(["serve", "--ray", "--replicas", "2", "--port", "0", "--served-model-name", "tiny",
                            "mistral", "-m", str(tiny_mistral_dir)],
                           env={"MISTRALRS_API_KEY": KEY})
    try:
        server.wait_ready()
        yield server
    finally:
        if server.proc.poll() is None:
            server.proc.send_signal(signal.SIGTERM)  # our teardown stops the Ray instance too
            try:
                server.proc.wait(60)
            except subprocess.TimeoutExpired:
                server.proc.kill()


def _chat(client: openai.OpenAI, **kwargs) -> tuple[str, str]:
    """(the replica that answered, the greedy answer)."""
    raw = client.chat.completions.with_raw_response.create(model="tiny", messages=MSG, max_tokens=6, temperature=0,
                                                           **kwargs)
    return raw.headers[REPLICA], raw.parse().choices[0].message.content


def test_chat_stream_and_auth_as_in_single_process(cluster: ServerProcess):
    with pytest.raises(openai.AuthenticationError):
        cluster.client().chat.completions.create(model="tiny", messages=MSG, max_tokens=2)
    with pytest.raises(openai.AuthenticationError):
        cluster.client("wrong").models.list()
    client = cluster.client(KEY)
    _, answer = _chat(client)
    assert answer
    chunks = list(client.chat.completions.create(model="tiny", messages=MSG, max_tokens=6, temperature=0, stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == answer  # same weights, greedy
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["length"]


def test_the_chat_page_and_its_login_hold_across_replicas(cluster: ServerProcess):
    with httpx.Client(base_url=cluster.url) as http:
        assert 'id="api-key"' in http.get("/").text  # the login page only
        assert http.post("/ui/session", headers={"Authorization": f"Bearer {KEY}"}).status_code == 204
        # The cookie is the key's HMAC, so any replica accepts the one another set.
        replicas = set()
        for _ in range(12):
            page = http.get("/")
            assert 'id="messages"' in page.text
            replicas.add(page.headers[REPLICA])
        assert http.get("/ui/app.js").status_code == 200
    assert len(replicas) == 2


def test_requests_reach_both_replicas(cluster: ServerProcess):
    client = cluster.client(KEY)
    with ThreadPoolExecutor(4) as pool:  # concurrent: Serve routes each to the less busy replica
        answered = list(pool.map(lambda _: _chat(client), range(16)))
    assert len({replica for replica, _ in answered}) == 2, answered
    assert len({answer for _, answer in answered}) == 1  # every replica gives the same greedy answer


def _metrics_by_replica(url: str) -> dict[str, int]:
    """Each replica's count of answered chats, read from /metrics until both replicas have answered it.

    Scraped 4 at a time: Serve routes a lone request by queue lengths it cached, which may send
    every sequential scrape to the same replica for a while.
    """
    seen: dict[str, int] = {}

    def scrape(_: int) -> tuple[str, int]:
        page = httpx.get(url + "/metrics")
        found = CHATS_200.search(page.text)
        return page.headers[REPLICA], int(found.group(1)) if found else 0

    with ThreadPoolExecutor(4) as pool:
        for _ in range(50):
            seen.update(pool.map(scrape, range(4)))
            if len(seen) == 2:
                return seen
    pytest.fail(f"/metrics never reached both replicas: {seen}")


def test_metrics_are_per_replica(cluster: ServerProcess):
    before = _metrics_by_replica(cluster.url)
    client = cluster.client(KEY)
    with ThreadPoolExecutor(4) as pool:
        served = [replica for replica, _ in pool.map(lambda _: _chat(client), range(8))]
    after = _metrics_by_replica(cluster.url)
    assert {name: after[name] - before[name] for name in after} == {name: served.count(name) for name in after}


def test_joining_a_cluster_that_cannot_hold_the_replicas_is_one_line(cluster: ServerProcess, tiny_mistral_dir):
    gcs = re.search(r"on a local Ray instance at (\S+)\)", "".join(cluster.lines)).group(1)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    result = subprocess.run([sys.executable, "-m", "mistralrs_cli", "serve", "--ray", "auto", "--port", str(port),
                             "--cpus-per-replica", "10000", "mistral", "-m", str(tiny_mistral_dir)],
                            capture_output=True, text=True, timeout=120,
                            # A local instance uses token auth unless told not to; a joiner must ask for it.
                            env={**os.environ, "RAY_ADDRESS": gcs,
                                 "RAY_AUTH_MODE": os.environ.get("RAY_AUTH_MODE", "token")})
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert result.returncode == 2 and len(errors) == 1, result.stderr
    assert "cannot hold 1 replica of 10000 CPUs each" in errors[0]
    assert httpx.get(cluster.url + "/health").status_code == 200  # the running deployment is untouched


def test_sigterm_mid_stream_finishes_the_stream_and_stops_ray(cluster: ServerProcess):
    gcs_host, gcs_port = re.search(r"on a local Ray instance at (\S+):(\d+)\)", "".join(cluster.lines)).groups()
    stream = cluster.client(KEY).chat.completions.create(model="tiny", messages=MSG, max_tokens=20, stream=True,
                                                         logit_bias={"2": -100})  # no EOS: 20 tokens
    code: list[int] = []
    finishes: list[str] = []
    for i, chunk in enumerate(stream):
        if i == 0:
            threading.Thread(target=lambda: code.append(cluster.stop(signal.SIGTERM)), daemon=True).start()
        finishes += [c.finish_reason for c in chunk.choices if c.finish_reason]
    assert finishes == ["length"]
    deadline = time.monotonic() + 60
    while not code:
        assert time.monotonic() < deadline, "serve --ray did not exit:\n" + "".join(cluster.lines)
        time.sleep(0.1)
    assert code == [0], "".join(cluster.lines)
    with pytest.raises(OSError):  # the local Ray instance is gone with it
        socket.create_connection((gcs_host, int(gcs_port)), timeout=5).close()
