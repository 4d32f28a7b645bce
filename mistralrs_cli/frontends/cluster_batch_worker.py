"""One engine worker of `batch --ray`: a Ray actor holding an ordinary Engine on one node.

The class is plain (Ray wraps it with `ray.remote` in the driver), so importing it needs no
Ray. Its methods are coroutines: Ray runs such an actor on an event loop that takes up to
`max_concurrency` calls at once, so every request the driver sends is in the engine together
and continuous batching fills its steps, as in single-machine batch. Starting is two calls:
`where` (cheap: the actor is placed and its process runs) and `load` (the model, which may
take minutes), so the driver can bound the first and name the node when the second fails.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from mistralrs_cli.engine import Engine, SamplingParams
from mistralrs_cli.errors import MistralrsError
from mistralrs_cli.frontends.batch import answer_request
from mistralrs_cli.frontends.batch_io import BatchRequest


@dataclass(frozen=True)
class WorkerPlace:
    """Where a worker runs: its node's address and id, and its process."""

    node_ip: str
    node_id: str
    pid: int

    def describe(self) -> str:
        """"node 10.0.0.2 (id 3f2a9c1e)": what messages name."""
        return f"node {self.node_ip} (id {self.node_id[:8]})"


class BatchWorker:
    """Answers batch lines with its own Engine, built by the `open_engine` the CLI composed (pickled by Ray)."""

    def __init__(self, open_engine: Callable[[], Engine]) -> None:
        self._open_engine = open_engine
        self._engine: Engine | None = None

    async def where(self) -> WorkerPlace:
        """This worker's node and process."""
        import ray

        context = ray.get_runtime_context()
        return WorkerPlace(ray.util.get_node_ip_address(), context.get_node_id(), os.getpid())

    async def load(self) -> str | None:
        """Load the model and start the engine; the one-line reason it cannot, or None."""
        from mistralrs_cli.engine.threads import keep_main_thread_serial

        keep_main_thread_serial()  # torch's threads (OMP_NUM_THREADS = the worker's CPUs) go to the engine thread
        try:
            self._engine = self._open_engine()
        except MistralrsError as e:
            return e.message
        except Exception as e:  # an unexpected failure still names its worker's node, on one line
            lines = [line for line in str(e).splitlines() if line.strip()]
            return f"{type(e).__name__}: {lines[0]}" if lines else type(e).__name__
        return None

    async def answer(self, item: BatchRequest, defaults: SamplingParams) -> tuple[dict[str, Any], dict | None]:
        """One line's record and usage, exactly as single-machine batch makes them."""
        assert self._engine is not None, "load() first"
        return await answer_request(self._engine, item, defaults)

    async def close(self) -> None:
        """Stop the engine (the actor is killed afterwards)."""
        if self._engine is not None:
            self._engine.shutdown()
