"""Request bodies far larger than the context: refused before any tokenizing, and /health keeps
answering while a long prompt is tokenized (issue 12: one 7.8 MB body froze the server for 10 s).

No wall-clock bounds: the bodies that cannot fit must never reach the tokenizer (a spy around the
real encode counts calls), and /health answers are counted while the real encode is running.
"""

from __future__ import annotations

import json
import threading

import httpx

from mistralrs_cli.engine import EngineConfig
from mistralrs_cli.frontends.options import ServeOptions

DEFAULT_LIMIT = ServeOptions(host="127.0.0.1", port=0).max_body_bytes


def chat_body(size: int, max_tokens: int = 1) -> bytes:
    """A valid chat request of exactly `size` bytes: one user message of plain words."""
    head = b'{"model": "tiny", "max_tokens": %d, "messages": [{"role": "user", "content": "' % max_tokens
    tail = b'"}]}'
    filler = (b"hello world " * (size // 12 + 1))[: size - len(head) - len(tail)]
    body = head + filler + tail
    assert len(body) == size and json.loads(body)
    return body


class EncodeSpy:
    """Wraps the real TextTokenizer.encode: counts calls and marks when one is running."""

    def __init__(self, real) -> None:
        self.real = real
        self.calls = 0
        self.entered = threading.Event()
        self.left = threading.Event()

    def __call__(self, *args, **kwargs):
        self.calls += 1
        self.entered.set()
        try:
            return self.real(*args, **kwargs)
        finally:
            self.left.set()

    def running(self) -> bool:
        return self.entered.is_set() and not self.left.is_set()


class HealthProbe:
    """Polls /health until stopped; counts answers, and those that arrived while `busy()` held."""

    def __init__(self, url: str, busy) -> None:
        self.url, self.busy = url, busy
        self.answers = self.during = 0
        self.statuses: set[int] = set()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._poll, daemon=True)
        self.thread.start()

    def _poll(self) -> None:
        with httpx.Client(base_url=self.url, timeout=60) as c:
            while not self.stop.is_set():
                status = c.get("/health").status_code
                self.statuses.add(status)
                self.answers += 1
                self.during += self.busy()

    def finish(self) -> None:
        self.stop.set()
        self.thread.join(60)


def post(live, body: bytes) -> httpx.Response:
    with live.http() as c:
        return c.post("/v1/chat/completions", content=body, headers={"content-type": "application/json"})


def test_bodies_that_cannot_fit_are_refused_before_tokenizing(fresh_server, tiny_loaded, monkeypatch):
    live = fresh_server()  # the default 8 MiB body limit
    spy = EncodeSpy(tiny_loaded.tokenizer.encode)
    monkeypatch.setattr(tiny_loaded.tokenizer, "encode", spy)
    probe = HealthProbe(live.url, spy.running)
    try:
        for size in (7_800_000, DEFAULT_LIMIT - 1024):  # the body, and one just under the limit
            r = post(live, chat_body(size))
            assert r.status_code == 400, r.text
            message = r.json()["error"]["message"]
            assert message.startswith("the prompt has at least ") and "context of 256" in message, message
            assert "\n" not in message
    finally:
        probe.finish()
    assert spy.calls == 0  # refused by length alone: the tokenizer never saw them
    assert probe.answers > 0 and probe.statuses == {200}
    r = post(live, chat_body(200, max_tokens=2))  # and the server still answers a request that fits
    assert r.status_code == 200 and spy.calls == 1


def test_health_answers_while_a_long_prompt_is_tokenized(fresh_server, tiny_loaded, monkeypatch):
    # --truncate-sequence keeps the end of any prompt, so nothing can be refused by length:
    # the whole body just under the limit is tokenized, and /health must answer meanwhile.
    limit = 2 << 20
    live = fresh_server(max_body_bytes=limit, engine_config=EngineConfig(max_seqs=8, truncate_sequence=True))
    spy = EncodeSpy(tiny_loaded.tokenizer.encode)
    monkeypatch.setattr(tiny_loaded.tokenizer, "encode", spy)
    probe = HealthProbe(live.url, spy.running)
    try:
        r = post(live, chat_body(limit - 1024))
    finally:
        probe.finish()
    assert r.status_code == 200, r.text
    assert r.json()["usage"]["prompt_tokens"] == 255  # truncated to the context less max_tokens
    assert spy.calls == 1 and probe.statuses == {200}
    # An encode that held the GIL (tokenizers' plain encode: ~1 s here) let no /health through.
    assert probe.during >= 5, (probe.during, probe.answers)
