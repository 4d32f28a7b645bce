"""The browser chat page: `/` and `/ui` serve static files (package data in frontends/web) that talk to /v1.

With --api-key, a browser without the key gets only the login page: it sends the key once as a
Bearer token to POST /ui/session, which answers with a cookie that unlocks the page's own files
(the cookie holds an HMAC of the key, never the key, and opens nothing under /v1: the page keeps
sending the key as a Bearer token there, so no other site can spend it through the cookie).
"""

from __future__ import annotations

import hashlib
import hmac
from functools import lru_cache
from importlib.resources import files
from typing import Any

from fastapi import APIRouter, Request, Security
from fastapi.responses import JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials

from mistralrs_cli.frontends.server_errors import ApiError
from mistralrs_cli.frontends.server_routes import bearer, check_api_key, state_of
from mistralrs_cli.frontends.server_state import ServerState

COOKIE = "mistralrs_ui"
MEDIA = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8",
         ".svg": "image/svg+xml"}
# Files anyone may fetch: the login page needs them before it has the key.
PUBLIC = frozenset({"login.html", "login.js", "api.js", "style.css", "icon.svg"})
# The page runs only its own files: no inline script, nothing from elsewhere. A model answer that
# slipped past the renderer as markup still could not run (defence in depth, not the defence).
HEADERS = {
    "Content-Security-Policy": "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
                               "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; "
                               "frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",  # revalidate: a new version of the server brings new files
}

ui = APIRouter(include_in_schema=False)


@lru_cache(maxsize=32)  # the page has a handful of files; random names must not grow it
def asset(name: str) -> bytes | None:
    """A file of the page (package data), or None when there is no such file."""
    if "/" in name or name.startswith(".") or not name.endswith(tuple(MEDIA)):
        return None
    path = files("mistralrs_cli.frontends.web").joinpath(name)
    return path.read_bytes() if path.is_file() else None


def session_token(key: str) -> str:
    """The cookie value for `key`: proves the browser was given the key, without being the key."""
    return hmac.new(key.encode(), b"mistralrs web ui session", hashlib.sha256).hexdigest()


def unlocked(request: Request) -> bool:
    """Whether this browser may have the chat page: no --api-key, or the session cookie of the key."""
    key = state_of(request).config.api_key
    if not key:
        return True
    cookie = request.cookies.get(COOKIE, "")
    return bool(cookie) and hmac.compare_digest(cookie.encode(), session_token(key).encode())


def _file(name: str) -> Response:
    body = asset(name)
    if body is None:
        raise ApiError(404, f"the web page has no file {name!r}", code="not_found")
    return Response(body, media_type=MEDIA[name[name.rindex("."):]], headers=HEADERS)


def _require_unlocked(request: Request) -> None:
    if not unlocked(request):
        raise ApiError(401, "log in to the page with the server's API key first", code="invalid_api_key")


@ui.api_route("/", methods=["GET", "HEAD"])
@ui.api_route("/ui", methods=["GET", "HEAD"])
async def page(request: Request) -> Response:
    """The chat page, or only the login page while an --api-key server has not seen the key."""
    return _file("index.html" if unlocked(request) else "login.html")


@ui.get("/ui/config.json")
async def page_config(request: Request) -> JSONResponse:
    """What the page shows and offers: the model's name, its context, and X-LoRA's adapters (if any)."""
    _require_unlocked(request)
    return JSONResponse(config_of(state_of(request)), headers={"Cache-Control": "no-store"})


@ui.api_route("/ui/{name}", methods=["GET", "HEAD"])
async def page_file(name: str, request: Request) -> Response:
    """A script, style sheet or icon of the page; the chat's own files need the session cookie."""
    if name not in PUBLIC:
        _require_unlocked(request)
    return _file(name)


@ui.post("/ui/session", status_code=204)
async def log_in(request: Request, credentials: HTTPAuthorizationCredentials | None = Security(bearer)) -> Response:
    """Given the right Bearer key, the cookie that unlocks the page (session-long, this site only)."""
    key = state_of(request).config.api_key
    response = Response(status_code=204)
    if key:
        check_api_key(request, credentials)  # 401 for a wrong key
        response.set_cookie(COOKIE, session_token(key), httponly=True, samesite="strict", path="/",
                            secure=request.url.scheme == "https")
    return response


@ui.delete("/ui/session", status_code=204)
async def log_out() -> Response:
    """Forget the cookie (the page also forgets the key it kept)."""
    response = Response(status_code=204)
    response.delete_cookie(COOKIE, path="/")
    return response


def config_of(state: ServerState) -> dict[str, Any]:
    """The page's settings; `status` is the server's (loading until the model is ready)."""
    engine = state.engine
    body: dict[str, Any] = {"status": state.status, "model": state.model_name, "auth": bool(state.config.api_key)}
    if engine is not None:
        body["max_model_len"] = engine.config.max_model_len
        body["adapters"] = list(engine.adapter_names)
    return body
