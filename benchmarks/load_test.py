"""Bounded load test of `mistralrs serve`: many concurrent clients, half streaming, some hanging up mid-stream.

Starts a server (the embedded default model unless told otherwise) or targets --url, sends
N requests at a fixed concurrency, then checks what the server promises:
  - no 5xx, and every request that was not deliberately dropped completes
    (plain: 200 with a finish_reason; stream: a finish_reason and `data: [DONE]`);
  - after the run the KV cache is empty, no sequence is running or waiting and no request
    is in flight (read from /metrics), so no server keeps generating for departed clients;
  - the server counted exactly the dropped streams as aborted (those that left before
    their finish_reason), and nothing else; and it stopped generating for them: the engine
    sampled at most --waste-bound tokens per dropped stream beyond what the requests got;
  - /health answers 200 throughout, each time within --health-bound seconds.
Prints p50/p99 latency, time to first token and throughput; exits 1 if a check fails.

    python benchmarks/load_test.py                          # default model, 200 requests, concurrency 32
    python benchmarks/load_test.py --spawn "serve --port 0 mistral -m ./my-model"
    python benchmarks/load_test.py --url http://127.0.0.1:1234 --requests 500
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import re
import shlex
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field

import httpx

TOPICS = ["the sea", "a lighthouse", "prime numbers", "bread", "a city at night", "rain", "chess", "a small robot",
          "volcanoes", "the moon", "autumn leaves", "a train journey", "coffee", "honeybees", "a library", "snow"]


@dataclass
class Result:
    """One request's outcome."""

    kind: str  # plain | stream | drop (a stream the client abandons)
    status: int = 0
    latency: float = 0.0
    ttft: float | None = None
    tokens: int = 0
    complete: bool = False
    finished: bool = False  # a finish_reason arrived (for a drop: before the client left)
    error: str = ""


@dataclass
class HealthProbe:
    """Polls /health during the run and keeps the worst latency and any failure."""

    worst: float = 0.0
    failures: list[str] = field(default_factory=list)
    stop: bool = False


