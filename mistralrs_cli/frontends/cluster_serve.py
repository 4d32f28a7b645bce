"""`mistralrs serve --ray [ADDRESS] --replicas N`: the OpenAI server as a Ray Serve deployment.

Each replica is one ordinary Engine behind the same FastAPI app as `serve`
(cluster_serve_replica.py); Ray Serve's proxy is the one HTTP entry point, on --serve-ip and
--port of the head node, and spreads requests over the replicas. This process stays in
front: it starts (or joins) Ray, deploys, says where it listens once every replica has
loaded, and on SIGINT/SIGTERM deletes the deployment (in-flight requests finish first, up to
the drain timeout) and stops the Ray instance it started.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from types import FrameType
from typing import Any

from rich.console import Console
from rich.markup import escape

from mistralrs_cli.engine import Engine
from mistralrs_cli.errors import ConfigError, MistralrsError
from mistralrs_cli.frontends.cluster_connect import RayConnection, first_line
from mistralrs_cli.frontends.cluster_serve_options import ServeCluster
from mistralrs_cli.frontends.cluster_serve_ray import connect, require_ray, wait_for_room
from mistralrs_cli.frontends.options import ServeOptions
from mistralrs_cli.frontends.request_log import RequestLog
from mistralrs_cli.frontends.server import bind_socket
from mistralrs_cli.frontends.server_http import is_loopback

APP_NAME = "mistralrs"  # the Serve application (and its one deployment)
PROXY_READY_S = 30.0  # after the replicas are up: the proxy must answer /health within this
TEARDOWN_MARGIN_S = 30.0  # stopping may take the drain timeout, plus this for Ray itself
SHUTDOWN_SIGNALS = (signal.SIGINT, signal.SIGTERM)
# The controller's log stays in Ray's files: a replica that fails to load would otherwise print
# Serve's traceback here before our one line (applies where this run starts Serve).
QUIET_CONTROLLER = {"runtime_env": {"env_vars": {"RAY_SERVE_LOG_TO_STDERR": "0"}}}
# The replicas would inherit that, and send their stderr (`serve`'s access log) to Serve's files.
LOUD_REPLICA = {"env_vars": {"RAY_SERVE_LOG_TO_STDERR": "1"}}
_LOOPBACK = {"0.0.0.0": "127.0.0.1", "::": "::1"}  # a wildcard bind, reached from here through loopback
stderr = Console(stderr=True)


def run_cluster_serve(options: ServeOptions, open_engine: Callable[[], Engine]) -> None:
    """Serve on Ray until SIGINT/SIGTERM; ConfigError (one line, exit 2) for every start-up fault."""
    cluster = options.cluster
    assert cluster is not None, "run_cluster_serve needs ServeOptions.cluster"
    require_ray()
    port = _port(options, cluster)
    if cluster.local and options.log_file is not None:
        RequestLog(options.log_file).close()  # the replicas append to it here: a bad path fails before Ray starts
    connection = connect(cluster)
    stop = threading.Event()
    # After ray.init, which sets its own SIGTERM handler (a bare exit) in the main thread.
    previous = {sig: signal.signal(sig, lambda s, f: _on_signal(stop, previous, s, f)) for sig in SHUTDOWN_SIGNALS}
    progress = Progress()
    try:
        wait_for_room(cluster)
        _deploy(options, cluster, port, open_engine, stop, progress)
        if stop.is_set():
            return
        url = _url(options.host, port)
        if cluster.local:
            _wait_for_proxy(_url(_LOOPBACK.get(options.host, options.host), port), stop)
        progress.serving = True
        stderr.print(f"[bold]mistralrs[/] listening on {url}/v1 ({cluster.replicas} "
                     f"{'replica' if cluster.replicas == 1 else 'replicas'} of {escape(options.model_name)}, "
                     f"{cluster.describe()} each, on {connection.describe()})", highlight=False, soft_wrap=True)
        if not is_loopback(options.host) and not options.api_key:
            stderr.print("[yellow]warning:[/] listening beyond loopback without --api-key", highlight=False,
                         soft_wrap=True)
        while not stop.wait(0.5):
            pass
    finally:
        _restore(previous)
        _teardown(connection, progress, options.drain_timeout)


@dataclass
class Progress:
    """How far the start went: what teardown has to undo."""

    serve_started: bool = False  # Serve runs on the cluster (started here, or already there)
    deployed: bool = False  # our application exists: teardown deletes it (never another run's)
    serving: bool = False  # it was ready and said so


def _port(options: ServeOptions, cluster: ServeCluster) -> int:
    """The port the proxy will take: checked (and chosen, for 0) here when Ray runs on this machine."""
    if not cluster.local:
        if options.port == 0:
            raise ConfigError("--port 0 picks a free port on this machine only; with --ray ADDRESS give the port "
                              "the head node should listen on")
        return options.port
    sock = bind_socket(options.host, options.port)  # "cannot listen on ..." exactly as `serve`
    try:
        return sock.getsockname()[1]
    finally:
        sock.close()  # Serve's proxy binds it next


def _on_signal(stop: threading.Event, previous: dict[int, Any], sig: int, frame: FrameType | None) -> None:
    """First signal: stop. A second one acts as it would have without us (Ctrl-C twice forces)."""
    if stop.is_set():
        _restore(previous)
        signal.raise_signal(sig)
        return
    stop.set()


def _restore(previous: dict[int, Any]) -> None:
    for sig, handler in previous.items():
        signal.signal(sig, handler)


def _deploy(options: ServeOptions, cluster: ServeCluster, port: int, open_engine: Callable[[], Engine],
            stop: threading.Event, progress: Progress) -> None:
    """Start Serve's proxy, deploy the replicas and wait until each has loaded its model (or a signal)."""
    from ray import serve

    from mistralrs_cli.frontends.cluster_serve_replica import SHUTDOWN_MARGIN_S, MistralrsReplica

    quiet = {"log_level": "WARNING", "enable_access_log": False}  # the replicas write `serve`'s access log
    serve.start(proxy_location="HeadOnly", http_options={"host": options.host, "port": port}, logging_config=quiet,
                controller_options=QUIET_CONTROLLER)
    progress.serve_started = True
    if APP_NAME in serve.status().applications:
        raise ConfigError(f"the Ray cluster already serves a {APP_NAME!r} application (another `serve --ray`?); "
                          f"stop that one first (Ctrl-C in its terminal, or serve.delete({APP_NAME!r}))")
    deployment = serve.deployment(
        MistralrsReplica,
        name=APP_NAME,
        num_replicas=cluster.replicas,
        ray_actor_options={"num_cpus": cluster.cpus_per_replica, "num_gpus": cluster.gpus_per_replica,
                           "runtime_env": LOUD_REPLICA},
        # The replica admits (429 past max_queue engine requests, as `serve`): Serve must neither
        # cap it at its default of 5 nor hold requests back in the proxy's queue at max_queue.
        max_ongoing_requests=2 * options.max_queue,
        graceful_shutdown_timeout_s=options.drain_timeout + SHUTDOWN_MARGIN_S,
        max_constructor_retry_count=cluster.replicas,  # a model that cannot load fails once per replica
        logging_config=quiet,
    )
    outcome: dict[str, BaseException] = {}
    progress.deployed = True

    def run() -> None:
        try:
            serve.run(deployment.bind(options, open_engine), name=APP_NAME, route_prefix="/")
        except BaseException as e:  # kept for the main thread, which reports it
            outcome["error"] = e

    thread = threading.Thread(target=run, name="mistralrs-deploy", daemon=True)
    thread.start()
    while thread.is_alive() and not stop.is_set():
        thread.join(0.5)
    if "error" in outcome:
        raise MistralrsError(_failure_line(outcome["error"]))


