"""The composition root: from a ModelSpec to a running Engine, and from a mode's flags to its frontend.

build_model: adapter files checked -> base loaded -> adapters applied -> backend chosen ->
two-token smoke forward. The frontends never load anything: they receive `open_engine`, a
factory they call once their own input checks have passed. Torch and the frontends are
imported inside the functions so that `mistralrs --help` stays fast.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from mistralrs_cli.cli.exit_codes import exit_on_mode_error, stderr
from mistralrs_cli.cli.global_options import GlobalOptions
from mistralrs_cli.cli.mode_flags import (
    BatchFlags,
    BenchFlags,
    ChatFlags,
    CompileFlags,
    Invocation,
    ModeFlags,
    ServeFlags,
)
from mistralrs_cli.cli.spec import ModelSpec, model_spec
from mistralrs_cli.errors import ConfigError
from mistralrs_cli.loading.spec import BaseSource, DefaultSource, GgufSource, HfSource, LoadOptions

if TYPE_CHECKING:
    from mistralrs_cli.engine import Engine, EngineConfig
    from mistralrs_cli.loading.loaded import LoadedModel

# load_base's signature: tests may pass another (e.g. one that quantizes the base it loads).
BaseLoader = Callable[[BaseSource, LoadOptions, str], "LoadedModel"]


def build_model(spec: ModelSpec, *, base_loader: BaseLoader | None = None) -> LoadedModel:
    """Load the model of `spec`, adapters included, on its backend (fused int4 on CPU, kernels_cuda on CUDA).

    Adapter files are checked before the base loads (a typo fails fast). A two-token forward
    ends the load: a model that can only produce NaN, or whose forward fails, is refused here
    with one line instead of answering every request with garbage.
    """
    from mistralrs_cli.adapters import load as adapters
    from mistralrs_cli.loading.loader import load_base, smoke_forward
    from mistralrs_cli.models.backend import select_backend

    base_id = spec.base.model_id if isinstance(spec.base, HfSource) else None
    prepared = adapters.prepare(spec.adapters, command=spec.command, token_source=spec.load.token_source,
                                base_model_id=base_id)
    loaded = (base_loader or load_base)(spec.base, spec.load, spec.display_name)
    loaded = adapters.apply(prepared, loaded)
    loaded.info["backend"] = select_backend(loaded.model, loaded.device)
    smoke_forward(loaded)
    return loaded


def engine_config(options: GlobalOptions, spec: ModelSpec) -> EngineConfig:
    """EngineConfig from the global options (--max-seqs, --kv-cache-mem, --truncate-sequence...)."""
    from mistralrs_cli.engine import EngineConfig

    return EngineConfig(
        max_seqs=options.max_seqs,
        kv_cache_mem_mb=int(options.kv_cache_mem) if options.kv_cache_mem is not None else None,
        truncate_sequence=options.truncate_sequence,
        prefix_caching=options.prefix_cache,
        no_kv_cache=options.no_kv_cache,
        repeat_last_n=spec.repeat_last_n,
        compile=options.compile,
    )


def engine_factory(spec: ModelSpec, config: EngineConfig, *, spinner: bool = True) -> Callable[[], Engine]:
    """A function that loads the model and starts its engine thread (a spinner on a terminal's stderr)."""

    def open_engine() -> Engine:
        from mistralrs_cli.engine import Engine

        return Engine(_build_showing_status(spec) if spinner else build_model(spec), config)

    return open_engine


def _build_showing_status(spec: ModelSpec) -> LoadedModel:
    if sys.stderr.isatty():
        with stderr.status(f"Loading {spec.display_name}..."):
            return build_model(spec)
    return build_model(spec)


def run_model_command(ctx: typer.Context, command: str, options: dict[str, Any]) -> None:
    """What a model subcommand does: its ModelSpec (with the root's --chat-template) through the chosen mode."""
    state: Invocation = ctx.find_root().obj
    run_mode(state, model_spec(command, chat_template=state.options.chat_template, **options))


def run_mode(state: Invocation, spec: ModelSpec) -> None:
    """Run the chosen mode on `spec`; user errors exit with their code, a frontend's code becomes the exit code."""
    g = state.options
    flags = state.mode or _original_form(g)
    _setup_logging(g.debug)
    with exit_on_mode_error():
        g.check_for(flags.mode)
    from mistralrs_cli.engine.threads import keep_main_thread_serial

    keep_main_thread_serial()  # torch's thread pool belongs to the engine thread (see engine/threads.py)
    with exit_on_mode_error(g.debug):
        code = dispatch(flags, spec, g)
    if code:
        raise typer.Exit(code)


def _original_form(g: GlobalOptions) -> ModeFlags:
    """No mode given (`mistralrs [--port N] MODEL`): serve with --port, chat otherwise."""
    if g.port is None:
        return ChatFlags()
    return ServeFlags(api_key=os.environ.get("MISTRALRS_API_KEY") or None)


def dispatch(flags: ModeFlags, spec: ModelSpec, g: GlobalOptions) -> int:
    """Hand the model to the frontend of `flags`' mode; returns the exit code."""
    config = engine_config(g, spec)
    if isinstance(flags, ChatFlags):
        from mistralrs_cli.frontends.chat import run_chat

        return run_chat(flags.options(g), engine_factory(spec, config))
    if isinstance(flags, BatchFlags):
        batch_options = flags.options(g)
        if batch_options.cluster is not None:  # --ray: each worker calls the (pickled) factory
            from mistralrs_cli.frontends.cluster_batch import run_cluster_batch as run_batch
        else:
            from mistralrs_cli.frontends.batch import run_batch
        return run_batch(batch_options, engine_factory(spec, config))
    if isinstance(flags, ServeFlags):
        serve_options = flags.options(g, spec)
        if serve_options.cluster is not None:  # --ray: each replica calls the (pickled) factory
            from mistralrs_cli.frontends.cluster_serve import run_cluster_serve as run_serve
        else:
            from mistralrs_cli.frontends.server import run_serve
        # The server loads in a background thread while it answers 503: no spinner.
        run_serve(serve_options, engine_factory(spec, config, spinner=False))
        return 0
    if isinstance(flags, CompileFlags):
        return _compile(spec, config)
    return _bench(flags, spec, g, config)


def _compile(spec: ModelSpec, config: EngineConfig) -> int:
    """Compile the decode step of every batch bucket up to --max-seqs (inductor's on-disk cache keeps
    them for later runs); one line per bucket with its seconds. Exit 1 when one cannot compile."""
    import time

    from mistralrs_cli.engine.compiled_step import batch_bucket, unsupported
    from mistralrs_cli.engine.core import EngineCore
    from mistralrs_cli.engine.threads import engine_threads

    loaded = _build_showing_status(spec)
    why = unsupported(loaded.model, loaded.device)
    if why is not None:
        print(f"mistralrs compile: {why}", file=sys.stderr)
        return 1
    core = EngineCore(loaded, replace(config, compile=True))
    compiled = core.runner.compiled
    assert compiled is not None
    compiled.threads = engine_threads(config.threads)  # the kernels' OpenMP width: the engine thread's
    top = batch_bucket(core.config.max_seqs)
    print(f"Compiling the decode step of {spec.display_name} for batch sizes 1..{top} into {compiled.cache_dir}", flush=True)
    failed = 0
    for bucket in (1 << i for i in range(top.bit_length())):
        start = time.perf_counter()
        why = compiled.compile_bucket(bucket)
        took = time.perf_counter() - start
        print(f"  batch {bucket}: " + (f"compiled in {took:.1f} s" if why is None else f"failed after {took:.1f} s ({why})"),
              flush=True)
        failed += why is not None
    return 1 if failed else 0


def _bench(flags: BenchFlags, spec: ModelSpec, g: GlobalOptions, config: EngineConfig) -> int:
    """Bench the model, and for adapter models the base alone; the engine runs `--concurrency` at once.

    With --against, the model's GGUF file goes to the frontend, which runs the peer on it.
    """
    if flags.against is not None:
        from mistralrs_cli.frontends.bench_against import context_tokens, run_bench_against

        flags.check()  # a bad --against fails before the model's file is looked for
        # One sequence with the peer's context (unless flags say otherwise): KV memory like llama.cpp's.
        context = context_tokens(flags.prompt_len, flags.tokens)
        config = replace(config, max_seqs=g.max_seqs or 1, max_model_len=config.max_model_len or context)
        run_bench_against(flags.options(_gguf_file(spec)), engine_factory(spec, config))
        return 0
    from mistralrs_cli.frontends.bench import run_bench

    config = replace(config, max_seqs=max(flags.concurrency, g.max_seqs or 0))
    baseline = engine_factory(spec.base_only(), config) if spec.adapters is not None else None
    run_bench(flags.options(), engine_factory(spec, config), baseline)
    return 0


def _gguf_file(spec: ModelSpec) -> Path:
    """The local GGUF file of a plain GGUF model (the default one or gguf-mistral); ConfigError for others."""
    if spec.adapters is None and isinstance(spec.base, DefaultSource):
        from mistralrs_cli.loading.default_model import resolve_default_model

        return resolve_default_model().gguf_path
    if spec.adapters is None and isinstance(spec.base, GgufSource):
        from mistralrs_cli.loading.gguf import resolve_gguf_path

        return resolve_gguf_path(spec.base, spec.load)
    raise ConfigError(f"bench --against llama.cpp compares GGUF models only (the default model or gguf-mistral), "
                      f"not {spec.command}")


def _setup_logging(debug: bool) -> None:
    level = logging.DEBUG if debug else logging.WARNING
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
