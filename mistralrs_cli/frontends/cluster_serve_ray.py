"""Reaching Ray for `serve --ray`: the extra with Ray Serve, a local instance or a cluster, room for the replicas.

Every wait is bounded, as for `batch --ray` (cluster_connect.py, whose connection, fit and
messages this shares): the address is probed first, `ray.init` runs under a watchdog, and
the replicas' needs are checked against the nodes before anything is deployed. Unlike the
batch, the workers' output reaches this process (the replicas' access log), and a join keeps
Ray's retry warnings off the terminal, reading them for the reason instead.
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile
import threading
from typing import IO, Any

from mistralrs_cli.errors import ConfigError
from mistralrs_cli.frontends.cluster_batch_options import AUTO
from mistralrs_cli.frontends.cluster_connect import (
    EXTRA,
    INIT_TIMEOUT_S,
    RayConnection,
    first_line,
    probe,
    wait_for_nodes,
)
from mistralrs_cli.frontends.cluster_serve_options import ServeCluster

# Ray sends its token only to a cluster it found itself, never to an address it was given.
AUTH_HINT = ("the cluster wants its auth token: set RAY_AUTH_MODE=token here, with the cluster's token in "
             "~/.ray/auth_token or RAY_AUTH_TOKEN")


def require_ray() -> None:
    """ConfigError naming the extra when Ray Serve is not installed."""
    # Read when ray is imported: Ray would fold the replicas' access-log lines into "[repeated Nx]".
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    try:
        import ray  # noqa: F401
        from ray import serve  # noqa: F401
    except ImportError:
        raise ConfigError(f"--ray needs Ray Serve, an optional extra: {EXTRA}") from None
    logging.getLogger("ray.serve").setLevel(logging.WARNING)  # not "Started Serve", "Deleting app"...


def connect(cluster: ServeCluster) -> RayConnection:
    """Start a local Ray instance or join the cluster at `cluster.address`, within a bounded time.

    ConfigError (one line) when the address does not answer or is not Ray. ray.init runs in
    the main thread (the processes of a local instance die with the thread that started
    them); a watchdog ends the process (exit 2, one line) if it has not returned in time,
    since a stuck ray.init cannot be interrupted.
    """
    address = cluster.address
    target = os.environ.get("RAY_ADDRESS") if address == AUTO else address
    if target and not cluster.local:
        probe(address, target, ConfigError)
    if cluster.local:  # include_dashboard: seconds of start-up and a port nobody asked for
        context = _init(address, "start", None, include_dashboard=False)
    else:
        # Ray's core logs a warning per second while it retries; kept aside, read for the reason.
        with tempfile.TemporaryFile("w+", encoding="utf-8", errors="replace") as said:
            context = _init(address, "join", said)
    # A Ray Client context (ray://) has no address_info: the address given is the one to name.
    gcs = getattr(context, "address_info", {}).get("gcs_address") or address
    return RayConnection(gcs_address=gcs, local=cluster.local)


def _init(address: str, verb: str, capture: IO[str] | None, **kwargs: Any) -> Any:
    """ray.init under the watchdog, with file descriptor 2 sent to `capture` meanwhile (when given)."""
    import ray

    saved = None
    if capture is not None:
        sys.stderr.flush()
        saved = os.dup(2)
        os.dup2(capture.fileno(), 2)
    watchdog = threading.Timer(INIT_TIMEOUT_S, _give_up, args=(address, saved))
    watchdog.daemon = True
    watchdog.start()
    try:
        return ray.init(address=address, logging_level=logging.ERROR, **kwargs)
    except Exception as e:  # ConnectionError, ValueError, RuntimeError...: Ray's reason, on one line
        reason = first_line(e)
        if capture is not None:
            capture.seek(0)
            if "InvalidAuthToken" in capture.read():
                reason = AUTH_HINT
        raise ConfigError(f"--ray {address}: cannot {verb} Ray ({reason})") from None
    finally:
        watchdog.cancel()
        if saved is not None:
            os.dup2(saved, 2)
            os.close(saved)


def _give_up(address: str, saved_stderr: int | None) -> None:
    if saved_stderr is not None:
        os.dup2(saved_stderr, 2)
    print(f"error: --ray {address}: no Ray cluster answered within {INIT_TIMEOUT_S:.0f} s", file=sys.stderr,
          flush=True)
    os._exit(2)


def wait_for_room(cluster: ServeCluster) -> None:
    """Until the cluster's live nodes can hold every replica; ConfigError after a bounded wait."""
    wait_for_nodes(cluster.local, cluster.bundle(), cluster.replicas, "replica", cluster.describe(), ConfigError)
