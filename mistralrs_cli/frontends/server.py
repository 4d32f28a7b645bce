"""`mistralrs serve`: an OpenAI-compatible HTTP API (FastAPI + uvicorn) over the engine.

The socket is bound and the server answers at once; the model loads in a background thread
(503 until it is ready). SIGINT/SIGTERM stop new work, let in-flight requests finish for
up to `drain_timeout` seconds, then abort the rest so every stream still ends with [DONE].
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
import threading
import time
from collections.abc import Callable, Generator
from types import FrameType

import uvicorn
from fastapi import Depends, FastAPI
from fastapi.openapi.utils import get_openapi
from rich.console import Console
from rich.markup import escape
from uvicorn.server import HANDLED_SIGNALS

from mistralrs_cli import __version__
from mistralrs_cli.engine import Engine
from mistralrs_cli.errors import ConfigError
from mistralrs_cli.frontends.openai_types import with_server_bounds
from mistralrs_cli.frontends.options import ServeOptions
from mistralrs_cli.frontends.request_log import RequestLog
from mistralrs_cli.frontends.server_errors import install_handlers
from mistralrs_cli.frontends.server_http import HttpMiddleware, is_loopback
from mistralrs_cli.frontends.server_routes import check_api_key, public, v1
from mistralrs_cli.frontends.server_state import ServerState
from mistralrs_cli.frontends.server_ui import ui

log = logging.getLogger(__name__)
stderr = Console(stderr=True)


def create_app(state: ServerState) -> FastAPI:
    """The FastAPI app over `state`; /v1 routes require the API key when one is configured."""
    app = FastAPI(
        title="mistralrs",
        version=__version__,
        description="OpenAI-compatible chat and text completions served by mistralrs.",
        redoc_url=None,
    )
    app.state.server = state
    app.include_router(v1, dependencies=[Depends(check_api_key)] if state.config.api_key else [])
    app.include_router(public)
    if state.config.ui:
        app.include_router(ui)
    install_handlers(app)
    if state.config.log_file is not None:
        state.request_log = RequestLog(state.config.log_file)
    app.add_middleware(HttpMiddleware, state=state, request_log=state.request_log)
    app.openapi = lambda: _openapi_without_422(app)  # type: ignore[method-assign]
    return app


def _openapi_without_422(app: FastAPI) -> dict:
    """FastAPI's document, minus the 422 responses it adds by default (this server answers 400),
    with the real bound on `n` once the engine is loaded (cached only from then on)."""
    if app.openapi_schema is not None:
        return app.openapi_schema
    doc = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
    for path in doc["paths"].values():
        for operation in path.values():
            operation.get("responses", {}).pop("422", None)
    for name in ("HTTPValidationError", "ValidationError"):
        doc.get("components", {}).get("schemas", {}).pop(name, None)
    engine = getattr(app.state.server, "engine", None)
    if engine is not None:
        app.openapi_schema = with_server_bounds(doc, engine.config.max_seqs)
    return doc


class DrainingServer(uvicorn.Server):
    """uvicorn's server, with a drain on the first signal and a clean exit (status 0) afterwards."""

    def __init__(self, config: uvicorn.Config, state: ServerState) -> None:
        super().__init__(config)
        self.state = state
        self.loop: asyncio.AbstractEventLoop | None = None

    async def serve(self, sockets: list[socket.socket] | None = None) -> None:
        """Run until asked to stop (remembering the loop, for signal handlers)."""
        self.loop = asyncio.get_running_loop()
        await super().serve(sockets)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        """First signal: drain (503 for new requests, abort stragglers later); a second SIGINT forces."""
        if not self.should_exit and self.loop is not None:
            # NOTE: a signal handler may interrupt the loop mid-operation; only the
            # thread-safe entry point may touch it from here.
            self.loop.call_soon_threadsafe(self.state.begin_drain)
        super().handle_exit(sig, frame)

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        """As uvicorn's, but the signal is not re-raised after the drain: the process exits normally."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        originals = {sig: signal.signal(sig, self.handle_exit) for sig in HANDLED_SIGNALS}
        try:
            yield
        finally:
            for sig, handler in originals.items():
                signal.signal(sig, handler)


def bind_socket(host: str, port: int) -> socket.socket:
    """A listening socket on host:port (port 0 picks a free one); ConfigError if that is impossible."""
    try:
        family, type_, proto, _, addr = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                           flags=socket.AI_PASSIVE)[0]
    except socket.gaierror as e:
        raise ConfigError(f"--serve-ip {host!r}: {e.strerror}") from None
    sock = socket.socket(family, type_, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(addr)
        # Listen now, not when uvicorn starts: the address is printed first, and a client
        # that connects in between must wait in the backlog rather than be refused.
        sock.listen(2048)
    except OSError as e:
        sock.close()
        raise ConfigError(f"cannot listen on {host}:{port}: {e.strerror}") from None
    return sock


def run_serve(options: ServeOptions, open_engine: Callable[[], Engine]) -> None:
    """Serve until SIGINT/SIGTERM; a model that fails to load stops the server and raises its error."""
    state = ServerState(options)
    app = create_app(state)
    sock = bind_socket(options.host, options.port)
    host, port = sock.getsockname()[:2]
    uv_config = uvicorn.Config(
        app,
        lifespan="off",
        access_log=False,  # --log writes the request log; uvicorn's would duplicate it on stderr
        log_level="debug" if options.debug else "warning",
        timeout_graceful_shutdown=int(options.drain_timeout) + 5,  # backstop after our own drain
    )
    server = DrainingServer(uv_config, state)

    def failed() -> None:
        server.should_exit = True

    state.start_loading(lambda: _timed_open(open_engine), failed)
    url = f"http://{f'[{host}]' if ':' in host else host}:{port}"
    # soft_wrap: a long model path must not break the line (scripts read the URL from it).
    stderr.print(f"[bold]mistralrs[/] listening on {url}/v1 (loading {escape(options.model_name)}...)",
                 highlight=False, soft_wrap=True)
    if not is_loopback(host) and not options.api_key:
        stderr.print("[yellow]warning:[/] listening beyond loopback without --api-key", highlight=False,
                     soft_wrap=True)
    try:
        server.run(sockets=[sock])
    finally:
        state.close()
        sock.close()
    if state.load_error is not None:
        raise state.load_error


def _timed_open(open_engine: Callable[[], Engine]) -> Engine:
    """Open the engine and say how long the model took and what KV cache it got."""
    start = time.perf_counter()
    engine = open_engine()
    seconds = time.perf_counter() - start
    stderr.print(f"model {escape(engine.loaded.name)} ready in {seconds:.1f} s; {engine.kv_budget.describe()}",
                 highlight=False, soft_wrap=True)
    return engine
