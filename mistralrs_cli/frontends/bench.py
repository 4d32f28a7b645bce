"""`mistralrs bench`: TTFT, prefill and decode speed at batch 1, and throughput with N concurrent requests.

Every number comes from the real engine (its thread, scheduler, cache and sampler) driven
through the async streams the server uses; prompts are random token ids, sampling is
greedy and EOS is ignored, so every request generates exactly `tokens` tokens.
"""

from __future__ import annotations

import asyncio
import gc
import json
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from mistralrs_cli.engine import Engine, SamplingParams
from mistralrs_cli.engine.threads import engine_threads
from mistralrs_cli.frontends.options import BenchOptions


@dataclass
class _Timing:
    submitted: float
    first: float = 0.0
    last: float = 0.0
    times: list[float] = field(default_factory=list)  # arrival of each token
    ids: list[int] = field(default_factory=list)  # the tokens, in order

    @property
    def tokens(self) -> int:
        """Tokens received."""
        return len(self.times)


async def _consume(engine: Engine, prompt: list[int], tokens: int) -> _Timing:
    params = SamplingParams(temperature=0, max_tokens=tokens, ignore_eos=True)
    timing = _Timing(time.perf_counter())
    async for delta in engine.submit(prompt, params=params):
        now = time.perf_counter()
        if delta.token_ids and not timing.tokens:
            timing.first = now
        timing.times += [now] * len(delta.token_ids)
        timing.ids += delta.token_ids
        timing.last = now
    return timing


def _all_decoding_rate(timings: list[_Timing]) -> float | None:
    """Tokens/s while every request decodes together: after the last first token, before the first finish.

    None when no such window exists (a request finished before another one started).
    """
    start, end = max(t.first for t in timings), min(t.last for t in timings)
    if end <= start:
        return None
    count = sum(1 for t in timings for when in t.times if start < when <= end)
    return count / (end - start)


def _run(engine: Engine, prompts: list[list[int]], tokens: int) -> tuple[list[_Timing], float]:
    async def main() -> list[_Timing]:
        return list(await asyncio.gather(*(_consume(engine, p, tokens) for p in prompts)))

    start = time.perf_counter()
    timings = asyncio.run(main())
    return timings, time.perf_counter() - start


def run_bench(options: BenchOptions, open_engine: Callable[[], Engine],
              open_baseline: Callable[[], Engine] | None = None) -> dict[str, Any]:
    """Measure the engine `open_engine` starts; print a rich table to stderr (and JSON to stdout if asked).

    `open_baseline` (for adapter models) starts the base model alone: its batch-1 decode is measured
    in the same run, after the first engine and its model are released, and reported as the adapters' slowdown.
    """
    concurrency, tokens, prompt_len = options.concurrency, options.tokens, options.prompt_len
    rng = random.Random(options.seed)
    vocab = 0

    def prompt() -> list[int]:
        return [rng.randrange(3, vocab) for _ in range(prompt_len)]

    with open_engine() as engine:
        loaded = engine.loaded
        vocab = loaded.config.vocab_size
        about = {"model": loaded.name, "device": str(loaded.device), "weights": loaded.weights,
                 "compute_dtype": loaded.compute_dtype, "load_s": loaded.info.get("load_seconds")}
        _run(engine, [prompt()], 4)  # warm-up: first-call allocations, rotary table
        compile_warmup = _warm_compiled(engine, lambda: _run(engine, [prompt() for _ in range(concurrency)], 8))
        (one,), _ = _run(engine, [prompt()], tokens)
        many, wall = _run(engine, [prompt() for _ in range(concurrency)], tokens)
        stats = engine.stats()
        compile_status = engine.compile_status()
    threads, max_seqs = engine_threads(engine.config.threads), engine.config.max_seqs
    kv_cache = engine.kv_budget.describe()
    decode_1 = _decode_rate(one)
    base_decode = None
    if open_baseline is not None:
        del loaded, engine
        gc.collect()  # one model in memory at a time
        with open_baseline() as base_engine:
            _run(base_engine, [prompt()], 4)
            base_engine.wait_compiled()  # its batch-1 graph, if it compiles (X-LoRA itself does not)
            (base_one,), _ = _run(base_engine, [prompt()], tokens)
        base_decode = _decode_rate(base_one)
    ttft = one.first - one.submitted
    generated = sum(t.tokens for t in many)
    throughput = generated / wall
    decoding = _all_decoding_rate(many)
    result = {
        **about,
        "threads": threads,
        "prompt_len": prompt_len,
        "tokens": tokens,
        "concurrency": concurrency,
        "max_seqs": max_seqs,
        "kv_cache": kv_cache,
        "compiled_step": None if compile_status is None else {
            "buckets": {str(b): st for b, st in compile_status.items()}, "warmup_s": compile_warmup},
        "batch1": {
            "ttft_s": ttft,
            "prefill_tok_s": prompt_len / ttft,
            "decode_tok_s": decode_1,
        },
        "concurrent": {
            "wall_s": wall,
            "generated_tokens": generated,
            "throughput_tok_s": throughput,
            "decode_tok_s": decoding,
            "mean_ttft_s": sum(t.first - t.submitted for t in many) / len(many),
            "max_ttft_s": max(t.first - t.submitted for t in many),
            "preemptions": stats.preemptions,
        },
        "speedup_vs_batch1_decode": throughput / decode_1 if decode_1 else None,
        "decode_speedup_vs_batch1_decode": decoding / decode_1 if decode_1 and decoding else None,
    }
    if base_decode is not None:
        result["base_model"] = {"decode_tok_s": base_decode, "slowdown": base_decode / decode_1 if decode_1 else None}
    print_table(result)
    if options.json_out:
        print(json.dumps(result, indent=2))
    return result


