"""GGUF speed and memory: this project against llama-cpp-python on the same file, in the same run.

    python benchmarks/bench_gguf.py                       # the default model, 2 threads
    python benchmarks/bench_gguf.py --llama-python /tmp/llamavenv/bin/python --batch 32

Each engine runs in its own subprocess (so peak RSS and load time are its own) and reports
load time, prefill tok/s (one prompt of --prompt tokens), batch-1 greedy decode tok/s
(--decode tokens) and peak RSS. Every timing is the best of --rounds repetitions: on a shared
machine other processes only ever make a run slower, so the minimum is the least noisy
estimate. `--batch B` adds batched greedy decode (B sequences, one step each for all) for the
int4 path, the dense bf16 path (`--dtype bf16`) and, when installed, transformers bf16 on a
padded batch. `--engine-bench N` also runs `mistralrs bench --concurrency N` (the whole engine:
scheduler, sampler, streaming) on the same file and prints its figures beside llama.cpp's.
llama-cpp-python is taken from --llama-python (a separate venv: it compiles from
source) or from this interpreter, and driven by the worker of `mistralrs bench --against`
(mistralrs_cli/peers); it is skipped with a note when absent.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _peak_rss_mib() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _make_prompt_ids(gguf: str, n: int) -> list[int]:
    """A deterministic prompt of n token ids from natural text (made once, shared by every engine)."""
    from mistralrs_cli.loading.gguf_file import GGUFFile
    from mistralrs_cli.loading.gguf_tokenizer import gguf_tokenizer

    text = "The quick brown fox jumps over the lazy dog while the sea keeps its own time. " * 40
    return gguf_tokenizer(GGUFFile(gguf)).encode(text, add_special_tokens=False)[:n]


def _prompt_ids(n: int) -> list[int]:
    return json.loads(os.environ["BENCH_PROMPT_IDS"])[:n]


def worker_ours(args: argparse.Namespace) -> dict:
    import torch

    from mistralrs_cli.loading.gguf import load_gguf_file
    from mistralrs_cli.loading.spec import LoadOptions
    from mistralrs_cli.models.attention import AttentionBatch

    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    lm = load_gguf_file(Path(args.gguf), LoadOptions(dtype=args.dtype))
    load = time.perf_counter() - start
    model, cfg = lm.model, lm.config
    prompt = _prompt_ids(args.prompt)
    slots = 1 + max(args.prompt, 16) + args.decode + 8
    b = max(args.batch, 1)

    def new_pool(n_seq: int) -> list:
        shape = (1 + n_seq * slots, cfg.num_key_value_heads, cfg.head_dim)
        return [(torch.zeros(shape, dtype=lm.dtype), torch.zeros(shape, dtype=lm.dtype)) for _ in range(cfg.num_hidden_layers)]

    def prefill(pool, ids: list[int], seq: int) -> torch.Tensor:
        n = len(ids)
        pos = torch.arange(n)[None]
        base = 1 + seq * slots
        batch = AttentionBatch.build(pos, pos, cfg.sliding_window, base + torch.arange(n), (base + torch.arange(n))[None])
        return model(torch.tensor([ids]), pos, batch, pool, torch.tensor([n - 1]))

    def decode(pool, last: torch.Tensor, lengths: list[int], steps: int) -> float:
        """Greedy steps for all sequences at once; returns seconds."""
        n_seq = len(lengths)
        start = time.perf_counter()
        for _ in range(steps):
            nxt = last.argmax(-1)  # (n_seq,)
            pos = torch.tensor(lengths)[:, None]
            keys = torch.arange(max(lengths) + 1)[None].expand(n_seq, -1)
            valid = keys <= pos
            base = 1 + torch.arange(n_seq)[:, None] * slots
            batch = AttentionBatch.build(
                pos, torch.where(valid, keys, -1), cfg.sliding_window, (base + pos).reshape(-1), torch.where(valid, base + keys, 0)
            )
            last = model(nxt[:, None], pos, batch, pool, torch.zeros(n_seq, dtype=torch.long))
            lengths = [n + 1 for n in lengths]
        return time.perf_counter() - start

    out = {"engine": f"mistralrs ({args.dtype})", "load_s": load}
    with torch.inference_mode():
        if args.batch > 1:
            pool = new_pool(b)
            last = torch.cat([prefill(pool, prompt[i : i + 16], i) for i in range(b)])
            decode(pool, last, [16] * b, 2)  # warm-up
            steps = min(32, args.decode)
            best = min(decode(pool, last, [16] * b, steps) for _ in range(args.rounds))
            out[f"batch{b}_tok_s"] = b * steps / best
        else:
            pool = new_pool(1)
            prefill(pool, prompt[:8], 0)  # warm-up
            best = min(_timed(lambda: prefill(pool, prompt, 0)) for _ in range(args.rounds))
            out["prefill_tok_s"] = len(prompt) / best
            last = prefill(pool, prompt[:16], 0)
            decode(pool, last, [16], 4)  # warm-up
            best = min(decode(pool, last, [16], args.decode) for _ in range(args.rounds))
            out["decode_tok_s"] = args.decode / best
    out["peak_rss_mib"] = _peak_rss_mib()
    return out


def llama_row(args: argparse.Namespace) -> dict | None:
    """llama.cpp's row, from the same worker `mistralrs bench --against` drives (mistralrs_cli/peers).

    The worker runs under --llama-python; if it dies by a signal (the AMX crash) it is retried once
    with ggml's extra buffer types off. None, with a note, when llama_cpp is not there.
    """
    from mistralrs_cli.peers.llama_peer import LlamaPeer, PeerError

    prompt = args.prompt_ids[: args.prompt]
    try:
        with LlamaPeer(args.llama_python) as peer:
            peer.load(args.gguf, args.threads, max(512, args.prompt + args.decode + 32))
            peer.round(prompt[:8], 1)  # warm-up
            best_prefill = min(peer.round(prompt, 1)["ttft_s"] for _ in range(args.rounds))
            peer.round(prompt[:16], 5)  # warm-up
            best_decode = max(peer.round(prompt[:16], args.decode + 1)["decode_tok_s"] for _ in range(args.rounds))
            return {
                "engine": "llama.cpp (llama-cpp-python)" + ("" if peer.extra_bufts else ", extra buffers off"),
                "load_s": peer.last_load["load_s"],  # after a crash: the retried load
                "prefill_tok_s": len(prompt) / best_prefill,
                "decode_tok_s": best_decode,
                "peak_rss_mib": peer.last_rss,
            }
    except PeerError as e:
        print(f"[llama] skipped: {e.message}", file=sys.stderr)
        return None


def worker_transformers(args: argparse.Namespace) -> dict:
    import torch
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(args.threads)
    path = Path(args.gguf)
    model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.bfloat16).eval()
    prompt = _prompt_ids(args.prompt)
    ids = torch.tensor([prompt[i : i + 16] for i in range(args.batch)])
    steps = min(32, args.decode)

    def run() -> float:
        start = time.perf_counter()
        with torch.inference_mode():
            model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=steps, min_new_tokens=steps, do_sample=False, pad_token_id=0)
        return time.perf_counter() - start

    best = min(run() for _ in range(args.rounds))
    return {"engine": "transformers (bf16)", f"batch{args.batch}_tok_s": args.batch * steps / best, "peak_rss_mib": _peak_rss_mib()}


def _tag(row: dict | None, note: str) -> dict | None:
    if row is not None:
        row["engine"] += f" [{note}]"
    return row


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _run_worker(python: str, kind: str, args: argparse.Namespace, extra: list[str] = ()) -> dict | None:
    cmd = [python, __file__, "--worker", kind, "--gguf", args.gguf, "--threads", str(args.threads),
           "--prompt", str(args.prompt), "--decode", str(args.decode), "--rounds", str(args.rounds),
           "--batch", str(args.batch), *extra]
    env = dict(os.environ, BENCH_PROMPT_IDS=json.dumps(args.prompt_ids), PYTHONPATH=str(ROOT))
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["?"])[-1]
        print(f"[{kind}] skipped: {tail}", file=sys.stderr)
        return None
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--gguf", help="GGUF file (default: the embedded default model)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--prompt", type=int, default=128, help="prefill length in tokens")
    p.add_argument("--decode", type=int, default=128, help="greedy decode steps at batch 1")
    p.add_argument("--rounds", type=int, default=3, help="repetitions; the best is reported")
    p.add_argument("--batch", type=int, default=0, help="also measure batched decode at this batch size")
    p.add_argument("--engine-bench", type=int, default=0, help="also run `mistralrs bench` with N concurrent requests")
    p.add_argument("--llama-python", default=sys.executable, help="interpreter that has llama_cpp installed")
    p.add_argument("--dtype", default="auto", help=argparse.SUPPRESS)
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args()
    sys.path.insert(0, str(ROOT))
    if args.gguf is None:
        from mistralrs_cli.loading.default_model import resolve_default_model

        found = resolve_default_model()
        args.gguf = str(found.gguf_path)
    if args.worker:
        fn = {"ours": worker_ours, "transformers": worker_transformers}[args.worker]
        print(json.dumps(fn(args)))
        return
    args.prompt_ids = _make_prompt_ids(args.gguf, max(args.prompt, 16 * max(args.batch, 1) + 16))
    # Batch-1 runs first and alone, so their peak RSS is not the batched runs' KV pool.
    single = argparse.Namespace(**{**vars(args), "batch": 0})
    rows = [_run_worker(sys.executable, "ours", single)]
    llama = llama_row(single)
    rows.append(llama)
    if args.batch > 1:
        rows.append(_tag(_run_worker(sys.executable, "ours", args), "batch run"))
        rows.append(_tag(_run_worker(sys.executable, "ours", args, ["--dtype", "bf16"]), "batch run"))
        rows.append(_run_worker(sys.executable, "transformers", args))
    _report([r for r in rows if r], llama, args)
    if args.engine_bench:
        _report_engine_bench(args, llama)


def _report_engine_bench(args: argparse.Namespace, llama: dict | None) -> None:
    """`mistralrs bench` on the same file, its N-way figures beside llama.cpp's batch-1 decode."""
    cmd = [sys.executable, "-m", "mistralrs_cli", "bench", "--concurrency", str(args.engine_bench), "--json",
           "gguf-mistral", "-f", args.gguf]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    if proc.returncode != 0:
        print(f"[mistralrs bench] failed: {proc.stderr.strip()[-300:]}", file=sys.stderr)
        return
    r = json.loads(proc.stdout)
    n, b1, cc = r["concurrency"], r["batch1"]["decode_tok_s"], r["concurrent"]
    print(f"mistralrs bench (engine, prompt {r['prompt_len']}, {r['tokens']} tokens each): batch-1 decode {b1:.1f} tok/s; "
          f"{n} concurrent: {cc['throughput_tok_s']:.1f} tok/s with prefill "
          f"({cc['throughput_tok_s'] / b1:.1f}x batch 1), "
          + (f"{cc['decode_tok_s']:.1f} tok/s while all {n} decode ({cc['decode_tok_s'] / b1:.1f}x)"
             if cc["decode_tok_s"] else "no window where all decode together"))
    if llama:
        print(f"  against llama.cpp batch-1 decode {llama['decode_tok_s']:.1f} tok/s: "
              f"{n}-way throughput x{cc['throughput_tok_s'] / llama['decode_tok_s']:.2f}")