def _failure_line(error: BaseException) -> str:
    """The replica's own line when it could not start (from the deployment's status, which holds
    the replica's traceback); otherwise Serve's first line."""
    from ray import serve

    from mistralrs_cli.frontends.cluster_serve_replica import START_FAILED

    try:
        app = serve.status().applications.get(APP_NAME)
        said = [d.message for d in app.deployments.values()] if app is not None else []
    except Exception:  # the controller is gone too: Serve's own words will do
        said = []
    found = START_FAILED.search("\n".join([*said, str(error)]))
    return found.group(0).strip() if found else f"the deployment failed: {first_line(error)}"


def _wait_for_proxy(url: str, stop: threading.Event) -> None:
    """Until Serve's proxy answers /health with 200 (ConfigError after PROXY_READY_S)."""
    deadline = time.monotonic() + PROXY_READY_S
    while not stop.is_set():
        try:
            with urllib.request.urlopen(url + "/health", timeout=5) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass  # not bound yet, or a 503 while routes propagate
        if time.monotonic() >= deadline:
            raise ConfigError(f"the replicas are up but Ray Serve's proxy does not answer on {url} "
                              f"within {PROXY_READY_S:.0f} s")
        time.sleep(0.2)


def _url(host: str, port: int) -> str:
    return f"http://{f'[{host}]' if ':' in host else host}:{port}"


def _teardown(connection: RayConnection, progress: Progress, drain_timeout: float) -> None:
    """Delete the deployment (Serve drains its replicas), stop Serve where nothing else uses it, and
    stop the local Ray instance or leave the cluster. Faults here are reported, never raised."""
    from ray import serve

    if progress.serving:
        print("shutting down", file=sys.stderr, flush=True)
    # A signal sent to the whole process group (systemd, `timeout`) also stops the local Ray
    # instance's GCS, and Ray then retries for a minute: give up sooner.
    watchdog = threading.Timer(drain_timeout + TEARDOWN_MARGIN_S, _teardown_stuck)
    watchdog.daemon = True
    watchdog.start()
    try:
        if progress.deployed:
            serve.delete(APP_NAME)
        # A local instance stops whole below (stopping Serve first only makes Ray complain about
        # the controller it kills); on a cluster, Serve stays for the applications of others.
        if progress.serve_started and not connection.local and not serve.status().applications:
            serve.shutdown()
    except Exception as e:  # a cluster that went away: nothing left to stop there
        print(f"warning: stopping the deployment: {first_line(e)}", file=sys.stderr, flush=True)
    finally:
        connection.close()
        watchdog.cancel()


def _teardown_stuck() -> None:
    print("warning: Ray did not stop in time (did its processes get the signal too?); exiting", file=sys.stderr,
          flush=True)
    os._exit(1)
