"""RequestStream: one request's private output channel, read as a sync or an asyncio iterator.

The engine thread is the only producer. Consumers iterate in any thread or event loop;
leaving the loop early (break, an exception, a closed async generator) aborts the request,
so a client that goes away frees its KV cache at the next engine step.
"""

from __future__ import annotations

import asyncio
import queue
import threading
from collections.abc import AsyncIterator, Callable, Iterator

from mistralrs_cli.engine.outputs import Choice, Delta, RequestOutput
from mistralrs_cli.errors import MistralrsError

_END = object()  # pushed after the request's last delta


class RequestStream:
    """The deltas of one request, in order; ends after the delta carrying `usage`."""

    def __init__(self, request_id: str, prompt_ids: list[int], n: int, abort: Callable[[str], None]) -> None:
        self.request_id = request_id
        self.prompt_ids = prompt_ids
        self.n = n
        self._abort = abort
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._waiter: tuple[asyncio.AbstractEventLoop, asyncio.Event] | None = None
        self._done = False

    # --- producer side (engine thread) ---
    def put(self, item: Delta | MistralrsError) -> None:
        """Deliver a delta (or the error that ended the request) to the consumer."""
        self._queue.put(item)
        self._wake()

    def close(self) -> None:
        """Mark the end of the stream."""
        self._queue.put(_END)
        self._wake()

    def _wake(self) -> None:
        with self._lock:
            waiter = self._waiter
        if waiter is not None:
            loop, event = waiter
            try:
                loop.call_soon_threadsafe(event.set)
            except RuntimeError:  # the consumer's loop is closed; nobody is listening
                pass

    # --- consumer side ---
    def abort(self) -> None:
        """Ask the engine to stop this request now; the stream still ends with abort deltas."""
        if not self._done:
            self._abort(self.request_id)

    def _take(self, item: object) -> Delta | None:
        if item is _END:
            self._done = True
            return None
        if isinstance(item, MistralrsError):
            self._done = True
            raise item
        assert isinstance(item, Delta)
        return item

    def __iter__(self) -> Iterator[Delta]:
        try:
            while not self._done:
                delta = self._take(self._queue.get())
                if delta is not None:
                    yield delta
        finally:
            self.abort()  # no-op when the stream ended normally

    async def __aiter__(self) -> AsyncIterator[Delta]:
        event = asyncio.Event()
        with self._lock:
            self._waiter = (asyncio.get_running_loop(), event)
        try:
            while not self._done:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    # NOTE: clear before re-checking, so a put between the two is never lost.
                    await event.wait()
                    event.clear()
                    continue
                delta = self._take(item)
                if delta is not None:
                    yield delta
        finally:
            with self._lock:
                self._waiter = None
            self.abort()

    def result(self) -> RequestOutput:
        """Block until the request ends and return every choice (aborted ones included)."""
        return self._collect(list(self))

    async def aresult(self) -> RequestOutput:
        """Async twin of `result`."""
        return self._collect([d async for d in self])

    def _collect(self, deltas: list[Delta]) -> RequestOutput:
        choices = [Choice(i) for i in range(self.n)]
        usage = None
        for d in deltas:
            choices[d.index].add(d)
            usage = d.usage or usage
        return RequestOutput(self.request_id, choices, usage)
