"""Reaching Ray for `batch --ray`: the optional extra, a local instance or a cluster, room for the workers.

Every wait is bounded: Ray's own connect retries for minutes (a warning every few seconds)
when nothing answers at the address, and a worker that asks for more than any node has waits
for ever. So the address is probed first, `ray.init` runs under a watchdog, and the workers'
needs are checked against the nodes before anything is placed.
"""

from __future__ import annotations

import logging
import math
import os
import socket
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any

from mistralrs_cli.errors import MistralrsError
from mistralrs_cli.frontends.cluster_batch_options import AUTO, BatchCluster, host_port

EXTRA = 'pip install -e ".[cluster]"'
PROBE_TIMEOUT_S = 5.0  # one TCP connect to the address
INIT_TIMEOUT_S = 60.0  # ray.init once the port answers (it may answer without being Ray)
ROOM_WAIT_S = 10.0  # a joined cluster: nodes still starting may join meanwhile
EPSILON = 1e-9  # fractional resources: 0.1 * 10 must fit in 1.0


class ClusterError(MistralrsError):
    """Ray is missing, unreachable or too small, or a worker cannot start: one line, exit 2."""


def require_ray() -> None:
    """ClusterError naming the extra when Ray is not installed."""
    try:
        import ray  # noqa: F401
    except ImportError:
        raise ClusterError(f"--ray needs Ray, an optional extra: {EXTRA}") from None


@dataclass(frozen=True)
class RayConnection:
    """The cluster this run talks to."""

    gcs_address: str  # host:port of the head's GCS
    local: bool  # this run started it: the end of the run stops it

    def describe(self) -> str:
        """For messages: "a local Ray instance at ..." or "the Ray cluster at ..."."""
        return f"a local Ray instance at {self.gcs_address}" if self.local else f"the Ray cluster at {self.gcs_address}"

    def close(self) -> None:
        """Disconnect (and stop the instance this run started)."""
        import ray

        ray.shutdown()


def connect(cluster: BatchCluster) -> RayConnection:
    """Start a local Ray instance or join the cluster at `cluster.address`, within a bounded time.

    ClusterError (one line) when the address does not answer or is not Ray. A watchdog ends the
    process (exit 2, one line) if ray.init has not returned in time: a stuck ray.init cannot be
    interrupted.
    """
    import ray

    address = cluster.address
    target = os.environ.get("RAY_ADDRESS") if address == AUTO else address
    if target and not cluster.local:
        probe(address, target)
    # Ray's start-up notices are not ours to show; the workers' logs stay in Ray's session
    # folder (the driver's stderr holds the progress bar).
    kwargs: dict[str, Any] = {"logging_level": logging.ERROR, "log_to_driver": False}
    if cluster.local:
        kwargs["include_dashboard"] = False  # seconds of start-up and a port nobody asked for
    watchdog = threading.Timer(INIT_TIMEOUT_S, _give_up, args=(address,))
    watchdog.daemon = True
    watchdog.start()
    try:
        context = ray.init(address=address, **kwargs)
    except Exception as e:  # ConnectionError, ValueError, RuntimeError...: Ray's reason, on one line
        verb = "start" if cluster.local else "join"
        raise ClusterError(f"--ray {address}: cannot {verb} Ray ({_reason(e)})") from None
    finally:
        watchdog.cancel()
    # A Ray Client context (ray://) has no address_info: the address given is the one to name.
    gcs = getattr(context, "address_info", {}).get("gcs_address") or address
    return RayConnection(gcs_address=gcs, local=cluster.local)


def _reason(error: BaseException) -> str:
    """Ray's reason on one line; a refused token (Ray 2.60 clusters use one) says what to set."""
    from ray.exceptions import AuthenticationError

    cause: BaseException | None = error
    while cause is not None:
        if isinstance(cause, AuthenticationError) or "InvalidAuthToken" in str(cause):  # Ray wraps it in text
            return ("the cluster wants its auth token: set RAY_AUTH_MODE=token here, with the cluster's token in "
                    "~/.ray/auth_token or RAY_AUTH_TOKEN")
        cause = cause.__cause__ or cause.__context__
    return first_line(error)


def _give_up(address: str) -> None:
    print(f"error: --ray {address}: no Ray cluster answered within {INIT_TIMEOUT_S:.0f} s", file=sys.stderr,
          flush=True)
    os._exit(2)


def probe(address: str, target: str, error: type[MistralrsError] = ClusterError) -> None:
    """One TCP connect to the address, so that a wrong one fails in seconds (`error`, one line)."""
    parsed = host_port(target)
    if parsed is None:
        raise error(f"--ray {address}: RAY_ADDRESS {target!r} is not host:port or ray://host:port")
    host, port = parsed
    try:
        with socket.create_connection((host, port), timeout=PROBE_TIMEOUT_S):
            pass
    except OSError as e:
        reason = "no answer" if isinstance(e, TimeoutError) else (e.strerror or str(e))
        raise error(f"--ray {address}: cannot reach a Ray cluster at {host}:{port} ({reason}; "
                    f"is `ray start --head` running there?)") from None


def workers_that_fit(nodes: list[dict[str, float]], bundle: dict[str, float]) -> float:
    """How many workers reserving `bundle` the nodes' total resources hold (inf when a worker reserves nothing)."""
    total = 0.0
    for resources in nodes:
        per_node = math.inf
        for name, need in bundle.items():
            per_node = min(per_node, math.floor(resources.get(name, 0.0) / need + EPSILON))
        total += per_node
    return total


def wait_for_room(cluster: BatchCluster) -> None:
    """Until the cluster's live nodes can hold every worker; ClusterError after a bounded wait."""
    wait_for_nodes(cluster.local, cluster.bundle(), cluster.workers, "worker", cluster.describe(), ClusterError)


def wait_for_nodes(local: bool, bundle: dict[str, float], count: int, noun: str, each: str,
                   error: type[MistralrsError]) -> None:
    """Until the live nodes can hold `count` `noun`s reserving `bundle` each; `error` after a bounded wait.

    Totals, not what is free now: workers may wait for resources another job holds, never for
    resources no node has. A local instance's nodes are all there: no wait. The flags named in
    the message are --{noun}s, --cpus-per-{noun} and --gpus-per-{noun}.
    """
    import ray

    deadline = time.monotonic() + (0.0 if local else ROOM_WAIT_S)
    while True:
        nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
        fit = workers_that_fit(nodes, bundle)
        if fit >= count:
            return
        if time.monotonic() >= deadline:
            cpus = sum(n.get("CPU", 0.0) for n in nodes)
            gpus = sum(n.get("GPU", 0.0) for n in nodes)
            raise error(
                f"the Ray cluster cannot hold {count} {noun}{'' if count == 1 else 's'} of {each} each: its "
                f"{len(nodes)} node(s) have {cpus:g} CPUs and {gpus:g} GPUs in all, room for {fit:g} "
                f"(see --{noun}s, --cpus-per-{noun}, --gpus-per-{noun})")
        time.sleep(1.0)


def first_line(error: BaseException) -> str:
    """An exception's message on one line (Ray's often span many).

    A first line that only announces what follows ("Initialization failure from server:", then
    the server's traceback) gets the last line too, which names the exception.
    """
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    if not lines:
        return type(error).__name__
    return f"{lines[0]} {lines[-1]}" if lines[0].endswith(":") and len(lines) > 1 else lines[0]
