"""Starting the engine for a frontend: load the model for a spec and size the engine from the CLI options."""

from __future__ import annotations

from mistralrs_cli.engine import Engine, EngineConfig
from mistralrs_cli.runner import ModeOptions, load_with_status
from mistralrs_cli.spec import ModelSpec


def engine_config(spec: ModelSpec, opts: ModeOptions) -> EngineConfig:
    """EngineConfig from the global options (--max-seqs, --kv-cache-mem, --truncate-sequence...)."""
    return EngineConfig(
        max_seqs=opts.max_seqs,
        kv_cache_mem_mb=int(opts.kv_cache_mem) if opts.kv_cache_mem is not None else None,
        truncate_sequence=opts.truncate_sequence,
        prefix_caching=opts.prefix_cache,
        no_kv_cache=opts.no_kv_cache,
        repeat_last_n=spec.repeat_last_n,
    )


def open_engine(spec: ModelSpec, opts: ModeOptions) -> Engine:
    """Load the model and start its engine thread."""
    loaded = load_with_status(spec)
    return Engine(loaded, engine_config(spec, opts))