def _report(rows: list[dict], llama: dict | None, args: argparse.Namespace) -> None:
    keys = ["load_s", "prefill_tok_s", "decode_tok_s", f"batch{args.batch}_tok_s", "peak_rss_mib"]
    keys = [k for k in keys if any(k in r for r in rows)]
    print(f"file: {args.gguf}  threads: {args.threads}  prompt: {args.prompt}  decode: {args.decode}  best of {args.rounds}")
    print(f"{'engine':34}" + "".join(f"{k:>16}" for k in keys))
    for r in rows:
        print(f"{r['engine']:34}" + "".join(f"{r[k]:16.2f}" if k in r else f"{'-':>16}" for k in keys))
    if llama and rows[0] is not llama:
        ours = rows[0]
        ratios = {k: ours[k] / llama[k] for k in ("prefill_tok_s", "decode_tok_s") if k in llama}
        ratios["load_s"] = llama["load_s"] / ours["load_s"]
        ratios["peak_rss_mib"] = ours["peak_rss_mib"] / llama["peak_rss_mib"]
        print("ratio mistralrs/llama.cpp: " + ", ".join(
            f"{k.removesuffix('_tok_s')} speed x{v:.2f}" if k.endswith("tok_s") else
            (f"load speed x{v:.2f}" if k == "load_s" else f"peak RSS x{v:.2f}") for k, v in ratios.items()
        ))
    else:
        print("llama-cpp-python not available: pass --llama-python /path/to/venv/bin/python")


if __name__ == "__main__":
    main()
