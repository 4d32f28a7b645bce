"""The mode groups (chat, batch, serve, bench, compile): their options, recorded as typed flags for compose.py."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import click
import typer
from typer.core import TyperGroup

from mistralrs_cli.cli import options as o
from mistralrs_cli.cli.compose import run_model_command
from mistralrs_cli.cli.mode_flags import (
    BatchFlags,
    BenchFlags,
    ChatFlags,
    CompileFlags,
    Invocation,
    ModeFlags,
    SamplingFlags,
    ServeFlags,
)


class InterspersedGroup(TyperGroup):
    """A mode group whose options may follow its positional argument (`batch IN.jsonl -o OUT mistral ...`).

    Everything before the first model subcommand belongs to the mode; the rest to the subcommand.
    """

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        """Parse the mode's own arguments, leaving the model subcommand and its options for later."""
        split = next((i for i, a in enumerate(args) if a in self.commands), len(args))
        ctx.allow_interspersed_args = True
        rest = click.Command.parse_args(self, ctx, fill_bare_ray(args[:split])) + args[split:]
        if rest:
            ctx._protected_args, ctx.args = rest[:1], rest[1:]
        return ctx.args


class ServeGroup(TyperGroup):
    """`serve`: a bare --ray starts a local Ray instance (click has no optional option values).

    Unlike batch's, serve's --ray takes any next word that is not an option or the model
    subcommand (serve has no positional argument), so `--ray myhost` is refused as an address.
    """

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        """Give a bare --ray the value "local", then parse as usual."""
        from mistralrs_cli.frontends.cluster_batch_options import LOCAL

        filled: list[str] = []
        for i, arg in enumerate(args):
            filled.append(arg)
            following = args[i + 1] if i + 1 < len(args) else None
            if arg == "--ray" and (following is None or following.startswith("-") or following in self.commands):
                filled.append(LOCAL)
        return super().parse_args(ctx, filled)


def fill_bare_ray(args: list[str]) -> list[str]:
    """`--ray` without an address becomes `--ray local` (click has no optional option values).

    Only an address form (auto, host:port, ray://host:port) is taken as --ray's value, so
    `batch --ray IN.jsonl` keeps IN.jsonl as the input file.
    """
    from mistralrs_cli.frontends.cluster_batch_options import LOCAL, is_address

    filled: list[str] = []
    for i, arg in enumerate(args):
        filled.append(arg)
        if arg == "--ray" and (i + 1 == len(args) or not is_address(args[i + 1])):
            filled.append(LOCAL)
    return filled


chat_app = typer.Typer(help="Chat with a model in the terminal (one-shot when stdin is not a terminal).")
batch_app = typer.Typer(cls=InterspersedGroup, help="Run a JSONL file of requests through the engine; resumable.")
serve_app = typer.Typer(cls=ServeGroup, help="Serve an OpenAI-compatible HTTP API (on a Ray cluster with --ray).")
bench_app = typer.Typer(help="Measure TTFT, prefill, batch-1 decode and N-way throughput on a model (adapter models: also the base alone).")
compile_app = typer.Typer(help="Compile the decode step for batch sizes 1..--max-seqs into the on-disk cache, so that later runs "
                          "start compiled (CPU; needs g++).")
BATCH_CLUSTER = "Ray cluster"
SERVE_CLUSTER = "Ray cluster"
MODES = {"chat": chat_app, "batch": batch_app, "serve": serve_app, "bench": bench_app, "compile": compile_app}


@chat_app.callback(invoke_without_command=True)
def chat(
    ctx: typer.Context,
    system: Annotated[str | None, typer.Option("--system", help="System prompt.")] = None,
    messages: Annotated[
        Path | None, typer.Option("--messages", help="Non-interactive: read a JSON list of chat messages from this file ('-' = stdin).")
    ] = None,
    no_markdown: Annotated[bool, typer.Option("--no-markdown", help="Print replies as plain text.")] = False,
    temperature: o.Temperature = None,
    top_p: o.TopP = None,
    top_k: o.TopK = None,
    max_tokens: o.MaxTokens = None,
    seed: o.Seed = None,
    json_schema: o.JsonSchema = None,
    regex: o.Regex = None,
) -> None:
    """Chat with the model; pick a model subcommand or use the embedded default."""
    sampling = SamplingFlags(temperature, top_p, top_k, max_tokens, seed)
    _choose(ctx, ChatFlags(system, messages, not no_markdown, sampling, json_schema=json_schema, regex=regex))


