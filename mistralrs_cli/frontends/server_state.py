"""What the running server knows: its settings, the engine (once loaded), the admission queue, metrics.

The model loads in a background thread so the server answers (503) while it loads. Each
HTTP request that reaches the engine holds a Ticket: its queue slots, its live streams and
what it produced, so a disconnect, an error or a shutdown always releases what it held.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from mistralrs_cli.engine import Delta, Engine, RequestStream
from mistralrs_cli.frontends.options import ServeOptions
from mistralrs_cli.frontends.server_errors import SERVER, ApiError
from mistralrs_cli.frontends.server_metrics import Metrics

log = logging.getLogger(__name__)


class ServerState:
    """Shared by every route; mutated only from the event loop, except the engine handoff."""

    def __init__(self, config: ServeOptions) -> None:
        self.config = config
        self.served: tuple[str, ...] = config.served_names or (config.model_name,)
        self.model_name = self.served[0]  # what responses report
        self.aliases = set(config.model_aliases)  # plus the loaded model's display name, once loaded
        self.created = int(time.time())
        self.engine: Engine | None = None  # set by the loading thread (one atomic assignment)
        self.load_error: BaseException | None = None
        self.draining = False
        self.metrics = Metrics()
        self.tickets: set[Ticket] = set()
        self.in_flight = 0  # engine requests held by tickets
        self.request_log: Any = None  # server_http.RequestLog when --log is given

    # --- loading ---
    def start_loading(self, load: Callable[[], Engine], on_failure: Callable[[], None] = lambda: None) -> threading.Thread:
        """Build the engine in a daemon thread; on failure keep the error and call `on_failure`."""

        def run() -> None:
            try:
                engine = load()
            except BaseException as e:  # any failure: kept, and re-raised by run_serve after the server stops
                self.load_error = e
                log.error("loading the model failed: %s", e)
                on_failure()
                return
            if not self.config.served_names:
                self.served = (engine.loaded.name,)
                self.model_name = engine.loaded.name
            self.aliases.add(engine.loaded.name)
            self.engine = engine

        thread = threading.Thread(target=run, name="mistralrs-load", daemon=True)
        thread.start()
        return thread

    @property
    def status(self) -> str:
        """loading | ok | draining | failed."""
        if self.load_error is not None:
            return "failed"
        if self.engine is None:
            return "loading"
        return "draining" if self.draining else "ok"

    def require_engine(self) -> Engine:
        """The engine, or a 503 while loading, after a failed load, or while shutting down."""
        if self.draining:
            raise ApiError(503, "the server is shutting down", SERVER, code="shutting_down")
        if self.engine is None:
            if self.load_error is not None:
                raise ApiError(503, f"the model failed to load: {self.load_error}", SERVER, code="model_load_failed")
            raise ApiError(503, "the model is still loading; retry shortly", SERVER, code="model_loading",
                           headers={"Retry-After": "1"})
        return self.engine

    def resolve_model(self, requested: str | None) -> str:
        """The served name a request's `model` names (missing: the first), or 404 model_not_found."""
        if not requested:
            return self.model_name
        if requested in self.served:
            return requested
        if requested in self.aliases:
            return self.model_name
        served = ", ".join(repr(n) for n in self.served)
        raise ApiError(404, f"the model {requested!r} does not exist on this server (it serves {served})",
                       param="model", code="model_not_found")

    # --- admission ---
    def admit(self, count: int, endpoint: str, info: dict[str, Any]) -> Ticket:
        """Reserve `count` engine requests, or 429 when the queue is full."""
        if count > self.config.max_queue:
            raise ApiError(400, f"{count} prompts in one request; this server takes at most {self.config.max_queue}",
                           param="prompt")
        if self.in_flight + count > self.config.max_queue:
            raise ApiError(429, f"the server is busy ({self.in_flight} requests queued, limit "
                           f"{self.config.max_queue}); retry shortly", "rate_limit_error", code="queue_full",
                           headers={"Retry-After": "1"})
        self.in_flight += count
        ticket = Ticket(self, count, endpoint, info)
        self.tickets.add(ticket)
        return ticket

    def begin_drain(self) -> None:
        """Refuse new work; abort whatever is still running after `drain_timeout` seconds."""
        if self.draining:
            return
        self.draining = True
        # A normal shutdown: a plain line, not a warning.
        waiting = f": waiting up to {self.config.drain_timeout:.0f} s for {self.in_flight} requests" if self.in_flight else ""
        print(f"shutting down{waiting}", file=sys.stderr, flush=True)
        timer = threading.Timer(self.config.drain_timeout, self.abort_all)
        timer.daemon = True
        timer.start()

    def abort_all(self) -> None:
        """Abort every in-flight engine request (their streams end normally, with [DONE])."""
        engine = self.engine
        if engine is None:
            return
        for ticket in list(self.tickets):
            for stream in list(ticket.streams):
                engine.abort(stream.request_id)  # thread-safe: a message to the engine thread

    def close(self) -> None:
        """Stop the engine thread (aborting anything left) and close the request log."""
        if self.engine is not None:
            self.engine.shutdown()
        if self.request_log is not None:
            self.request_log.close()


