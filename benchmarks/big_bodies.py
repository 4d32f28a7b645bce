"""/health latency while `mistralrs serve` handles request bodies that cannot fit the context.

Starts a server (the embedded default model unless --url is given), then sends, one after the other,
a ~7.8 MB valid chat body and one just under the 8 MiB body limit, while a second client polls
/health every 20 ms. Prints, for each body, its status, how long its answer took and the worst
/health latency seen meanwhile. Exits 1 if a body is not answered 400 (200 with --truncate) or /health never answered meanwhile.

    python benchmarks/big_bodies.py
    python benchmarks/big_bodies.py --truncate     # no length bound: both bodies are tokenized whole
    python benchmarks/big_bodies.py --url http://127.0.0.1:1234
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import threading
import time

import httpx

LIMIT = 8 * 1024 * 1024  # the server's default --max-body-bytes


def chat_body(model: str, size: int) -> bytes:
    """A valid chat request of exactly `size` bytes (one user message of plain words)."""
    head = b'{"model": ' + json.dumps(model).encode() + b', "max_tokens": 1, "messages": [{"role": "user", "content": "'
    tail = b'"}]}'
    filler = (b"hello world " * (size // 12 + 1))[: size - len(head) - len(tail)]
    return head + filler + tail


def probe(url: str, body: bytes) -> tuple[int, float, float, int]:
    """(status, seconds to the answer, worst /health latency meanwhile, /health answers meanwhile)."""
    done = threading.Event()
    worst, count = 0.0, 0

    def poll() -> None:
        nonlocal worst, count
        with httpx.Client(base_url=url, timeout=60) as c:
            while not done.is_set():
                t0 = time.perf_counter()
                if c.get("/health").status_code != 200:
                    return  # shutting down
                worst, count = max(worst, time.perf_counter() - t0), count + 1
                time.sleep(0.02)

    poller = threading.Thread(target=poll)
    poller.start()
    t0 = time.perf_counter()
    with httpx.Client(base_url=url, timeout=900) as c:
        status = c.post("/v1/chat/completions", content=body, headers={"content-type": "application/json"}).status_code
    seconds = time.perf_counter() - t0
    done.set()
    poller.join()
    return status, seconds, worst, count


def spawn(truncate: bool) -> tuple[subprocess.Popen, str]:
    """`mistralrs [--truncate-sequence] serve --port 0 default`; its URL once it says so."""
    flags = ["--truncate-sequence"] if truncate else []
    proc = subprocess.Popen([sys.executable, "-m", "mistralrs_cli", *flags, "serve", "--port", "0", "-q", "default"],
                            stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    for line in proc.stderr:
        found = re.search(r"http://127\.0\.0\.1:\d+", line)
        if found:
            threading.Thread(target=proc.stderr.read, daemon=True).start()  # keep draining
            url = found.group(0)
            for _ in range(600):
                try:
                    if httpx.get(url + "/health").status_code == 200:
                        return proc, url
                except httpx.HTTPError:
                    pass
                time.sleep(0.1)
    proc.kill()
    raise SystemExit("the server did not start")


def main() -> int:
    """Run both bodies and print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", help="a running server (default: start `serve default`)")
    parser.add_argument("--truncate", action="store_true",
                        help="serve with --truncate-sequence: the bodies are tokenized, then answered 200")
    args = parser.parse_args()
    proc, url = (None, args.url) if args.url else spawn(args.truncate)
    want = 200 if args.truncate else 400
    ok = True
    try:
        model = httpx.get(url + "/v1/models").json()["data"][0]["id"]
        for name, size in (("7.8 MB", 7_800_000), ("limit-1KiB", LIMIT - 1024)):
            status, seconds, worst, count = probe(url, chat_body(model, size))
            print(json.dumps({"body": name, "bytes": size, "status": status, "answer_s": round(seconds, 3),
                              "health_worst_s": round(worst, 3), "health_answers": count}))
            ok &= status == want and count > 0
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(30)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