@batch_app.callback(invoke_without_command=True)
def batch(
    ctx: typer.Context,
    input_file: Annotated[Path, typer.Argument(help="JSONL requests (OpenAI Batch API lines or {prompt|messages}).")],
    output: Annotated[Path | None, typer.Option("-o", "--output", help="Output JSONL of answers (default: INPUT.out.jsonl); errors go to OUT.errors.jsonl. Re-running resumes: answered lines are kept, errors retried.")] = None,
    max_concurrency: Annotated[int, typer.Option("--max-concurrency", min=1, help="Most requests in flight at once.")] = 64,
    temperature: o.Temperature = None,
    top_p: o.TopP = None,
    top_k: o.TopK = None,
    max_tokens: o.BatchMaxTokens = None,
    seed: o.Seed = None,
    ray: Annotated[
        str | None, typer.Option("--ray", metavar="[ADDRESS]", rich_help_panel=BATCH_CLUSTER, help="Answer with "
                                 "engine workers on a Ray cluster (the driver still writes every record). Alone: "
                                 "start a local Ray instance; auto, host:port or ray://host:port: join that "
                                 "cluster. Needs the cluster extra.")
    ] = None,
    workers: Annotated[
        int | None, typer.Option("--workers", rich_help_panel=BATCH_CLUSTER, help="With --ray: engine workers, "
                                 "each loading the model (default 1). --max-concurrency counts per worker.")
    ] = None,
    cpus_per_worker: Annotated[
        float | None, typer.Option("--cpus-per-worker", rich_help_panel=BATCH_CLUSTER, help="With --ray: CPUs "
                                   "each worker reserves (and its torch threads; default 1).")
    ] = None,
    gpus_per_worker: Annotated[
        float | None, typer.Option("--gpus-per-worker", rich_help_panel=BATCH_CLUSTER, help="With --ray: GPUs "
                                   "each worker reserves (default 0).")
    ] = None,
) -> None:
    """Answer every line of a JSONL file; outputs are flushed per line."""
    sampling = SamplingFlags(temperature, top_p, top_k, max_tokens, seed)
    _choose(ctx, BatchFlags(input_file, output, max_concurrency, sampling, ray, workers, cpus_per_worker,
                            gpus_per_worker))