def _body(i: int, rng: random.Random, max_tokens: int, stream: bool) -> tuple[str, dict]:
    topic = TOPICS[i % len(TOPICS)]
    tokens = rng.randint(max_tokens // 2, max_tokens)
    if i % 4 == 3:  # a quarter use the legacy completions endpoint
        return "/v1/completions", {"prompt": f"A short note about {topic}:", "max_tokens": tokens, "stream": stream,
                                   "temperature": 0.8, "seed": i}
    messages = [{"role": "user", "content": f"Write two sentences about {topic}."}]
    return "/v1/chat/completions", {"messages": messages, "max_tokens": tokens, "stream": stream,
                                    "temperature": 0.8, "seed": i, "stream_options": {"include_usage": True}}


async def _one(http: httpx.AsyncClient, i: int, kind: str, rng: random.Random, max_tokens: int) -> Result:
    path, body = _body(i, rng, max_tokens, stream=kind != "plain")
    res = Result(kind)
    start = time.perf_counter()
    try:
        if kind == "plain":
            r = await http.post(path, json=body)
            res.status = r.status_code
            if r.status_code == 200:
                data = r.json()
                res.tokens = data["usage"]["completion_tokens"]
                res.complete = all(c["finish_reason"] in ("stop", "length") for c in data["choices"])
            else:
                res.error = r.text[:200]
        else:
            async with http.stream("POST", path, json=body) as r:
                res.status = r.status_code
                finished, done, events = False, False, 0
                async for line in r.aiter_lines():
                    if not line.startswith("data: "):
                        continue
                    events += 1
                    if line == "data: [DONE]":
                        done = True
                        break
                    chunk = json.loads(line[6:])
                    if "error" in chunk:
                        res.error = chunk["error"]["message"]
                        continue
                    if res.ttft is None and any(c.get("delta", c).get("content") or c.get("text")
                                                for c in chunk["choices"]):
                        res.ttft = time.perf_counter() - start
                    finished |= any(c.get("finish_reason") for c in chunk["choices"])
                    if chunk.get("usage"):
                        res.tokens = chunk["usage"]["completion_tokens"]
                    if kind == "drop" and events >= 3:
                        break  # leaving the block closes the connection mid-stream
                res.finished = finished
                res.complete = finished and done and not res.error
    except httpx.HTTPError as e:
        res.error = f"{type(e).__name__}: {e}"
    res.latency = time.perf_counter() - start
    return res


async def _probe_health(base: str, probe: HealthProbe) -> None:
    async with httpx.AsyncClient(base_url=base, timeout=30) as http:
        while not probe.stop:
            start = time.perf_counter()
            try:
                r = await http.get("/health")
                if r.status_code != 200:
                    probe.failures.append(f"/health {r.status_code}")
            except httpx.HTTPError as e:
                probe.failures.append(f"/health {type(e).__name__}")
            probe.worst = max(probe.worst, time.perf_counter() - start)
            await asyncio.sleep(0.25)


async def run_load(base: str, requests: int, concurrency: int, drops: int, max_tokens: int, headers: dict,
                   seed: int) -> tuple[list[Result], float, HealthProbe]:
    """Send the requests; return results, wall time and the health probe."""
    rng = random.Random(seed)
    streaming = list(range(1, requests, 2))  # odd requests stream
    dropped = set(rng.sample(streaming, min(drops, len(streaming))))
    kinds = ["drop" if i in dropped else "stream" if i % 2 else "plain" for i in range(requests)]
    sem = asyncio.Semaphore(concurrency)
    limits = httpx.Limits(max_connections=concurrency + 4, max_keepalive_connections=concurrency)
    probe = HealthProbe()
    async with httpx.AsyncClient(base_url=base, timeout=600, limits=limits, headers=headers) as http:

        async def task(i: int) -> Result:
            async with sem:
                return await _one(http, i, kinds[i], random.Random(seed + i), max_tokens)

        health = asyncio.create_task(_probe_health(base, probe))
        start = time.perf_counter()
        results = await asyncio.gather(*(task(i) for i in range(requests)))
        wall = time.perf_counter() - start
        probe.stop = True
        await health
    return list(results), wall, probe


def _metrics(base: str, headers: dict) -> dict[str, float]:
    text = httpx.get(base + "/metrics", headers=headers, timeout=30).text
    return {ln.split(" ")[0]: float(ln.split(" ")[1]) for ln in text.splitlines() if ln and not ln.startswith("#")}


def wait_drained(base: str, headers: dict, timeout: float = 30.0) -> dict[str, float]:
    """/metrics once nothing runs and no KV block is held (or after `timeout`)."""
    deadline = time.monotonic() + timeout
    while True:
        m = _metrics(base, headers)
        idle = m["mistralrs_kv_cache_blocks_used"] == 0 and m["mistralrs_running_sequences"] == 0 \
            and m["mistralrs_waiting_sequences"] == 0 and m["mistralrs_requests_in_flight"] == 0
        if idle or time.monotonic() > deadline:
            return m
        time.sleep(0.1)


def _pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def check(results: list[Result], probe: HealthProbe, before: dict[str, float], after: dict[str, float],
          health_bound: float, waste_bound: int = 8) -> list[str]:
    """What the server got wrong in this run (empty when every check passed)."""
    kept = [r for r in results if r.kind != "drop"]
    failed = []
    if n := sum(r.status >= 500 for r in results):
        failed.append(f"{n} answers with a 5xx status")
    if n := sum(not (r.status == 200 and r.complete) for r in kept):
        failed.append(f"{n} requests (not dropped) did not complete")
    for name in ("kv_cache_blocks_used", "running_sequences", "waiting_sequences", "requests_in_flight"):
        value = after.get(f"mistralrs_{name}", -1)
        if value != 0:
            failed.append(f"{name} is {value:.0f} after the run, not 0")
    name = "mistralrs_requests_aborted_total"
    aborted = after.get(name, 0) - before.get(name, 0)
    # A stream the client left before its finish_reason must be aborted; nothing else may be.
    expected = sum(r.kind == "drop" and not r.finished for r in results)
    if aborted != expected:
        failed.append(f"{aborted:.0f} requests aborted, expected {expected} (the streams dropped before finishing)")
    grew = {k: after.get(k, 0) - before.get(k, 0)
            for k in ("mistralrs_engine_generated_tokens_total", "mistralrs_completion_tokens_total")}
    wasted = grew["mistralrs_engine_generated_tokens_total"] - grew["mistralrs_completion_tokens_total"]
    if wasted > waste_bound * max(expected, 1):
        failed.append(f"the engine sampled {wasted:.0f} tokens nobody received: it kept generating for departed clients")
    if probe.failures:
        failed.append(f"/health failed {len(probe.failures)} times: {probe.failures[0]}")
    if probe.worst > health_bound:
        failed.append(f"/health took {probe.worst:.2f} s under load (bound {health_bound:.2f} s)")
    return failed


def report(results: list[Result], wall: float, probe: HealthProbe, before: dict[str, float],
           after: dict[str, float], health_bound: float = 1.0, waste_bound: int = 8) -> bool:
    """Print the summary and every failed check; True when every check passed."""
    kept = [r for r in results if r.kind != "drop"]
    server_errors = [r for r in results if r.status >= 500]
    incomplete = [r for r in kept if not (r.status == 200 and r.complete)]
    tokens = sum(r.tokens for r in kept)
    print(f"requests: {len(results)} ({sum(r.kind == 'plain' for r in results)} plain, "
          f"{sum(r.kind == 'stream' for r in results)} streamed, {sum(r.kind == 'drop' for r in results)} "
          f"dropped mid-stream) in {wall:.1f} s")
    statuses: dict[int, int] = {}
    for r in results:
        statuses[r.status] = statuses.get(r.status, 0) + 1
    print(f"status codes: {dict(sorted(statuses.items()))}; 5xx: {len(server_errors)}; "
          f"incomplete (not dropped): {len(incomplete)}")
    for kind in ("plain", "stream"):
        lat = [r.latency for r in results if r.kind == kind]
        print(f"latency {kind:6s}: p50 {_pct(lat, 0.5):.2f} s  p99 {_pct(lat, 0.99):.2f} s")
    ttft = [r.ttft for r in results if r.kind == "stream" and r.ttft is not None]
    print(f"time to first token (streams): p50 {_pct(ttft, 0.5):.2f} s  p99 {_pct(ttft, 0.99):.2f} s")
    print(f"throughput: {tokens / wall:.1f} completion tok/s, {len(kept) / wall:.2f} completed req/s")
    print(f"/health during load: worst {probe.worst * 1000:.0f} ms, failures {len(probe.failures)}")
    used = after.get("mistralrs_kv_cache_blocks_used", -1)
    aborted = after.get("mistralrs_requests_aborted_total", 0) - before.get("mistralrs_requests_aborted_total", 0)
    print(f"after: kv blocks used {used:.0f}/{after.get('mistralrs_kv_cache_blocks_total', 0):.0f}, running "
          f"{after.get('mistralrs_running_sequences', -1):.0f}, in flight "
          f"{after.get('mistralrs_requests_in_flight', -1):.0f}, aborted during the run {aborted:.0f}")
    for r in (server_errors + incomplete)[:5]:
        print(f"  e.g. {r.kind} status {r.status}: {r.error}", file=sys.stderr)
    failed = check(results, probe, before, after, health_bound, waste_bound)
    for line in failed:
        print(f"FAILED: {line}", file=sys.stderr)
    return not failed


def spawn(args: str) -> tuple[subprocess.Popen, str]:
    """Start `python -m mistralrs_cli ARGS` and wait until /health is 200; returns (process, base URL)."""
    proc = subprocess.Popen([sys.executable, "-m", "mistralrs_cli", *shlex.split(args)], stderr=subprocess.PIPE,
                            text=True)
    assert proc.stderr is not None
    for line in proc.stderr:
        sys.stderr.write(line)
        found = re.search(r"listening on (http://[^\s/]+)/v1", line)
        if found:
            base = found.group(1)
            break
    else:
        raise SystemExit("the server did not start")
    threading.Thread(target=lambda: [sys.stderr.write(ln) for ln in proc.stderr], daemon=True).start()
    deadline = time.monotonic() + 600
    while True:
        try:
            if httpx.get(base + "/health").status_code == 200:
                return proc, base
        except httpx.HTTPError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit("the model did not load")
        time.sleep(0.2)


def main() -> None:
    """Parse options, run the load, print the report; exit 1 on a failed check."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", help="target a running server instead of starting one")
    ap.add_argument("--spawn", default="--port 0", help="mistralrs arguments for the server to start")
    ap.add_argument("--requests", type=int, default=200)
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--drops", type=int, default=20, help="streams the client abandons after 3 events")
    ap.add_argument("--max-tokens", type=int, default=48, help="each request asks for between half this and this")
    ap.add_argument("--api-key", default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--health-bound", type=float, default=1.0,
                    help="seconds /health may take under load (worst measured on 2 cores: 79 ms)")
    ap.add_argument("--waste-bound", type=int, default=8,
                    help="tokens the engine may sample per dropped stream after its client left")
    a = ap.parse_args()
    headers = {"Authorization": f"Bearer {a.api_key}"} if a.api_key else {}
    proc, base = (None, a.url.rstrip("/")) if a.url else spawn(a.spawn)
    try:
        before = _metrics(base, headers)
        results, wall, probe = asyncio.run(run_load(base, a.requests, a.concurrency, a.drops, a.max_tokens, headers,
                                                    a.seed))
        ok = report(results, wall, probe, before, wait_drained(base, headers), a.health_bound,
                    a.waste_bound)
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(60)
    print("PASS" if ok else "FAIL")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
