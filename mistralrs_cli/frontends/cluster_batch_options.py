"""`batch --ray`'s settings, typed and checked before anything starts (no Ray import here)."""

from __future__ import annotations

from dataclasses import dataclass

from mistralrs_cli.errors import ConfigError

LOCAL = "local"  # `--ray` alone: start a Ray instance on this machine, stopped when the batch ends
AUTO = "auto"  # join the cluster named by RAY_ADDRESS, or the one `ray start` left on this machine
CLIENT_SCHEME = "ray://"


@dataclass(frozen=True)
class BatchCluster:
    """Where the engine workers run and what each one reserves on its node."""

    address: str = LOCAL  # "local", "auto", "host:port" (the head's GCS) or "ray://host:port" (Ray Client)
    workers: int = 1
    cpus_per_worker: float = 1.0  # also the torch threads of its engine (Ray sets OMP_NUM_THREADS)
    gpus_per_worker: float = 0.0

    @property
    def local(self) -> bool:
        """Whether this run starts (and stops) its own Ray instance."""
        return self.address == LOCAL

    def bundle(self) -> dict[str, float]:
        """One worker's reservation, as a placement-group bundle (Ray refuses zero amounts)."""
        wanted = {"CPU": self.cpus_per_worker, "GPU": self.gpus_per_worker}
        return {name: amount for name, amount in wanted.items() if amount > 0}

    def describe(self) -> str:
        """What one worker reserves, e.g. "1 CPU" or "4 CPUs, 1 GPU"."""
        parts = [_count(self.cpus_per_worker, "CPU")]
        if self.gpus_per_worker:
            parts.append(_count(self.gpus_per_worker, "GPU"))
        return ", ".join(parts)


def batch_cluster(address: str | None, workers: int | None, cpus: float | None,
                  gpus: float | None) -> BatchCluster | None:
    """The cluster settings of batch's flags (None without --ray); ConfigError (exit 2) for a bad value."""
    if address is None:
        given = [flag for flag, value in (("--workers", workers), ("--cpus-per-worker", cpus),
                                          ("--gpus-per-worker", gpus)) if value is not None]
        if given:
            raise ConfigError(f"{given[0]} only applies with --ray (a batch on a Ray cluster)")
        return None
    if not is_address(address):
        raise ConfigError(f"--ray {address!r}: expected no value (a local Ray instance), auto, host:port or "
                          "ray://host:port")
    if workers is not None and workers < 1:
        raise ConfigError(f"--workers {workers}: a batch on Ray needs at least one worker")
    for flag, value in (("--cpus-per-worker", cpus), ("--gpus-per-worker", gpus)):
        if value is not None and not value >= 0:  # `not >=`: also refuses nan
            raise ConfigError(f"{flag} {value}: expected a number of at least 0")
    defaults = BatchCluster()
    return BatchCluster(address=address, workers=defaults.workers if workers is None else workers,
                        cpus_per_worker=defaults.cpus_per_worker if cpus is None else cpus,
                        gpus_per_worker=defaults.gpus_per_worker if gpus is None else gpus)


def is_address(token: str) -> bool:
    """Whether `token` is one of --ray's address forms (so `--ray IN.jsonl` leaves the input file alone)."""
    return token in (LOCAL, AUTO) or host_port(token) is not None


def host_port(address: str) -> tuple[str, int] | None:
    """(host, port) of "host:port", "[v6]:port" or "ray://host:port"; None for anything else."""
    rest = address.removeprefix(CLIENT_SCHEME)
    host, sep, port = rest.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536 or "/" in host:
        return None
    return host, int(port)


def _count(value: float, unit: str) -> str:
    shown = f"{value:g}"
    return f"{shown} {unit}" if value == 1 else f"{shown} {unit}s"
