"""X-LoRA decode cost: `mistralrs bench` on an X-LoRA model vs its base model alone, in one run.

Writes a random X-LoRA model for a GGUF base (default: the embedded SmolLM2 Q4_1) into a temporary
folder, as `mistralrs x-lora-demo` does: `--adapters` LoRA experts of rank `--rank` on every
projection of every layer, a depth-2 layerwise classifier. The weights are random, so only speed
means anything here. Then runs `mistralrs bench x-lora-gguf-mistral`, which measures the base
alone in the same process.

    python benchmarks/bench_xlora.py --adapters 3 --rank 16
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from mistralrs_cli.adapters.random_xlora import write_random_xlora
from mistralrs_cli.errors import MistralrsError
from mistralrs_cli.loading.default_model import resolve_default_model
from mistralrs_cli.loading.gguf_config import config_from_gguf
from mistralrs_cli.loading.gguf_file import GGUFFile


def main() -> None:
    """Build the random X-LoRA model and run the bench on it."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gguf", type=Path, help="base GGUF file (default: the embedded model)")
    ap.add_argument("--adapters", type=int, default=3)
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--tgt-non-granular-index", type=int)
    args = ap.parse_args()
    try:
        gguf = args.gguf or resolve_default_model().gguf_path
    except MistralrsError as e:
        sys.exit(f"{e.message} (or pass --gguf)")
    cfg = config_from_gguf(GGUFFile(gguf))
    with tempfile.TemporaryDirectory() as tmp:
        built = write_random_xlora(Path(tmp) / "xlora", cfg, args.adapters, args.rank)
        xdir, ordering = built.root, built.ordering
        cmd = [sys.executable, "-m", "mistralrs_cli", "bench", "--tokens", str(args.tokens),
               "--concurrency", str(args.concurrency), "--json",
               "x-lora-gguf-mistral", "-f", str(gguf), "-x", str(xdir), "-o", str(ordering)]
        if args.tgt_non_granular_index is not None:
            cmd += ["--tgt-non-granular-index", str(args.tgt_non_granular_index)]
        res = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if res.returncode != 0:
        sys.exit(f"bench failed ({res.returncode}): {res.stderr.strip()[-800:]}")
    result = json.loads(res.stdout)
    base = result["base_model"]
    print(f"{args.adapters} adapters, rank {args.rank}, every projection of {cfg.num_hidden_layers} layers")
    print(f"X-LoRA decode (batch 1): {result['batch1']['decode_tok_s']:8.1f} tok/s")
    print(f"base alone    (batch 1): {base['decode_tok_s']:8.1f} tok/s")
    print(f"slowdown: {base['slowdown']:.2f}x")
    print(f"X-LoRA throughput, {args.concurrency} concurrent: {result['concurrent']['throughput_tok_s']:.1f} tok/s")


if __name__ == "__main__":
    main()
