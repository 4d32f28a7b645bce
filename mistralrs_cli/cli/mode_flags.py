"""Each mode's command-line flags, typed, and their conversion to the frontends' options.

`Invocation` (typer's ctx.obj) carries the global options and the chosen mode's flags.

The mode callbacks only record flags; the conversion (which validates: sampling values, the
API key file...) runs after the global options are checked and before the model loads.
The frontends are imported inside the methods so that `mistralrs --help` stays fast.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

from mistralrs_cli.cli.global_options import DEFAULT_HOST, GlobalOptions

if TYPE_CHECKING:
    from mistralrs_cli.cli.spec import ModelSpec
    from mistralrs_cli.engine import SamplingParams
    from mistralrs_cli.frontends.options import (
        BatchOptions,
        BenchOptions,
        ChatOptions,
        ServeOptions,
    )


@dataclass(frozen=True)
class SamplingFlags:
    """--temperature, --top-p, --top-k, --max-tokens, --seed (None: not given)."""

    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    max_tokens: int | None = None
    seed: int | None = None

    def params(self) -> SamplingParams:
        """The flags over the CLI defaults (greedy), validated once: RequestError for a bad value."""
        from mistralrs_cli.frontends.options import cli_sampling

        return cli_sampling(**asdict(self))


@dataclass(frozen=True)
class ChatFlags:
    """`mistralrs chat` (also the top-level form without --port, and -i)."""

    mode: ClassVar[str] = "chat"
    system: str | None = None
    messages: Path | None = None
    markdown: bool = True
    sampling: SamplingFlags = SamplingFlags()
    json_schema: Path | None = None  # --json-schema FILE
    regex: str | None = None  # --regex PATTERN

    def options(self, g: GlobalOptions) -> ChatOptions:
        """The chat frontend's options; the constraint's file is read now (RequestError: one line, exit 2)."""
        from mistralrs_cli.frontends.chat_constraint import flags_constraint
        from mistralrs_cli.frontends.options import ChatOptions

        return ChatOptions(sampling=self.sampling.params(), system=self.system, messages_file=self.messages,
                           markdown=self.markdown, log_file=g.log,
                           constraint=flags_constraint(self.json_schema, self.regex))


@dataclass(frozen=True)
class BatchFlags:
    """`mistralrs batch INPUT`."""

    mode: ClassVar[str] = "batch"
    input_file: Path
    output: Path | None = None
    max_concurrency: int = 64
    sampling: SamplingFlags = SamplingFlags()
    ray: str | None = None  # --ray [ADDRESS]: "local" when given alone
    workers: int | None = None  # --workers, --cpus-per-worker, --gpus-per-worker (None: not given)
    cpus_per_worker: float | None = None
    gpus_per_worker: float | None = None

    def options(self, g: GlobalOptions) -> BatchOptions:
        """The batch frontend's options; the --ray flags are checked here (ConfigError, before anything loads)."""
        from mistralrs_cli.frontends.cluster_batch_options import batch_cluster
        from mistralrs_cli.frontends.options import BatchOptions

        cluster = batch_cluster(self.ray, self.workers, self.cpus_per_worker, self.gpus_per_worker)
        return BatchOptions(input_file=self.input_file, sampling=self.sampling.params(), output=self.output,
                            max_concurrency=self.max_concurrency, log_file=g.log, cluster=cluster)


@dataclass(frozen=True)
class ServeFlags:
    """`mistralrs serve` (also the top-level form with --port)."""

    mode: ClassVar[str] = "serve"
    port: int | None = None
    serve_ip: str = DEFAULT_HOST
    api_key: str | None = None  # --api-key or MISTRALRS_API_KEY, read once by typer
    api_key_file: Path | None = None
    allowed_hosts: list[str] | None = None
    served_model_name: list[str] | None = None
    quiet: bool = False
    ray: str | None = None  # --ray [ADDRESS]: "local" when given alone
    replicas: int | None = None  # --replicas, --cpus-per-replica, --gpus-per-replica (None: not given)
    cpus_per_replica: float | None = None
    gpus_per_replica: float | None = None
    no_ui: bool = False

    def options(self, g: GlobalOptions, spec: ModelSpec) -> ServeOptions:
        """The server's options; `serve`'s --port/--serve-ip fall back to the root's (original form)."""
        from mistralrs_cli.frontends.cluster_serve_options import serve_cluster
        from mistralrs_cli.frontends.options import serve_options

        host = self.serve_ip or DEFAULT_HOST
        if host == DEFAULT_HOST:  # `serve` left its default: the root's --serve-ip may say otherwise
            host = g.serve_ip
        return serve_options(
            port=self.port if self.port is not None else g.port, host=host, api_key=self.api_key or None,
            api_key_file=self.api_key_file, served_model_name=self.served_model_name, quiet=self.quiet,
            allowed_hosts=self.allowed_hosts, log_file=g.log, debug=g.debug, model_name=spec.display_name,
            model_aliases=spec.command_line_names(),
            cluster=serve_cluster(self.ray, self.replicas, self.cpus_per_replica, self.gpus_per_replica),
            ui=not self.no_ui,
        )


@dataclass(frozen=True)
class BenchFlags:
    """`mistralrs bench`."""

    mode: ClassVar[str] = "bench"
    concurrency: int = 32
    tokens: int = 64
    prompt_len: int = 64
    json_out: bool = False
    against: str | None = None  # --against llama.cpp
    llama_python: str | None = None
    rounds: int | None = None  # None: not given (3 with --against)

    def check(self) -> None:
        """Refuse a peer we do not know, and --rounds/--llama-python without --against (ConfigError)."""
        from mistralrs_cli.errors import ConfigError
        from mistralrs_cli.frontends.bench_against import PEERS

        if self.against is not None and self.against not in PEERS:
            raise ConfigError(f"bench --against {self.against}: the only peer is {', '.join(PEERS)}")
        if self.against is None:
            for flag, value in (("--rounds", self.rounds), ("--llama-python", self.llama_python)):
                if value is not None:
                    raise ConfigError(f"{flag} only applies to `bench --against llama.cpp`")

    def options(self, gguf_path: Path | None = None) -> BenchOptions:
        """The bench frontend's options; `gguf_path` is the model's file, which the peer of --against loads."""
        from mistralrs_cli.frontends.options import BenchOptions

        self.check()
        return BenchOptions(concurrency=self.concurrency, tokens=self.tokens, prompt_len=self.prompt_len,
                            json_out=self.json_out, against=self.against, llama_python=self.llama_python,
                            rounds=self.rounds or 3, gguf_path=gguf_path)


@dataclass(frozen=True)
class CompileFlags:
    """`mistralrs compile`: warm the compiled decode step's on-disk cache (no frontend)."""

    mode: ClassVar[str] = "compile"


ModeFlags = ChatFlags | BatchFlags | ServeFlags | BenchFlags | CompileFlags


@dataclass
class Invocation:
    """What the callbacks learn, in order: the global options, then the mode and its flags (None: the
    original top-level form, which serves with --port and chats otherwise)."""

    options: GlobalOptions
    mode: ModeFlags | None = None
