"""Engine: the thread-safe front door. One background thread owns the model and steps it.

Any thread (or an asyncio loop) submits requests and reads its own RequestStream; abort
is a message to the engine thread, handled before the next step, which frees the cache.
"""

from __future__ import annotations

import itertools
import logging
import os
import queue
import signal
import threading
from typing import Any

import torch

from mistralrs_cli.engine.admission import reject_oversized
from mistralrs_cli.engine.config import EngineConfig
from mistralrs_cli.engine.core import EngineCore
from mistralrs_cli.engine.guided import Guide
from mistralrs_cli.engine.outputs import EngineError, EngineStats, RequestOutput
from mistralrs_cli.engine.params import SamplingParams
from mistralrs_cli.engine.scalings import ChoiceScalings
from mistralrs_cli.engine.sequence import Request
from mistralrs_cli.engine.stream import RequestStream
from mistralrs_cli.engine.threads import engine_threads
from mistralrs_cli.errors import RequestError
from mistralrs_cli.loading.loaded import LoadedModel

log = logging.getLogger(__name__)

_ADD, _ABORT, _STOP = "add", "abort", "stop"


class Engine:
    """Continuous-batching generation over one loaded model; usable from many threads."""

    def __init__(self, loaded: LoadedModel, config: EngineConfig | None = None) -> None:
        self.loaded = loaded
        self.core = EngineCore(loaded, config)
        self.config = self.core.config
        self.kv_budget = self.core.kv_budget  # the pool's size and why, for the start-up line
        _ = loaded.tokenizer.bound  # read the vocabulary now rather than in the first request
        self._inbox: queue.SimpleQueue[tuple[str, Any]] = queue.SimpleQueue()
        self._ids = itertools.count()
        self._stats = self.core.stats()
        self.core.publish_stats = self._publish
        self._closed = False
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._loop, name="mistralrs-engine", daemon=True)
        self._thread.start()

    def submit(
        self,
        prompt: str | list[int] | None = None,
        *,
        messages: list[dict[str, Any]] | None = None,
        params: SamplingParams | None = None,
        request_id: str | None = None,
        extensions: dict[str, Any] | None = None,
        tools: list[dict[str, Any]] | None = None,
    ) -> RequestStream:
        """Validate and queue a request; raises RequestError for a request that can never run.

        `tools` (OpenAI tool objects) are passed to the chat template (see `template_takes_tools`).
        """
        rid = request_id or f"req-{next(self._ids)}"
        # A text whose length alone cannot fit is refused here, before the tokenizer spends
        # seconds on it (every frontend submits through here: serve, batch, chat).
        reject_oversized(self.loaded.tokenizer, prompt, messages, params or SamplingParams(), self.core.limits, tools)
        request = self.core.new_request(rid, prompt, messages, params, extensions, self.abort, tools)
        with self._lock:  # NOTE: so no request can be queued behind the stop message
            if self._closed:
                raise EngineError("the engine is shut down")
            self._inbox.put((_ADD, request))
        return request.stream

    def generate(
        self,
        prompt: str | list[int] | None = None,
        *,
        messages: list[dict[str, Any]] | None = None,
        params: SamplingParams | None = None,
    ) -> RequestOutput:
        """Submit and block until the request finishes."""
        return self.submit(prompt, messages=messages, params=params).result()

    def abort(self, request_id: str) -> None:
        """Stop a request from any thread; its stream ends with `abort` deltas."""
        self._inbox.put((_ABORT, request_id))

    def scalings(self, request_id: str) -> dict[int, ChoiceScalings]:
        """X-LoRA per-token scalings of a finished request's choices (asked with `xlora_scalings`)."""
        return self.core.scalings.get(request_id)

    def check_guide(self, guide: Guide) -> None:
        """Compile an output constraint as a request would; RequestError with the one-line reason.

        For frontends that take a constraint once and use it for many requests (chat's
        --json-schema): a bad one fails when it is set, not at the first prompt.
        """
        self.core.guides.matcher(guide)

    @property
    def adapter_names(self) -> tuple[str, ...]:
        """The adapters an X-LoRA model mixes (the columns of its scalings); empty for other models."""
        hooks = self.core.hooks
        return tuple(hooks.adapter_names) if hooks is not None else ()

    @property
    def template_takes_tools(self) -> bool:
        """Whether the model's chat template renders `tools` itself; if not, a frontend describes them in a message."""
        return self.loaded.tokenizer.template_takes_tools

    def stats(self) -> EngineStats:
        """Counters as of the end of the last engine step."""
        return self._stats

    def wait_compiled(self, timeout: float | None = None) -> bool:
        """Wait until the compiled decode step of every batch size met so far is ready (or failed
        and stays eager); True at once when not compiling, False on timeout. For benchmarks."""
        compiled = self.core.runner.compiled
        return compiled is None or compiled.wait(timeout)

    def compile_status(self) -> dict[int, str] | None:
        """Batch bucket -> "ready" | "compiling" | "eager (why)" of the compiled decode step; None when not compiling."""
        compiled = self.core.runner.compiled
        return None if compiled is None else compiled.status()

    def _publish(self, stats: EngineStats) -> None:
        self._stats = stats  # one reference assignment: atomic for readers in other threads

    def shutdown(self, timeout: float | None = 10.0) -> None:
        """Abort every request and stop the engine thread."""
        with self._lock:
            if not self._closed:
                self._closed = True
                self._inbox.put((_STOP, None))
        self._thread.join(timeout)
        compiled = self.core.runner.compiled
        if compiled is not None:
            compiled.close()

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()

    # --- engine thread ---
    def _loop(self) -> None:
        # Ctrl-C and SIGTERM belong to the main thread. A signal the kernel hands to this thread
        # (or to the OpenMP workers it spawns, which inherit the mask) would reach Python's
        # handler only when the main thread next wakes: a REPL blocked on a stream could miss it.
        if os.name == "posix":  # pthread_sigmask is POSIX-only
            signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
        core = self.core
        torch.set_num_threads(engine_threads(self.config.threads))
        while True:
            if core.has_work():
                messages = []
            else:  # idle: sleep until told
                core.set_idle(True)
                messages = [self._inbox.get()]
                core.set_idle(False)
            while True:
                try:
                    messages.append(self._inbox.get_nowait())
                except queue.Empty:
                    break
            try:
                if not self._handle(messages):
                    return
                if core.has_work():
                    core.step()
            except Exception as e:  # the model raised: fail these requests, keep serving
                log.exception("engine step failed")
                core.fail_all(e)
            self._stats = core.stats()

    def _handle(self, messages: list[tuple[str, Any]]) -> bool:
        """Apply queued messages; False once told to stop (every request is aborted first)."""
        for kind, payload in messages:
            if kind == _ADD:
                self._add(payload)
            elif kind == _ABORT:
                self.core.abort(payload)
            else:
                for rid in list(self.core.requests):
                    self.core.abort(rid)
                self._stats = self.core.stats()
                return False
        return True

    def _add(self, request: Request) -> None:
        if request.request_id in self.core.requests:
            request.stream.put(RequestError(f"request id {request.request_id!r} is already running"))
            request.stream.close()
            return
        self.core.add(request)
