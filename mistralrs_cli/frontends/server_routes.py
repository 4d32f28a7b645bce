"""The HTTP routes: /v1/models, /v1/chat/completions, /v1/completions (plain and SSE), /health, /metrics.

Routes only validate, submit to the engine and translate its deltas (openai_convert);
tokenizing runs in a worker thread (through the tokenizers call that releases the GIL), so a long
prompt never stalls the event loop; one too long for the context by its length alone is never tokenized.
"""

from __future__ import annotations

import asyncio
import hmac
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar

from fastapi import APIRouter, Request, Security
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel
from starlette.background import BackgroundTask

from mistralrs_cli.engine import EngineError
from mistralrs_cli.errors import MistralrsError
from mistralrs_cli.frontends.openai_convert import (
    chat_response,
    completion_response,
    submit_chat,
    submit_completions,
    xlora_field,
    xlora_scalings_of,
)
from mistralrs_cli.frontends.openai_types import ChatCompletionRequest, CompletionRequest
from mistralrs_cli.frontends.server_errors import SERVER, ApiError, request_error
from mistralrs_cli.frontends.server_http import CLIENT_GONE
from mistralrs_cli.frontends.server_sse import (
    chat_events,
    collect_unless_gone,
    completion_events,
    guarded,
)
from mistralrs_cli.frontends.server_state import ServerState, Ticket

T = TypeVar("T")


class ErrorDetail(BaseModel):
    """OpenAI's error fields."""

    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    """Every error response: {"error": {...}}."""

    error: ErrorDetail


def _errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    return {code: {"model": ErrorResponse} for code in codes}


# Documented on every /v1 route (for the OpenAPI document; 401 only when --api-key is set).
V1_ERRORS = _errors(400, 401, 404, 413, 429, 500, 503)
CHAT_FIELDS = tuple(ChatCompletionRequest.model_fields)
COMPLETION_FIELDS = tuple(CompletionRequest.model_fields)

# 200 is JSON, or server-sent events (each `data:` line a JSON chunk, then `data: [DONE]`).
GENERATED = {200: {"description": "A completion object, or an SSE stream of chunks when stream is true",
                   "content": {"application/json": {}, "text/event-stream": {}}}}
v1 = APIRouter(prefix="/v1", responses=V1_ERRORS)
bearer = HTTPBearer(auto_error=False, description="The server's --api-key (or MISTRALRS_API_KEY).")
public = APIRouter()


def state_of(request: Request) -> ServerState:
    """The ServerState the app was built with."""
    return request.app.state.server


def check_api_key(request: Request, credentials: HTTPAuthorizationCredentials | None = Security(bearer)) -> None:
    """Dependency for /v1 when --api-key is set: a matching `Authorization: Bearer KEY` or 401."""
    key = state_of(request).config.api_key or ""
    token = credentials.credentials if credentials is not None else ""
    # compare_digest: the time taken must not reveal how much of the key matched.
    if not token or not hmac.compare_digest(token.encode(), key.encode()):
        raise ApiError(401, "invalid or missing API key (send Authorization: Bearer KEY)",
                       code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})


# --- models -------------------------------------------------------------------------------
def _card(state: ServerState, name: str) -> dict[str, Any]:
    return {"id": name, "object": "model", "created": state.created, "owned_by": "mistralrs"}


@v1.get("/models", summary="List the served model names")
async def list_models(request: Request) -> dict[str, Any]:
    """The one model this server runs, once per served name (--served-model-name)."""
    state = state_of(request)
    state.require_engine()
    return {"object": "list", "data": [_card(state, name) for name in state.served]}


@v1.get("/models/{model_id:path}", summary="Describe a model")
async def get_model(model_id: str, request: Request) -> dict[str, Any]:
    """The card of a served name (or of the model path given at start), or 404 model_not_found."""
    state = state_of(request)
    state.require_engine()
    return _card(state, state.resolve_model(model_id))


# --- generation ----------------------------------------------------------------------------
@v1.post("/chat/completions", summary="Chat completion (streamed with stream: true)", responses=GENERATED)
async def chat_completions(body: ChatCompletionRequest, request: Request) -> Response:
    """OpenAI's chat completions: messages in, choices out; SSE chunks ending in [DONE] when streaming."""
    state = state_of(request)
    engine = state.require_engine()
    model = state.resolve_model(body.model)
    ticket = state.admit(1, "/v1/chat/completions", request.scope.setdefault("mistralrs", {}))
    try:
        job = await _submit(lambda: submit_chat(engine, body), CHAT_FIELDS)
        ticket.streams = [job.stream]
    except BaseException:
        ticket.close()
        raise
    if body.stream:
        include = bool(body.stream_options and body.stream_options.include_usage)
        scalings = (lambda: xlora_scalings_of(engine, [job.stream.request_id], job.stream.n)) if body.xlora_scalings else None
        return _sse(chat_events(job.stream, ticket, model, include, job.tools, scalings), ticket)
    extra = (lambda outs: xlora_field(engine, outs)) if body.xlora_scalings else (lambda outs: None)
    return await _respond(request, ticket, lambda outs: chat_response(outs[0], model, extra(outs), job.tools))