def _warm_compiled(engine: Engine, warm_concurrent: Callable[[], object]) -> float | None:
    """With the compiled decode step on: meet every batch size the runs will use and wait until
    their graphs are ready (compiled, or loaded from the on-disk cache), so the figures measure the
    compiled step and not its background compile. Seconds that took; None when not compiling."""
    if engine.compile_status() is None:
        return None
    start = time.perf_counter()
    warm_concurrent()
    engine.wait_compiled()
    return time.perf_counter() - start


def _decode_rate(timing: _Timing) -> float:
    """Tokens per second after the first token."""
    return (timing.tokens - 1) / (timing.last - timing.first) if timing.tokens > 1 else 0.0


def print_table(result: dict[str, Any]) -> None:
    """The bench result as a rich table on stderr."""
    from rich.console import Console
    from rich.table import Table

    b1, cc = result["batch1"], result["concurrent"]
    table = Table(title=f"mistralrs bench — {result['model']} ({result['device']}, weights {result['weights']}, compute {result['compute_dtype']}, "
                  f"{result['threads']} threads, prompt {result['prompt_len']}, {result['tokens']} tokens)")
    table.add_column("measure")
    table.add_column("value", justify="right")
    if result.get("load_s") is not None:
        table.add_row("model load", f"{result['load_s']:.2f} s")
    if result.get("kv_cache"):
        table.add_row("KV cache", result["kv_cache"])
    compiled = result.get("compiled_step")
    table.add_row("decode step", "eager" if compiled is None else
                  "compiled, batch " + ", ".join(f"{b}: {st}" for b, st in compiled["buckets"].items())
                  + f" (warm-up {compiled['warmup_s']:.1f} s)")
    table.add_row("TTFT (batch 1)", f"{b1['ttft_s'] * 1000:.0f} ms")
    table.add_row("prefill (batch 1)", f"{b1['prefill_tok_s']:.1f} tok/s")
    table.add_row("decode (batch 1)", f"{b1['decode_tok_s']:.2f} tok/s")
    table.add_row(f"throughput ({result['concurrency']} concurrent, prefill included)", f"{cc['throughput_tok_s']:.2f} tok/s")
    if cc["decode_tok_s"] is not None:
        table.add_row(f"decode ({result['concurrency']} decoding together)", f"{cc['decode_tok_s']:.2f} tok/s")
    table.add_row("  mean / max TTFT", f"{cc['mean_ttft_s']:.2f} / {cc['max_ttft_s']:.2f} s")
    if result["speedup_vs_batch1_decode"] is not None:
        table.add_row("throughput / batch-1 decode", f"{result['speedup_vs_batch1_decode']:.1f}x")
    if result["decode_speedup_vs_batch1_decode"] is not None:
        table.add_row(f"{result['concurrency']}-way decode / batch-1 decode", f"{result['decode_speedup_vs_batch1_decode']:.1f}x")
    base = result.get("base_model")
    if base is not None:
        table.add_row("decode (batch 1), base model alone", f"{base['decode_tok_s']:.2f} tok/s")
        if base["slowdown"] is not None:
            table.add_row("adapters' decode slowdown", f"{base['slowdown']:.2f}x")
    Console(stderr=True).print(table)
