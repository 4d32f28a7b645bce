"""Reading engine streams for the server: whole outputs for plain responses, SSE events for `stream: true`.

A stream always ends with `data: [DONE]`, after an error event if the engine failed; the
Ticket is closed on every path (end, error, client disconnect), which aborts what is left.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import aclosing
from dataclasses import replace
from typing import Any

from starlette.requests import Request

from mistralrs_cli.engine import Choice, Delta, RequestOutput, RequestStream
from mistralrs_cli.errors import MistralrsError
from mistralrs_cli.frontends.openai_convert import (
    chat_chunk,
    completion_chunk,
    usage_chunk,
    usage_dict,
)
from mistralrs_cli.frontends.server_errors import SERVER, error_body
from mistralrs_cli.frontends.server_state import Ticket
from mistralrs_cli.frontends.tool_calls import ToolCallParser, finish_reason
from mistralrs_cli.frontends.tool_prompt import ToolUse

log = logging.getLogger(__name__)

DONE = "data: [DONE]\n\n"
# Fields for a stream's last chunk, read once every choice has ended (X-LoRA's scalings).
Extra = Callable[[], dict[str, Any]]


def sse(obj: dict[str, Any]) -> str:
    """One server-sent event carrying a JSON object."""
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"


async def merged(streams: list[RequestStream]) -> AsyncIterator[tuple[int, Delta]]:
    """(stream position, delta) from several streams as they arrive (a completions request with many prompts)."""
    if len(streams) == 1:
        async for delta in streams[0]:
            yield 0, delta
        return
    queue: asyncio.Queue[tuple[int, Delta | BaseException | None]] = asyncio.Queue()

    async def pump(position: int, stream: RequestStream) -> None:
        try:
            async for delta in stream:
                queue.put_nowait((position, delta))
        except Exception as e:  # handed to the consumer, which re-raises it
            queue.put_nowait((position, e))
        queue.put_nowait((position, None))

    tasks = [asyncio.create_task(pump(i, s)) for i, s in enumerate(streams)]
    try:
        left = len(streams)
        while left:
            position, item = await queue.get()
            if item is None:
                left -= 1
            elif isinstance(item, BaseException):
                raise item
            else:
                yield position, item
    finally:
        for task in tasks:
            task.cancel()  # leaves each stream's loop, which aborts its engine request


async def collect(streams: list[RequestStream], ticket: Ticket) -> list[RequestOutput]:
    """Every stream read to its end, assembled into outputs (raises the engine's error, if any)."""
    choices = [[Choice(i) for i in range(s.n)] for s in streams]
    usages: list[Any] = [None] * len(streams)
    async with aclosing(merged(streams)) as deltas:
        async for position, delta in deltas:
            ticket.delta(position, delta)
            choices[position][delta.index].add(delta)
            usages[position] = delta.usage or usages[position]
    return [RequestOutput(s.request_id, c, u) for s, c, u in zip(streams, choices, usages, strict=True)]


async def collect_unless_gone(request: Request, streams: list[RequestStream], ticket: Ticket) -> list[RequestOutput] | None:
    """`collect`, or None as soon as the client disconnects (the caller then aborts via the ticket)."""
    work = asyncio.ensure_future(collect(streams, ticket))
    gone = asyncio.ensure_future(_disconnected(request))
    try:
        await asyncio.wait({work, gone}, return_when=asyncio.FIRST_COMPLETED)
    except BaseException:  # this handler was cancelled (forced shutdown): stop reading too
        work.cancel()
        raise
    finally:
        gone.cancel()
    if work.done():
        return work.result()
    work.cancel()
    return None


async def _disconnected(request: Request) -> None:
    # The body was already read, so the next message the server sends is the disconnect.
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def guarded(events: AsyncIterator[str], ticket: Ticket) -> AsyncIterator[str]:
    """Wrap an event generator: an error becomes an error event, [DONE] always ends it, the ticket closes."""
    try:
        try:
            async with aclosing(events) as inner:  # type: ignore[type-var]
                async for event in inner:
                    yield event
        except Exception as e:  # the stream has started (200 sent): report in-band, never hang
            ticket.failed = True
            if isinstance(e, MistralrsError):
                yield sse(error_body(e.message, SERVER))
            else:
                log.exception("streaming failed")
                yield sse(error_body(f"internal server error: {type(e).__name__}", SERVER))
        yield DONE
    finally:
        ticket.close()


async def chat_events(stream: RequestStream, ticket: Ticket, model: str, include_usage: bool,
                      tools: ToolUse | None = None, extra: Extra | None = None) -> AsyncIterator[str]:
    """`chat.completion.chunk` events: a role chunk first per choice, then text, then finish_reason.

    With `tools`, text that may start a call is held back; each call goes out whole, as one
    `delta.tool_calls` entry, when its block closes. `extra` (X-LoRA's scalings) goes out after
    the last choice ends, in a chunk with no choices, before the usage chunk.
    """
    created, rid = int(time.time()), stream.request_id
    seen: set[int] = set()
    parsers: dict[int, ToolCallParser] = {}
    usage = None
    async for delta in stream:
        ticket.delta(0, delta)
        usage = delta.usage or usage
        first = delta.index not in seen
        seen.add(delta.index)
        calls: list[tuple[int, Any]] = []
        if tools is not None:
            parser = parsers.setdefault(delta.index, ToolCallParser(tools.names))
            before = len(parser.calls)
            text, done = parser.feed(delta.text)
            if delta.finish_reason:
                text += parser.finish()
            calls = list(enumerate(done, start=before))
            delta = replace(delta, text=text, finish_reason=finish_reason(delta.finish_reason, parser.calls))
        if first or delta.text or delta.finish_reason or delta.logprobs or calls:
            chunk = chat_chunk(rid, model, created, delta, first, calls)
            if include_usage:
                chunk["usage"] = None  # as OpenAI: null on every chunk but the last
            yield sse(chunk)
    if extra is not None:
        yield sse(usage_chunk(rid, model, created, "chat.completion.chunk", None, **extra()))
    if include_usage:
        yield sse(usage_chunk(rid, model, created, "chat.completion.chunk", usage_dict(usage) or {}))


async def completion_events(streams: list[RequestStream], ticket: Ticket, model: str, include_usage: bool,
                            echo: list[str] | None, extra: Extra | None = None) -> AsyncIterator[str]:
    """`text_completion` events; choice k of prompt p has index p*n + k, as in the non-streamed response.

    `extra` (X-LoRA's scalings) goes out after every choice ended, before the usage chunk."""
    created, rid, n = int(time.time()), streams[0].request_id, streams[0].n
    for position, text in enumerate(echo or []):
        for k in range(n):
            yield sse(completion_chunk(rid, model, created, Delta(k, text=text), position * n + k))
    async with aclosing(merged(streams)) as deltas:
        async for position, delta in deltas:
            ticket.delta(position, delta)
            if delta.text or delta.finish_reason or delta.logprobs:
                yield sse(completion_chunk(rid, model, created, delta, position * n + delta.index))
    if extra is not None:
        yield sse(usage_chunk(rid, model, created, "text_completion", None, **extra()))
    if include_usage:
        p, c = ticket.prompt_tokens, ticket.completion_tokens
        usage = {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}
        yield sse(usage_chunk(rid, model, created, "text_completion", usage))
