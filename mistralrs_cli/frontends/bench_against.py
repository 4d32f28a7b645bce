"""`mistralrs bench --against llama.cpp`: our engine and llama.cpp on the same GGUF, same prompt ids, one command.

Both run batch 1, greedy, EOS ignored, exactly `tokens` tokens, on the same thread count. Each
round feeds one fresh random prompt to both engines, one after the other; the order alternates
from round to round so that neither always runs first (a neighbour's burst or a warm cache then
favours no one). On a shared machine other work only ever slows an engine down, so the best of
the rounds is each engine's figure, and the ratios compare those. llama.cpp runs in its own
process (mistralrs_cli/peers), so its load time and peak RSS are its own.
"""

from __future__ import annotations

import json
import random
import resource
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from mistralrs_cli.engine import Engine
from mistralrs_cli.engine.threads import engine_threads
from mistralrs_cli.errors import ConfigError
from mistralrs_cli.frontends.bench import _decode_rate, _run
from mistralrs_cli.frontends.options import BenchOptions
from mistralrs_cli.peers.llama_peer import LlamaPeer

PEERS = ("llama.cpp",)
OURS, PEER = "mistralrs", "llama.cpp"
PAUSE_S = 0.05  # between turns: the other engine's spinning OpenMP/ggml threads go to sleep first
WARMUP_TOKENS = 4
# CPU flags worth a line beside the figures (what the int8/bf16 kernels of either engine can use).
CPU_FLAGS = ("avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx512_bf16", "avx_vnni",
             "amx_tile", "amx_int8", "amx_bf16")

T = TypeVar("T")


@dataclass(frozen=True)
class Turn:
    """One engine's batch-1 request: time to the first token, decode speed after it, the greedy tokens."""

    ttft_s: float
    decode_tok_s: float
    ids: tuple[int, ...]


def same_prefix(a: tuple[int, ...], b: tuple[int, ...]) -> int:
    """How many leading tokens two greedy answers share (a sanity check: same model, same prompt ids)."""
    n = 0
    for x, y in zip(a, b, strict=False):  # stops at the shorter
        if x != y:
            break
        n += 1
    return n


def context_tokens(prompt_len: int, tokens: int) -> int:
    """The context both engines get: room for the prompt and the answer (llama.cpp's n_ctx, our KV
    pool's max_model_len), so that neither reserves memory the other does not."""
    return max(256, prompt_len + tokens + 16)


def interleave(runners: Mapping[str, Callable[[list[int]], T]], prompts: list[list[int]],
               pause: float = PAUSE_S) -> list[dict[str, T]]:
    """Each prompt through every runner (one round per prompt), the runners' order rotating each round."""
    names = list(runners)
    rounds = []
    for i, prompt in enumerate(prompts):
        order = names[i % len(names):] + names[: i % len(names)]
        results: dict[str, T] = {}
        for name in order:
            if pause:
                time.sleep(pause)
            results[name] = runners[name](prompt)
        rounds.append({name: results[name] for name in names})
    return rounds


def best(turns: list[Turn], prompt_len: int) -> dict[str, float]:
    """The best of the rounds: lowest TTFT (and its prefill speed), highest decode speed."""
    ttft = min(t.ttft_s for t in turns)
    return {"ttft_s": ttft, "prefill_tok_s": prompt_len / ttft, "decode_tok_s": max(t.decode_tok_s for t in turns)}


RATIO_KEYS = ("ttft_s", "prefill_tok_s", "decode_tok_s", "load_s", "peak_rss_mib")


def ratios(ours: Mapping[str, float], peer: Mapping[str, float]) -> dict[str, float]:
    """ours / peer for every figure both have (speeds: > 1 is faster; times and memory: < 1 is less)."""
    return {k: ours[k] / peer[k] for k in RATIO_KEYS if ours.get(k) is not None and peer.get(k)}


