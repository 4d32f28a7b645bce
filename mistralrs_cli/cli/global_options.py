"""The root command's options (given before the mode or model subcommand), typed."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from mistralrs_cli.errors import ConfigError

DEFAULT_HOST = "127.0.0.1"


@dataclass(frozen=True)
class GlobalOptions:
    """Options given before the mode or model subcommand (`mistralrs --max-seqs 8 chat ...`)."""

    port: int | None = None
    serve_ip: str = DEFAULT_HOST
    log: Path | None = None
    truncate_sequence: bool = False
    max_seqs: int | None = None
    prefix_cache: bool = True
    no_kv_cache: bool = False
    kv_cache_mem: float | None = None
    compile: bool | None = False  # None: where it can run (the command line's default)
    chat_template: str | None = None
    interactive: bool = False
    debug: bool = False

    def check_for(self, mode: str) -> None:
        """Refuse global options that `mode` would silently ignore (ConfigError)."""
        if mode != "serve" and self.port is not None:
            raise ConfigError(f"--port only applies to serving: use `mistralrs serve --port {self.port} ...` "
                              f"(or drop the mode: `mistralrs --port {self.port} MODEL`), not with {mode}")
        if mode != "serve" and self.serve_ip != DEFAULT_HOST:
            raise ConfigError(f"--serve-ip only applies to serving, not to {mode}")
        if mode in ("bench", "compile") and self.log is not None:
            raise ConfigError(f"--log records requests of chat, batch and serve; {mode} logs none")

