"""What each frontend is told: typed, validated options built once by the CLI (chat, batch, serve, bench)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from mistralrs_cli.engine import SamplingParams
from mistralrs_cli.errors import ConfigError
from mistralrs_cli.frontends.chat_constraint import Constraint
from mistralrs_cli.frontends.cluster_batch_options import BatchCluster
from mistralrs_cli.frontends.cluster_serve_options import ServeCluster

# CLI chat and batch are greedy unless told otherwise: reproducible answers by default.
CLI_DEFAULTS: dict[str, Any] = {"temperature": 0.0}
DEFAULT_PORT = 1234
MIB = 1 << 20


def cli_sampling(*, temperature: float | None = None, top_p: float | None = None, top_k: int | None = None,
                 max_tokens: int | None = None, seed: int | None = None) -> SamplingParams:
    """The sampling flags of chat/batch over the CLI defaults (unset flags skipped); RequestError if invalid."""
    flags = {"temperature": temperature, "top_p": top_p, "top_k": top_k, "max_tokens": max_tokens, "seed": seed}
    return SamplingParams.from_dict({**CLI_DEFAULTS, **{k: v for k, v in flags.items() if v is not None}})


def explicit_values(params: SamplingParams) -> dict[str, Any]:
    """The fields of `params` that differ from the engine's defaults (what the flags said), for logs."""
    default = SamplingParams()
    return {f.name: getattr(params, f.name) for f in fields(params)
            if f.compare and getattr(params, f.name) != getattr(default, f.name)}


@dataclass(frozen=True)
class ChatOptions:
    """`mistralrs chat`: the sampling defaults (session /params override them per message), the output
    constraint and the I/O."""

    sampling: SamplingParams
    system: str | None = None
    messages_file: Path | None = None  # one-shot: a JSON list of messages ('-' = stdin)
    markdown: bool = True
    log_file: Path | None = None  # --log
    # --json-schema / --regex: every answer (one-shot and REPL) is held to it; the REPL's /schema changes it.
    constraint: Constraint | None = None


@dataclass(frozen=True)
class BatchOptions:
    """`mistralrs batch`: the input, where answers go, and the defaults each line's fields override."""

    input_file: Path
    sampling: SamplingParams
    output: Path | None = None  # default: INPUT.out.jsonl beside the input
    max_concurrency: int = 64  # with --ray: per worker
    log_file: Path | None = None  # --log
    cluster: BatchCluster | None = None  # --ray: engine workers on a Ray cluster (frontends/cluster_batch.py)


@dataclass(frozen=True)
class BenchOptions:
    """`mistralrs bench`: the synthetic load; with `against`, the engine beside another on the same file."""

    concurrency: int = 32
    tokens: int = 64
    prompt_len: int = 64
    json_out: bool = False
    seed: int = 0
    against: str | None = None  # "llama.cpp": batch-1 rounds beside llama-cpp-python (frontends/bench_against.py)
    llama_python: str | None = None  # the interpreter that has llama_cpp (default: this one)
    rounds: int = 3  # interleaved rounds; the best of each engine is reported
    gguf_path: Path | None = None  # the model's GGUF file, resolved by the CLI (the peer loads the same file)


@dataclass(frozen=True)
class ServeOptions:
    """`mistralrs serve`: how the server listens and what it admits."""

    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT  # 0 picks a free port
    api_key: str | None = None  # Bearer token required on /v1 routes; None or "" disables auth
    log_file: Path | None = None  # one JSON line per request (--log)
    max_body_bytes: int = 8 * MIB  # larger request bodies get 413
    # Engine requests admitted at once (running + waiting); beyond it clients get 429.
    max_queue: int = 256
    drain_timeout: float = 10.0  # seconds in-flight requests may finish after SIGINT/SIGTERM
    # --served-model-name: the names /v1/models lists (the first is reported in responses);
    # empty: the loaded model's name.
    served_names: tuple[str, ...] = ()
    # Also accepted as a request's `model` (reported as the first served name): the model
    # path or id given on the command line.
    model_aliases: tuple[str, ...] = ()
    access_log: bool = True  # one uvicorn-style line per request on stderr (off with --quiet)
    # --allowed-hosts: Host names accepted beyond the loopback names (the DNS-rebinding guard);
    # "*" accepts any. Bound beyond loopback, an empty tuple means no Host check.
    allowed_hosts: tuple[str, ...] = ()
    model_name: str = "model"  # shown while the model loads (the CLI passes the spec's display name)
    debug: bool = False  # uvicorn logs at debug level
    ui: bool = True  # the browser chat page at / and /ui (off with --no-ui)
    cluster: ServeCluster | None = None  # --ray: replicas on a Ray cluster (frontends/cluster_serve.py)


def serve_options(*, port: int | None, host: str, api_key: str | None, api_key_file: Path | None,
                  served_model_name: list[str] | None, quiet: bool, allowed_hosts: list[str] | None,
                  log_file: Path | None, debug: bool, model_name: str,
                  model_aliases: tuple[str, ...], cluster: ServeCluster | None = None, ui: bool = True) -> ServeOptions:
    """ServeOptions from `serve`'s resolved flags; ConfigError for a bad value or an unreadable key file."""
    names = tuple(served_model_name or ())
    for name in names:
        if not name.strip():
            raise ConfigError("--served-model-name must not be empty")
    return ServeOptions(
        host=host,
        port=DEFAULT_PORT if port is None else port,
        api_key=_api_key(api_key, api_key_file),
        log_file=log_file,
        served_names=tuple(dict.fromkeys(names)),  # repeated names listed once
        model_aliases=model_aliases,
        access_log=not quiet,
        allowed_hosts=parse_allowed_hosts(allowed_hosts or ()),
        model_name=model_name,
        debug=debug,
        cluster=cluster,
        ui=ui,
    )


def parse_allowed_hosts(values: Sequence[str]) -> tuple[str, ...]:
    """--allowed-hosts values (each may be a comma list) as host names without ports; ConfigError if malformed."""
    names: list[str] = []
    for value in values:
        for item in value.split(","):
            name = host_name(item)
            if not name or any(c.isspace() or c in "/?#@" for c in name):
                raise ConfigError(f"--allowed-hosts {item.strip()!r}: expected a host name such as example.com, "
                                  "an address, or *")
            names.append(name)
    return tuple(dict.fromkeys(names))


def host_name(header: str) -> str:
    """The name in a Host header, without its port: "[::1]:8080" -> "[::1]", "Example.com:80" -> "example.com"."""
    header = header.strip().lower()
    if header.startswith("["):
        return header[: header.find("]") + 1] if "]" in header else header
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


def _api_key(given: str | None, key_file: Path | None) -> str | None:
    """The key from --api-key (or MISTRALRS_API_KEY, resolved by the CLI) or from --api-key-file (never both)."""
    if key_file is None:
        return given or None
    if given:
        raise ConfigError("--api-key and --api-key-file: give only one")
    try:
        key = Path(key_file).read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as e:
        reason = e.strerror if isinstance(e, OSError) else "not UTF-8 text"
        raise ConfigError(f"--api-key-file {key_file}: cannot read it ({reason})") from None
    if not key or any(c.isspace() for c in key):
        raise ConfigError(f"--api-key-file {key_file}: expected one line holding the key")
    return key
