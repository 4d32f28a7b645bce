"""The engine workers of `batch --ray`: placed together, loaded, picked least-busy first, replaced when lost.

All N workers are reserved at once by one placement group (one bundle each, spread over the
nodes), so a worker that dies leaves its bundle's resources to its replacement. Only the driver
decides what is answered: a lost worker's unfinished requests come back to the driver as
`WorkerLost`, which sends them again elsewhere and writes each answer once, when it arrives.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from mistralrs_cli.engine import Engine, SamplingParams
from mistralrs_cli.frontends.batch_io import BatchRequest
from mistralrs_cli.frontends.cluster_batch_options import BatchCluster
from mistralrs_cli.frontends.cluster_batch_worker import BatchWorker, WorkerPlace
from mistralrs_cli.frontends.cluster_connect import ClusterError, first_line

START_WAIT_S = 120.0  # a placed worker's process must answer within this (imports, unpickling the factory)
ROOM_NOTICE_S = 10.0  # then say that the workers wait for resources other jobs hold
RESTARTS_PER_SLOT = 3  # a worker that keeps dying is not replaced for ever
CALLS_BESIDE_ANSWERS = 4  # max_concurrency beyond the answers in flight: close() and the like


class WorkerLost(Exception):
    """The worker answering a request died (or became unreachable) before the answer came back."""

    def __init__(self, worker: Worker, reason: str) -> None:
        super().__init__(reason)
        self.worker = worker
        self.reason = reason


@dataclass
class SlotStats:
    """What one worker slot did over the run, replacements included (for the progress rows and the summary)."""

    slot: int
    place: WorkerPlace | None = None
    served: int = 0
    completion_tokens: int = 0
    restarts: int = 0
    retired: str | None = None  # why the slot has no worker any more

    def label(self) -> str:
        """"worker 2 on node 10.0.0.2 (id 3f2a9c1e)"."""
        where = f" on {self.place.describe()}" if self.place else ""
        return f"worker {self.slot}{where}"


@dataclass
class Worker:
    """One live actor of a slot."""

    stats: SlotStats
    actor: Any
    place: WorkerPlace
    in_flight: int = 0
    alive: bool = True


@dataclass
class WorkerPool:
    """The workers of one run; `start` before use, `stop` at the end (whatever happened)."""

    cluster: BatchCluster
    open_engine: Callable[[], Engine]
    per_worker: int  # requests in flight on one worker (--max-concurrency)
    notify: Callable[[str], None]  # a line for the user (a lost worker, a replacement)
    slots: list[SlotStats] = field(default_factory=list)
    workers: list[Worker] = field(default_factory=list)
    starting: set[asyncio.Task] = field(default_factory=set)  # replacements on their way
    _group: Any = None
    _actors: list[Any] = field(default_factory=list)  # every actor made, for stop()

    async def start(self) -> None:
        """Reserve, place and load every worker; ClusterError naming the node of the first that cannot load."""
        from ray.util.placement_group import placement_group

        self.slots = [SlotStats(i + 1) for i in range(self.cluster.workers)]
        self._group = placement_group([self.cluster.bundle()] * self.cluster.workers, strategy="SPREAD")
        ready = _future(self._group.ready())
        done, _ = await asyncio.wait({ready}, timeout=ROOM_NOTICE_S)
        if not done:
            self.notify(f"waiting for the cluster to free {self.cluster.workers} x ({self.cluster.describe()}) "
                        "held by other jobs...")
        await ready
        self.workers = list(await asyncio.gather(*(self._launch(stats) for stats in self.slots)))

    def pick(self) -> Worker | None:
        """The live worker with the fewest requests in flight, if one has room."""
        live = [w for w in self.workers if w.alive and w.in_flight < self.per_worker]
        return min(live, key=lambda w: w.in_flight) if live else None

    @property
    def alive(self) -> int:
        """Workers that can take requests now."""
        return sum(w.alive for w in self.workers)

    def send(self, worker: Worker, item: BatchRequest, defaults: SamplingParams) -> asyncio.Task:
        """Send one line to `worker` now (counted in flight at once, so the next `pick` sees it)."""
        worker.in_flight += 1
        return asyncio.ensure_future(self._answer(worker, item, defaults))

    async def _answer(self, worker: Worker, item: BatchRequest,
                      defaults: SamplingParams) -> tuple[dict[str, Any], dict | None]:
        """The line's record and usage from `worker`; WorkerLost when the worker dies first."""
        from ray.exceptions import RayActorError

        try:
            record, usage = await _future(worker.actor.answer.remote(item, defaults))
        except RayActorError as e:
            raise WorkerLost(worker, first_line(e)) from None
        finally:
            worker.in_flight -= 1
        worker.stats.served += 1
        worker.stats.completion_tokens += (usage or {}).get("completion_tokens", 0)
        return record, usage

    def lost(self, worker: Worker, reason: str) -> None:
        """Retire a dead worker (once) and start its replacement while the slot has restarts left."""
        import ray

        if not worker.alive:
            return
        worker.alive = False
        ray.kill(worker.actor, no_restart=True)  # an unreachable one must not come back and answer too
        stats = worker.stats
        if stats.restarts >= RESTARTS_PER_SLOT:
            stats.retired = f"died {stats.restarts + 1} times"
            self.notify(f"{stats.label()} died ({reason}); not replaced again (it died {stats.restarts + 1} times)")
            return
        stats.restarts += 1
        self.notify(f"{stats.label()} died ({reason}); its unfinished requests go to the other workers, "
                    "and a replacement is loading")
        task = asyncio.ensure_future(self._replace(stats))
        self.starting.add(task)
        task.add_done_callback(self.starting.discard)

    async def _replace(self, stats: SlotStats) -> None:
        try:
            worker = await self._launch(stats)
        except ClusterError as e:
            stats.retired = e.message
            self.notify(f"cannot replace worker {stats.slot}: {e.message}")
            return
        self.workers.append(worker)
        self.notify(f"{stats.label()} is back (replacement {stats.restarts})")

    async def _launch(self, stats: SlotStats) -> Worker:
        """Start the actor of a slot in its bundle and load the model; ClusterError naming its node."""
        import ray
        from ray.exceptions import RayActorError
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        index = stats.slot - 1
        strategy = PlacementGroupSchedulingStrategy(self._group, placement_group_bundle_index=index)
        actor = ray.remote(BatchWorker).options(
            num_cpus=self.cluster.cpus_per_worker, num_gpus=self.cluster.gpus_per_worker,
            max_concurrency=self.per_worker + CALLS_BESIDE_ANSWERS, max_restarts=0, scheduling_strategy=strategy,
        ).remote(self.open_engine)
        self._actors.append(actor)
        try:
            place = await asyncio.wait_for(_future(actor.where.remote()), START_WAIT_S)
        except asyncio.TimeoutError:
            raise ClusterError(f"worker {stats.slot} on {self._bundle_node(index)} did not start within "
                               f"{START_WAIT_S:.0f} s") from None
        except RayActorError as e:  # e.g. mistralrs is not installed on that node
            raise ClusterError(f"worker {stats.slot} on {self._bundle_node(index)} could not start: "
                               f"{first_line(e)}") from None
        stats.place = place
        started = time.perf_counter()
        try:
            failure = await _future(actor.load.remote())
        except RayActorError as e:  # the process died loading (out of memory...)
            raise ClusterError(f"worker {stats.slot} on {place.describe()} died loading the model: "
                               f"{first_line(e)}") from None
        if failure is not None:
            raise ClusterError(f"worker {stats.slot} on {place.describe()} cannot load the model: {failure}")
        self.notify(f"{stats.label()} loaded the model in {time.perf_counter() - started:.1f} s (pid {place.pid})")
        return Worker(stats, actor, place)

    def _bundle_node(self, index: int) -> str:
        """The node a bundle was placed on, for messages about a worker that never said where it was."""
        import ray
        from ray.util.placement_group import placement_group_table

        node_id = placement_group_table(self._group).get("bundles_to_node_id", {}).get(index)
        ips = {n["NodeID"]: n.get("NodeManagerAddress", "?") for n in ray.nodes()}
        return f"node {ips.get(node_id, '?')} (id {str(node_id)[:8]})" if node_id else "an unplaced bundle"

    def stop(self) -> None:
        """Kill every actor and free the reservation (the end of the run, whatever happened)."""
        import ray
        from ray.util.placement_group import remove_placement_group

        for task in self.starting:
            task.cancel()
        for actor in self._actors:
            ray.kill(actor, no_restart=True)
        if self._group is not None:
            remove_placement_group(self._group)


def _future(ref: Any) -> asyncio.Future:
    """An ObjectRef as an asyncio future of this loop."""
    return asyncio.wrap_future(ref.future())
