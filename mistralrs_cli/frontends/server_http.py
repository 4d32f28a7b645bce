"""The outermost ASGI layer: Host check, request body size limit, per-request metrics, the --log JSON lines, access log.

A pure ASGI middleware (not Starlette's BaseHTTPMiddleware) so streamed responses pass
through untouched and a client disconnect still reaches the route.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import sys
import time
from datetime import datetime, timezone
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from mistralrs_cli.frontends.options import host_name
from mistralrs_cli.frontends.request_log import RequestLog
from mistralrs_cli.frontends.server_errors import ApiError
from mistralrs_cli.frontends.server_state import ServerState

log = logging.getLogger(__name__)

ENDPOINTS = frozenset({"/v1/models", "/v1/chat/completions", "/v1/completions", "/health", "/metrics",
                       "/openapi.json", "/docs", "/", "/ui"})
LOG_BODY_CAP = 1 << 20  # response bytes kept for the log; longer bodies are logged as truncated
CLIENT_GONE = 499  # nginx's "client closed request": logged and counted, never sent


def endpoint_of(path: str) -> str:
    """A bounded label for metrics: the route, or "other" (so random 404 paths add no series)."""
    if path in ENDPOINTS:
        return path
    if path.startswith("/v1/models/"):
        return "/v1/models"
    return "/ui" if path.startswith("/ui/") else "other"


def is_loopback(host: str) -> bool:
    """Whether `host` (a bind address or a Host name, IPv6 with or without brackets) is this machine only."""
    name = host.strip("[]").rstrip(".").lower()
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def host_allowed(header: str | None, bound: str, allowed: tuple[str, ...]) -> bool:
    """The DNS-rebinding guard: may a request with this Host header reach a server bound to `bound`?

    A loopback server accepts loopback names only (plus `allowed`): a web page whose name was
    rebound to 127.0.0.1 still sends its own name. Bound beyond loopback, only `allowed` (when
    given) restricts. "*" allows any name; a request without a Host header (HTTP/1.0) comes from
    no browser and passes.
    """
    if "*" in allowed or header is None:
        return True
    if not is_loopback(bound) and not allowed:
        return True
    name = host_name(header)
    return is_loopback(name) or name.rstrip(".") in {a.lower().rstrip(".") for a in allowed}


class _BodyTooLarge(Exception):
    pass


class _ClientGone(Exception):
    pass


async def _read_body(scope: Scope, receive: Receive, limit: int) -> bytes:
    """The whole request body, refusing (413) past `limit` bytes without reading the rest."""
    declared = dict(scope.get("headers", [])).get(b"content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise _BodyTooLarge
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise _ClientGone
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise _BodyTooLarge
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


def _replay(body: bytes, receive: Receive) -> Receive:
    """A receive() that yields the buffered body once, then defers to the server (disconnects)."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


class HttpMiddleware:
    """Host check, body limit, metrics and the request log around the FastAPI app."""

    def __init__(self, app: ASGIApp, state: ServerState, request_log: RequestLog | None) -> None:
        self.app, self.state, self.log = app, state, request_log

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        info: dict[str, Any] = {"started": started}
        scope["mistralrs"] = info  # routes leave a summary of streamed output here
        status = 0
        is_json = False
        out = bytearray()

        async def send_wrapper(message: Message) -> None:
            nonlocal status, is_json
            if message["type"] == "http.response.start":
                status = message["status"]
                is_json = dict(message.get("headers", [])).get(b"content-type", b"").startswith(b"application/json")
            elif message["type"] == "http.response.body" and is_json and self.log and len(out) < LOG_BODY_CAP:
                out.extend(message.get("body", b""))
            await send(message)

        body = b""
        try:
            host = dict(scope.get("headers", [])).get(b"host")
            config = self.state.config
            if not host_allowed(None if host is None else host.decode("latin-1"), config.host, config.allowed_hosts):
                shown = host.decode("latin-1")[:100] if host else ""
                err = ApiError(400, f"the Host header {shown!r} is not allowed on this server (start it with "
                                    f"--allowed-hosts {host_name(shown) or 'NAME'} to accept it)", param="Host",
                               code="host_not_allowed")
                await err.response()(scope, receive, send_wrapper)
                return
            if scope["method"] in ("POST", "PUT", "PATCH"):
                body = await _read_body(scope, receive, self.state.config.max_body_bytes)
            await self.app(scope, _replay(body, receive), send_wrapper)
        except _BodyTooLarge:
            limit = self.state.config.max_body_bytes
            err = ApiError(413, f"the request body is larger than the limit of {limit} bytes", code="request_too_large")
            await err.response()(scope, receive, send_wrapper)
        except _ClientGone:
            status = CLIENT_GONE
        finally:
            status = info.get("status", status) or 500  # a route may report a client that left (499)
            seconds = time.perf_counter() - started
            self.state.metrics.request_done(endpoint_of(scope["path"]), status, seconds)
            if self.log is not None:
                try:
                    self.log.write(_record(scope, status, seconds, body, bytes(out), info.get("summary")))
                except Exception:  # the response is already sent; a full disk must not crash the app
                    log.exception("could not write the request log")
            if self.state.config.access_log:
                sys.stderr.write(access_line(scope, status) + "\n")
                sys.stderr.flush()


def access_line(scope: Scope, status: int) -> str:
    """uvicorn's access-log line, written when the response ends (so a stream's client that left shows 499)."""
    client = scope.get("client")
    who = f"{client[0]}:{client[1]}" if client else "-"
    query = scope.get("query_string", b"").decode("latin-1")
    target = scope["path"] + (f"?{query}" if query else "")
    return f'{who} - "{scope["method"]} {target} HTTP/{scope.get("http_version", "1.1")}" {status}'


def _record(scope: Scope, status: int, seconds: float, body: bytes, out: bytes, summary: Any) -> dict[str, Any]:
    client = scope.get("client")
    return {
        "time": datetime.now(timezone.utc).isoformat(timespec="milliseconds"),
        "client": client[0] if client else None,
        "method": scope["method"],
        "path": scope["path"],
        "status": status,
        "duration_s": round(seconds, 4),
        "request": _decode(body),
        "response": _decode(out) if out else summary,  # the JSON body, or a summary of a stream
    }


def _decode(data: bytes) -> Any:
    if not data:
        return None
    if len(data) >= LOG_BODY_CAP:
        return {"truncated": True, "bytes": len(data)}
    try:
        return json.loads(data)
    except (ValueError, RecursionError):  # not JSON, or nested too deeply to parse: logged as text
        return data.decode("utf-8", "replace")