@serve_app.callback(invoke_without_command=True)
def serve(
    ctx: typer.Context,
    port: o.Port = None,
    serve_ip: o.ServeIp = "127.0.0.1",
    api_key: Annotated[
        str | None, typer.Option("--api-key", envvar="MISTRALRS_API_KEY", help="Require this Bearer token on /v1 "
                                 "routes. Prefer the MISTRALRS_API_KEY variable or --api-key-file: a key on the "
                                 "command line shows in `ps`.")
    ] = None,
    api_key_file: Annotated[
        Path | None, typer.Option("--api-key-file", metavar="<file>", help="Read the API key from this file "
                                  "(one line; overrides MISTRALRS_API_KEY).")
    ] = None,
    allowed_hosts: Annotated[
        list[str] | None,
        typer.Option("--allowed-hosts", metavar="<names>", help="Host names accepted besides localhost, "
                     "127.0.0.1 and [::1] (repeatable or comma-separated; * for any). Requests naming others "
                     "get 400, which stops DNS-rebinding web pages."),
    ] = None,
    served_model_name: Annotated[
        list[str] | None,
        typer.Option("--served-model-name", metavar="<name>", help="Name clients use for the model (repeatable; default: the model's "
                     "name). Requests naming another model get 404 model_not_found."),
    ] = None,
    quiet: Annotated[bool, typer.Option("-q", "--quiet", help="No access-log line per request on stderr.")] = False,
    no_ui: Annotated[bool, typer.Option("--no-ui", help="Do not serve the browser chat page at / and /ui.")] = False,
    ray: Annotated[
        str | None, typer.Option("--ray", metavar="[ADDRESS]", rich_help_panel=SERVE_CLUSTER, help="Serve from Ray "
                                 "Serve replicas, each with its own engine, behind one HTTP entry point. Alone: "
                                 "start a local Ray instance; auto, host:port or ray://host:port: join that "
                                 "cluster. Needs the cluster extra.")
    ] = None,
    replicas: Annotated[
        int | None, typer.Option("--replicas", rich_help_panel=SERVE_CLUSTER, help="With --ray: engine replicas "
                                 "[default: 1].")
    ] = None,
    cpus_per_replica: Annotated[
        float | None, typer.Option("--cpus-per-replica", rich_help_panel=SERVE_CLUSTER, help="With --ray: CPUs each "
                                   "replica reserves (and its torch threads) [default: 1].")
    ] = None,
    gpus_per_replica: Annotated[
        float | None, typer.Option("--gpus-per-replica", rich_help_panel=SERVE_CLUSTER, help="With --ray: GPUs each "
                                   "replica reserves [default: 0].")
    ] = None,
) -> None:
    """Serve /v1/chat/completions, /v1/completions and /v1/models."""
    # By name: typer's and click's ParameterSource enums are distinct classes.
    if api_key_file is not None and getattr(ctx.get_parameter_source("api_key"), "name", "") == "ENVIRONMENT":
        api_key = None  # the file, given on the command line, overrides the environment
    _choose(ctx, ServeFlags(port, serve_ip, api_key, api_key_file, allowed_hosts, served_model_name, quiet,
                            ray, replicas, cpus_per_replica, gpus_per_replica, no_ui))


@bench_app.callback(invoke_without_command=True)
def bench(
    ctx: typer.Context,
    concurrency: Annotated[int, typer.Option("--concurrency", min=1, help="Concurrent requests for the throughput run.")] = 32,
    tokens: Annotated[int, typer.Option("--tokens", min=2, help="Tokens generated per request.")] = 64,
    prompt_len: Annotated[int, typer.Option("--prompt-len", min=1, help="Prompt length in tokens.")] = 64,
    json_out: Annotated[bool, typer.Option("--json", help="Also print the result as JSON on stdout.")] = False,
    against: Annotated[
        str | None, typer.Option("--against", metavar="llama.cpp", help="Run llama.cpp (llama-cpp-python) on the "
                                 "same GGUF beside the engine, interleaved round by round on the same prompts, and "
                                 "print the ratios (TTFT, prefill, batch-1 decode, load, peak RSS).")
    ] = None,
    llama_python: Annotated[
        str | None, typer.Option("--llama-python", metavar="PATH", help="With --against: the Python interpreter "
                                 "that has llama_cpp (default: this one).")
    ] = None,
    rounds: Annotated[
        int | None, typer.Option("--rounds", min=1, help="With --against: interleaved rounds; each engine's best "
                                 "is reported [default: 3].")
    ] = None,
) -> None:
    """Benchmark the engine on the chosen model (default: the embedded model)."""
    _choose(ctx, BenchFlags(concurrency, tokens, prompt_len, json_out, against, llama_python, rounds))


@compile_app.callback(invoke_without_command=True)
def compile_step(ctx: typer.Context) -> None:
    """Warm inductor's cache with the chosen model's decode step (default: the embedded model)."""
    _choose(ctx, CompileFlags())


def _choose(ctx: typer.Context, flags: ModeFlags) -> None:
    """Record the mode; without a model subcommand, run it on the embedded default model now."""
    state: Invocation = ctx.obj
    state.mode = flags
    if ctx.invoked_subcommand is None:
        run_model_command(ctx, "default", {})