def run_bench_against(options: BenchOptions, open_engine: Callable[[], Engine]) -> dict[str, Any]:
    """Run `options.rounds` interleaved rounds of our engine and the peer; print the table (and JSON if asked)."""
    if options.against not in PEERS:
        raise ConfigError(f"bench --against {options.against}: the only peer is llama.cpp")
    if options.gguf_path is None:
        raise ConfigError("bench --against llama.cpp compares GGUF models only (the default model or gguf-mistral)")
    tokens, prompt_len = options.tokens, options.prompt_len
    rng = random.Random(options.seed)
    # The peer first: a missing llama_cpp fails in a second, before our model loads.
    with LlamaPeer(options.llama_python, notify=_notify) as peer, open_engine() as engine:
        loaded = engine.loaded
        vocab = loaded.config.vocab_size
        threads = engine_threads(engine.config.threads)
        peer.load(options.gguf_path, threads, n_ctx=context_tokens(prompt_len, tokens))
        if peer.last_load["n_vocab"] != vocab:
            raise ConfigError(f"llama.cpp reads {peer.last_load['n_vocab']} tokens in {options.gguf_path}, "
                              f"we read {vocab}: not the same model")

        def ours(prompt: list[int], n: int = tokens) -> Turn:
            (timing,), _ = _run(engine, [prompt], n)
            return Turn(timing.first - timing.submitted, _decode_rate(timing), tuple(timing.ids))

        def theirs(prompt: list[int], n: int = tokens) -> Turn:
            r = peer.round(prompt, n)
            return Turn(r["ttft_s"], r["decode_tok_s"], tuple(r["tokens"]))

        def prompt() -> list[int]:
            return [rng.randrange(3, vocab) for _ in range(prompt_len)]

        warm = prompt()[:8]
        interleave({OURS: lambda p: ours(p, WARMUP_TOKENS), PEER: lambda p: theirs(p, WARMUP_TOKENS)}, [warm])
        compiled = _wait_for_compiled_step(engine)
        rounds = interleave({OURS: ours, PEER: theirs}, [prompt() for _ in range(options.rounds)])
        peer_rss = peer.last_rss
        peer_info = {"version": peer.version, "extra_bufts": peer.extra_bufts, "crash": peer.crashed,
                     "load_s": peer.last_load["load_s"]}
    result = {
        "model": loaded.name,
        "file": str(options.gguf_path),
        "weights": loaded.weights,
        "compute_dtype": loaded.compute_dtype,
        "decode_step": "compiled" if compiled else "eager",
        "cpu": cpu_description(),
        "threads": threads,
        "kv_cache": engine.kv_budget.describe(),
        "prompt_len": prompt_len,
        "tokens": tokens,
        "rounds": options.rounds,
        OURS: {"load_s": loaded.info.get("load_seconds"), "peak_rss_mib": peak_rss_mib(),
               **best([r[OURS] for r in rounds], prompt_len)},
        PEER: {**peer_info, "peak_rss_mib": peer_rss, **best([r[PEER] for r in rounds], prompt_len)},
        "per_round": [{**{name: {"ttft_s": t.ttft_s, "decode_tok_s": t.decode_tok_s, "tokens": len(t.ids)}
                             for name, t in r.items()},
                       "same_greedy_prefix": same_prefix(r[OURS].ids, r[PEER].ids)} for r in rounds],
    }
    result["ratios"] = ratios(result[OURS], result[PEER])
    print_against_table(result)
    if options.json_out:
        print(json.dumps(result, indent=2))
    return result


def _wait_for_compiled_step(engine: Engine) -> bool:
    """With --compile the warm-up started compiling the batch-1 step in the background: let it finish, so
    that every round measures the compiled step and no compile competes with the peer's turns."""
    compiled = engine.core.runner.compiled
    if compiled is None:
        return False
    _notify("waiting for the compiled decode step (batch 1) before the rounds")
    compiled.wait()
    return 1 not in compiled.failed


def _notify(line: str) -> None:
    from rich.console import Console

    Console(stderr=True).print(f"[yellow]note:[/] {line}", highlight=False, soft_wrap=True, markup=True)


def peak_rss_mib() -> float:
    """This process's peak resident memory in MiB."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1 << 20) if sys.platform == "darwin" else peak / 1024  # bytes on macOS, KiB on Linux


def cpu_description() -> dict[str, Any]:
    """The CPU model, torch's kernel capability and the SIMD/AMX flags present (Linux: from /proc/cpuinfo)."""
    import torch

    model, flags = "?", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and model == "?":
                model = value.strip()
            elif key.strip() == "flags" and not flags:
                flags = set(value.split())
    except OSError:
        pass
    return {"model": model, "capability": torch.backends.cpu.get_cpu_capability(),
            "flags": [f for f in CPU_FLAGS if f in flags]}


def print_against_table(result: dict[str, Any]) -> None:
    """The comparison as a rich table on stderr: each engine's best figure and ours / theirs."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    ours, peer, ratio = result[OURS], result[PEER], result["ratios"]
    cpu = result["cpu"]
    table = Table(title=f"mistralrs bench --against llama.cpp — {result['model']} ({result['threads']} threads, "
                        f"prompt {result['prompt_len']}, {result['tokens']} tokens, best of {result['rounds']} "
                        "interleaved rounds)",
                  caption=escape(f"{cpu['model']} ({' '.join(cpu['flags'])}; torch {cpu['capability']}). Ours: "
                                 f"{result['weights']}, compute {result['compute_dtype']}, {result['decode_step']} "
                                 f"decode step. llama-cpp-python {peer['version']}"
                                 + ("" if peer["extra_bufts"] else ", extra buffer types off after a crash")
                                 + ". Ratios: speeds above 1 are ours faster; TTFT, load and RSS below 1 are ours "
                                   "smaller."))
    for name, justify in (("measure", "left"), ("mistralrs", "right"), ("llama.cpp", "right"),
                          ("mistralrs / llama.cpp", "right")):
        table.add_column(name, justify=justify, no_wrap=name == "measure")
    rows = (("TTFT", "ttft_s", lambda v: f"{v * 1000:.1f} ms"),
            ("prefill", "prefill_tok_s", lambda v: f"{v:.1f} tok/s"),
            ("decode", "decode_tok_s", lambda v: f"{v:.1f} tok/s"),
            ("model load", "load_s", lambda v: f"{v:.2f} s"),
            ("peak RSS", "peak_rss_mib", lambda v: f"{v:.0f} MiB"))
    for label, key, fmt in rows:
        if ours.get(key) is None or peer.get(key) is None:
            continue
        table.add_row(label, fmt(ours[key]), fmt(peer[key]), f"{ratio[key]:.2f}x" if key in ratio else "-")
    Console(stderr=True).print(table)
