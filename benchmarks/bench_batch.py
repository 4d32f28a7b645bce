"""Batch throughput: `mistralrs batch` on N lines with engine batching vs one request at a time.

Runs both in the same invocation on the same model (default: the embedded SmolLM2 Q4_1) and prints
the ratio. The "sequential loop" is the same command with --max-concurrency 1, so the only
difference is continuous batching.

    python benchmarks/bench_batch.py --lines 200 --max-tokens 32
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TOPICS = ["the sea", "a city at night", "prime numbers", "coffee", "the moon", "rivers", "bicycles", "winter"]
ASKS = ["Write one sentence about {}.", "Give two facts about {}.", "Describe {} to a child.", "Name a song about {}."]


def write_input(path: Path, lines: int) -> None:
    """`lines` short chat requests of varied lengths."""
    with path.open("w") as f:
        for i in range(lines):
            ask = ASKS[i % len(ASKS)].format(TOPICS[(i // len(ASKS)) % len(TOPICS)])
            f.write(json.dumps({"id": f"q{i}", "messages": [{"role": "user", "content": ask}]}) + "\n")


def run(src: Path, out: Path, concurrency: int, max_tokens: int, model: list[str],
        engine: list[str]) -> tuple[float, float]:
    """Wall seconds and the completion tok/s printed in the batch summary."""
    cmd = [sys.executable, "-m", "mistralrs_cli", *engine, "batch", str(src), "-o", str(out), "--max-tokens", str(max_tokens),
           "--max-concurrency", str(concurrency), *model]
    start = time.perf_counter()
    res = subprocess.run(cmd, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - start
    if res.returncode != 0:
        sys.exit(f"batch failed ({res.returncode}): {res.stderr.strip()[-500:]}")
    match = re.search(r"\(([\d.]+) tok/s\)", res.stderr)
    return wall, float(match.group(1)) if match else 0.0


def main() -> None:
    """Run both modes and print the comparison."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lines", type=int, default=200)
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--prefix-cache", action="store_true", help="both runs with the engine's prefix cache")
    ap.add_argument("model", nargs="*", help="model subcommand and options (default: the embedded model)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "in.jsonl"
        write_input(src, args.lines)
        engine = ["--prefix-cache"] if args.prefix_cache else []
        seq_wall, seq_rate = run(src, Path(tmp) / "seq.jsonl", 1, args.max_tokens, args.model, engine)
        bat_wall, bat_rate = run(src, Path(tmp) / "bat.jsonl", args.concurrency, args.max_tokens, args.model, engine)
    print(f"{args.lines} lines x up to {args.max_tokens} tokens" + (", prefix cache on" if args.prefix_cache else ""))
    print(f"sequential (--max-concurrency 1): {seq_rate:8.1f} tok/s  wall {seq_wall:6.1f} s")
    print(f"batched (--max-concurrency {args.concurrency}): {bat_rate:8.1f} tok/s  wall {bat_wall:6.1f} s")
    print(f"ratio: {bat_rate / max(seq_rate, 1e-9):.2f}x throughput")


if __name__ == "__main__":
    main()
