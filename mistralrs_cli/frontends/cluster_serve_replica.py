"""One Ray Serve replica of `serve --ray`: its own Engine, behind the same FastAPI app as `serve`.

The replica calls the `open_engine` shipped to it (the composition root's factory, pickled
by Ray) and serves `create_app` over its own ServerState, so routes, auth, SSE, limits and
metrics are those of the single-process server. Every response names the replica that
answered in the `X-Mistralrs-Replica` header (`/metrics` is that replica's alone).
Imported only on the `--ray` path: it needs Ray Serve.
"""

from __future__ import annotations

import asyncio
import re
import sys
import time
from collections.abc import Callable

import ray
from fastapi import FastAPI
from ray import serve
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from mistralrs_cli.engine import Engine
from mistralrs_cli.engine.threads import keep_main_thread_serial
from mistralrs_cli.errors import MistralrsError
from mistralrs_cli.frontends.options import ServeOptions
from mistralrs_cli.frontends.server import create_app
from mistralrs_cli.frontends.server_state import ServerState

REPLICA_HEADER = "X-Mistralrs-Replica"
# The driver finds a replica's failure in Serve's status (a traceback) by this shape.
START_FAILED = re.compile(r"replica \S+ could not start: .*")
ABORT_GRACE_S = 2.0  # after the drain: aborted streams get this long to send their [DONE]
DELETION_POLL_S = 1.0  # how often a replica asks whether its application is being deleted
# Serve's graceful timeout: the drain, one poll, and the aborted streams' last words.
SHUTDOWN_MARGIN_S = DELETION_POLL_S + ABORT_GRACE_S + 2.0


class ReplicaStartError(MistralrsError):
    """The replica could not start (its --log file, its model); one line naming the replica and the cause."""


class ReplicaHeader:
    """ASGI middleware: adds `X-Mistralrs-Replica: NAME` to every response."""

    def __init__(self, app: ASGIApp, name: str) -> None:
        self.app = app
        self.header = (REPLICA_HEADER.lower().encode(), name.encode())

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def named(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), self.header]}
            await send(message)

        await self.app(scope, receive, named)


@serve.ingress()
class MistralrsReplica:
    """A deployment's replica: loads its engine in the constructor (Serve routes to it once built)."""

    async def __init__(self, options: ServeOptions, open_engine: Callable[[], Engine]) -> None:
        keep_main_thread_serial()  # as `serve` does: torch's thread pool belongs to the engine thread
        context = serve.get_replica_context()
        self.name = f"{context.replica_id.unique_id}@{ray.util.get_node_ip_address()}"
        self.state = ServerState(options)
        try:  # as `serve`: the app (and its --log file) before the model, so a bad path fails first
            self.asgi = create_app(self.state)  # not self.app: Serve's wrapper owns that name
        except MistralrsError as e:
            raise self._failed(e) from None
        self.asgi.add_middleware(ReplicaHeader, name=self.name)
        start = time.perf_counter()
        loading = self.state.start_loading(open_engine)
        await asyncio.to_thread(loading.join)  # the replica's loop stays free for Serve's calls
        if self.state.load_error is not None:
            self.state.close()  # the --log file
            raise self._failed(self.state.load_error, "the model did not load: ")
        engine = self.state.engine
        assert engine is not None
        print(f"replica {self.name}: model {engine.loaded.name} ready in {time.perf_counter() - start:.1f} s; "
              f"{engine.kv_budget.describe()}", file=sys.stderr, flush=True)
        self.watcher = asyncio.create_task(self._drain_when_deleted(context.app_name))

    async def _drain_when_deleted(self, app_name: str) -> None:
        """Begin `serve`'s drain once the application is being deleted (Serve has no hook for it):
        new requests get 503, and whatever still runs after the drain timeout is aborted, so its
        stream ends with [DONE] before Serve's graceful timeout would cut it."""
        while True:
            await asyncio.sleep(DELETION_POLL_S)
            try:
                status = await asyncio.to_thread(serve.status)  # a blocking call to the controller
            except Exception:  # the controller restarting: ask again
                continue
            app = status.applications.get(app_name)
            if app is None or app.status == "DELETING":
                self.state.begin_drain()
                return

    def _failed(self, error: BaseException, what: str = "") -> ReplicaStartError:
        reason = error.message if isinstance(error, MistralrsError) else f"{type(error).__name__}: {error}"
        return ReplicaStartError(f"replica {self.name} could not start: {what}{' '.join(reason.split())}")

    def __serve_build_asgi_app__(self) -> FastAPI:
        """The `serve` app over this replica's state, naming the replica in each response."""
        return self.asgi

    async def __del__(self) -> None:
        """Serve calls this once in-flight requests finished or its graceful timeout passed: abort
        what still runs (streams end with [DONE], as in `serve`), then stop the engine."""
        state = getattr(self, "state", None)
        if state is None:
            return
        if getattr(self, "watcher", None) is not None:
            self.watcher.cancel()
        state.draining = True
        state.abort_all()
        deadline = time.monotonic() + ABORT_GRACE_S
        while state.in_flight and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        state.close()
