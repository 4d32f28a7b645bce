"""Runs a mode (chat, batch, serve) on a ModelSpec: loads the model, maps errors to exit codes."""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.markup import escape

from mistralrs_cli.errors import MistralrsError
from mistralrs_cli.spec import ModelSpec

stderr = Console(stderr=True)


@dataclass
class ModeOptions:
    """Global options from the root callback plus the chosen mode and its options."""

    port: int | None = None
    serve_ip: str = "127.0.0.1"
    log: Path | None = None
    truncate_sequence: bool = False
    max_seqs: int | None = None
    prefix_cache: bool = False
    no_kv_cache: bool = False
    kv_cache_mem: float | None = None
    chat_template: str | None = None
    debug: bool = False
    mode: str | None = None
    mode_options: dict[str, Any] = field(default_factory=dict)


def run_mode(ctx: typer.Context, spec: ModelSpec) -> None:
    """Load the model for `spec` and run the chosen mode; user errors exit with their code."""
    opts: ModeOptions = ctx.find_root().obj
    mode = opts.mode or ("serve" if opts.port is not None else "chat")
    if opts.mode == "serve" and opts.mode_options.get("port") is None:
        opts.mode_options["port"] = opts.port
    _setup_logging(opts)
    try:
        _check_global_options(mode, opts)
    except MistralrsError as e:
        stderr.print(f"[bold red]error:[/] {escape(e.message)}", highlight=False, soft_wrap=True)
        raise typer.Exit(e.exit_code) from None
    from mistralrs_cli.engine.threads import keep_main_thread_serial

    keep_main_thread_serial()  # torch's thread pool belongs to the engine thread (see engine/threads.py)
    try:
        _dispatch(mode, spec, opts)
    except MistralrsError as e:
        if opts.debug:
            raise
        stderr.print(f"[bold red]error:[/] {escape(e.message)}", highlight=False, soft_wrap=True)
        raise typer.Exit(e.exit_code) from None
    except KeyboardInterrupt:
        raise typer.Exit(130) from None


def _check_global_options(mode: str, opts: ModeOptions) -> None:
    """Refuse global options that the chosen mode would silently ignore."""
    from mistralrs_cli.errors import ConfigError

    if mode != "serve" and opts.port is not None:
        raise ConfigError(f"--port only applies to serving: use `mistralrs serve --port {opts.port} ...` "
                          f"(or drop the mode: `mistralrs --port {opts.port} MODEL`), not with {mode}")
    if mode != "serve" and opts.serve_ip != "127.0.0.1":
        raise ConfigError(f"--serve-ip only applies to serving, not to {mode}")
    if mode == "bench" and opts.log is not None:
        raise ConfigError("--log records requests of chat, batch and serve; bench makes synthetic ones and logs none")


def _dispatch(mode: str, spec: ModelSpec, opts: ModeOptions) -> None:
    if mode == "chat":
        from mistralrs_cli.frontends.chat import run_chat

        run_chat(spec, opts)
        return
    if mode == "bench":
        from mistralrs_cli.bench import run_bench
        from mistralrs_cli.frontends.engine_setup import engine_config

        mo = dict(opts.mode_options)
        config = engine_config(spec, opts)
        from dataclasses import replace

        config = replace(config, max_seqs=max(mo["concurrency"], opts.max_seqs or 0))
        base = base_spec(spec)
        baseline = (lambda: load_with_status(base)) if base is not None else None
        run_bench(load_with_status(spec), config=config, baseline=baseline, **mo)
        return
    if mode == "batch":
        from mistralrs_cli.frontends.batch import run_batch

        run_batch(spec, opts)
        return
    if mode == "serve":
        from mistralrs_cli.frontends.server import run_serve

        run_serve(spec, opts)
        return
    from mistralrs_cli.errors import ConfigError

    raise ConfigError(f"mode {mode!r} is not yet available in this version")


def base_spec(spec: ModelSpec) -> ModelSpec | None:
    """The same base model without its adapters (for the bench's comparison), or None."""
    from dataclasses import replace

    if not (spec.xlora_model_id or spec.adapter_ids):
        return None
    kind = "gguf-mistral" if "gguf" in spec.kind else "mistral"
    return replace(spec, kind=kind, xlora_model_id=None, order=None, tgt_non_granular_index=None,
                   adapter_ids=(), lora_merge=False)


def load_with_status(spec: ModelSpec):
    """Load a model, showing a spinner on stderr when it is a terminal."""
    from mistralrs_cli.loading.loader import load_model

    if sys.stderr.isatty():
        with stderr.status(f"Loading {spec.display_name}..."):
            return load_model(spec)
    return load_model(spec)


def _setup_logging(opts: ModeOptions) -> None:
    level = logging.DEBUG if opts.debug else logging.WARNING
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
