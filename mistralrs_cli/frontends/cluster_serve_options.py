"""`serve --ray`'s settings, typed and checked before anything starts (no Ray import here)."""

from __future__ import annotations

from dataclasses import dataclass

from mistralrs_cli.errors import ConfigError
from mistralrs_cli.frontends.cluster_batch_options import LOCAL, is_address


@dataclass(frozen=True)
class ServeCluster:
    """Where the replicas run and what each one takes from the cluster."""

    address: str = LOCAL  # "local", "auto", "host:port" (the head's GCS) or "ray://host:port" (Ray Client)
    replicas: int = 1
    cpus_per_replica: float = 1.0
    gpus_per_replica: float = 0.0

    @property
    def local(self) -> bool:
        """Whether this run starts (and later stops) its own Ray instance."""
        return self.address == LOCAL

    def bundle(self) -> dict[str, float]:
        """One replica's reservation (what it asks of a node; zero amounts left out)."""
        wanted = {"CPU": self.cpus_per_replica, "GPU": self.gpus_per_replica}
        return {name: amount for name, amount in wanted.items() if amount > 0}

    def describe(self) -> str:
        """What one replica asks for, e.g. "1 CPU" or "2 CPUs, 1 GPU"."""
        parts = [_count(self.cpus_per_replica, "CPU")]
        if self.gpus_per_replica:
            parts.append(_count(self.gpus_per_replica, "GPU"))
        return ", ".join(parts)


def serve_cluster(address: str | None, replicas: int | None, cpus: float | None,
                  gpus: float | None) -> ServeCluster | None:
    """The cluster settings of `serve`'s flags (None without --ray); ConfigError for a bad value."""
    if address is None:
        given = [flag for flag, value in (("--replicas", replicas), ("--cpus-per-replica", cpus),
                                          ("--gpus-per-replica", gpus)) if value is not None]
        if given:
            raise ConfigError(f"{given[0]} only applies with --ray (serve on a Ray cluster)")
        return None
    if not is_address(address):
        raise ConfigError(f"--ray {address!r}: expected no value (a local Ray instance), auto, host:port or "
                          "ray://host:port")
    if replicas is not None and replicas < 1:
        raise ConfigError(f"--replicas {replicas}: serving needs at least one replica")
    for flag, value in (("--cpus-per-replica", cpus), ("--gpus-per-replica", gpus)):
        if value is not None and not value >= 0:  # `not >=`: also refuses nan
            raise ConfigError(f"{flag} {value}: expected a number of at least 0")
    defaults = ServeCluster()
    return ServeCluster(address=address, replicas=defaults.replicas if replicas is None else replicas,
                        cpus_per_replica=defaults.cpus_per_replica if cpus is None else cpus,
                        gpus_per_replica=defaults.gpus_per_replica if gpus is None else gpus)


def _count(value: float, unit: str) -> str:
    shown = f"{value:g}"
    return f"{shown} {unit}" if value == 1 else f"{shown} {unit}s"