class Ticket:
    """One HTTP request's engine requests: queue slots, live streams, output for metrics and the log."""

    def __init__(self, state: ServerState, slots: int, endpoint: str, info: dict[str, Any]) -> None:
        self.state, self.slots, self.endpoint, self.info = state, slots, endpoint, info
        self.started = info.get("started", time.perf_counter())
        self.streams: list[RequestStream] = []
        self.ended: set[int] = set()  # stream positions whose last delta (with usage) arrived
        self.aborted: set[int] = set()  # stream positions with a choice that ended by abort
        self.texts: dict[tuple[int, int], str] = {}
        self.finish: dict[tuple[int, int], str | None] = {}
        self.prompt_tokens = self.completion_tokens = 0
        self.generated: dict[int, int] = {}  # tokens seen per stream position, for streams that never end
        self.first_token_at: float | None = None
        self.failed = False  # the engine raised: unfinished streams are errors, not aborts
        self.closed = False

    def delta(self, position: int, d: Delta) -> None:
        """Account one delta of stream `position`."""
        if self.first_token_at is None and d.token_ids:
            self.first_token_at = time.perf_counter()
            self.state.metrics.ttft.observe(self.endpoint, self.first_token_at - self.started)
        self.generated[position] = self.generated.get(position, 0) + len(d.token_ids)
        key = (position, d.index)
        self.texts[key] = self.texts.get(key, "") + d.text
        if d.finish_reason is not None:
            self.finish[key] = d.finish_reason
            if d.finish_reason == "abort":
                self.aborted.add(position)
        if d.usage is not None:
            self.ended.add(position)
            self.prompt_tokens += d.usage.prompt_tokens
            self.completion_tokens += d.usage.completion_tokens

    def close(self) -> None:
        """Abort unfinished streams, free the slots and leave a summary for the request log (idempotent)."""
        if self.closed:
            return
        self.closed = True
        for position, stream in enumerate(self.streams):
            if position not in self.ended:
                stream.abort()
                if not self.failed:
                    self.aborted.add(position)
                # No usage delta will be read: count what was generated so far (the log and metrics).
                self.prompt_tokens += len(stream.prompt_ids)
                self.completion_tokens += self.generated.get(position, 0)
        state = self.state
        state.in_flight -= self.slots
        state.tickets.discard(self)
        state.metrics.aborted += len(self.aborted)
        state.metrics.tokens(self.prompt_tokens, self.completion_tokens)
        self.info["summary"] = {
            "ids": [s.request_id for s in self.streams],
            "choices": [{"stream": p, "index": i, "text": t, "finish_reason": self.finish.get((p, i))}
                        for (p, i), t in sorted(self.texts.items())],
            "usage": {"prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens},
            "aborted": bool(self.aborted),
            "failed": self.failed,
        }