@v1.post("/completions", summary="Text completion (streamed with stream: true)", responses=GENERATED)
async def completions(body: CompletionRequest, request: Request) -> Response:
    """OpenAI's legacy completions: one or more prompts (text or token ids) continued."""
    state = state_of(request)
    engine = state.require_engine()
    model = state.resolve_model(body.model)
    ticket = state.admit(len(body.prompts()), "/v1/completions", request.scope.setdefault("mistralrs", {}))
    try:
        ticket.streams = await _submit(lambda: submit_completions(engine, body), COMPLETION_FIELDS)
        echo = [_prompt_text(engine, p) for p in body.prompts()] if body.echo else None
    except BaseException:
        ticket.close()
        raise
    if body.stream:
        include = bool(body.stream_options and body.stream_options.include_usage)
        ids = [s.request_id for s in ticket.streams]
        scalings = (lambda: xlora_scalings_of(engine, ids, ticket.streams[0].n)) if body.xlora_scalings else None
        return _sse(completion_events(ticket.streams, ticket, model, include, echo, scalings), ticket)
    extra = (lambda outs: xlora_field(engine, outs)) if body.xlora_scalings else (lambda outs: {})
    return await _respond(request, ticket,
                          lambda outs: {**completion_response(outs, model, echo), **extra(outs)})


def _prompt_text(engine: Any, prompt: str | list[int]) -> str:
    return prompt if isinstance(prompt, str) else engine.loaded.tokenizer.decode(prompt)


async def _submit(make: Callable[[], T], fields: tuple[str, ...]) -> T:
    """Run a submission in a worker thread; invalid requests become 400, a stopped engine 503."""
    try:
        return await asyncio.to_thread(make)
    except EngineError as e:  # raised by submit only when the engine is shut down
        raise ApiError(503, e.message, SERVER, code="engine_stopped") from None
    except MistralrsError as e:
        raise request_error(e, fields) from None


async def _respond(request: Request, ticket: Ticket, build: Callable[[list[Any]], dict[str, Any]]) -> Response:
    """Wait for every stream, then answer with one JSON body; a vanished client aborts the work."""
    try:
        outs = await collect_unless_gone(request, ticket.streams, ticket)
        if outs is None:
            ticket.info["status"] = CLIENT_GONE
            return Response(status_code=CLIENT_GONE)  # nobody is listening; recorded in metrics/log
        return JSONResponse(build(outs))
    except EngineError as e:
        ticket.failed = True
        raise ApiError(500, e.message, SERVER) from None
    finally:
        ticket.close()


def _sse(events: AsyncIterator[str], ticket: Ticket) -> StreamingResponse:
    # NOTE: the background task closes the ticket even if the body never starts streaming
    # (the client left before the first chunk); Ticket.close is idempotent. It is a coroutine
    # so it runs on the event loop: a plain function would run in a worker thread and race
    # the loop on the admission counters.
    async def close() -> None:
        ticket.close()

    return StreamingResponse(guarded(events, ticket), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
                             background=BackgroundTask(close))


# --- health and metrics ------------------------------------------------------------------------
@public.get("/health", summary="Liveness and readiness",
            responses={503: {"description": "Loading, shutting down, or the model failed to load"}})
async def health(request: Request) -> JSONResponse:
    """200 {"status": "ok"} when serving; 503 while loading, shutting down, or after a failed load."""
    state = state_of(request)
    status = state.status
    body = {"status": status, "model": state.model_name, "in_flight": state.in_flight}
    return JSONResponse(body, status_code=200 if status == "ok" else 503)


@public.get("/metrics", summary="Prometheus metrics", response_class=PlainTextResponse)
async def metrics(request: Request) -> PlainTextResponse:
    """Requests, tokens, running/waiting sequences, KV cache use and latency histograms."""
    state = state_of(request)
    engine = state.engine
    text = state.metrics.render(engine.stats() if engine else None, state.in_flight, engine is not None)
    return PlainTextResponse(text, media_type="text/plain; version=0.0.4")
