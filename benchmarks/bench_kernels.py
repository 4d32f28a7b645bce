"""Time each numba.cuda kernel against its torch equivalent at Mistral-7B and SmolLM2 shapes.

Run on a GPU machine: `python benchmarks/bench_kernels.py [--model mistral-7b] [--reps 50]`.
Prints one row per (kernel case, torch baseline): milliseconds per call (launch overhead
included, measured with CUDA events after a warm-up that also compiles the kernel), the
speed-up (baseline ms / kernel ms, > 1 means the kernel wins), the kernel's effective
bandwidth against the H100's 3.35 TB/s, and the max |kernel - reference| as a sanity check.
`--smoke` runs the same code at toy shapes in numba's CUDA simulator (CPU, timings
meaningless) to check the script itself.

`--cpu-matmul` times instead the CPU matmul candidates of a quantized linear
(mistralrs_cli/models/matmul_candidates.py) per weight shape of the default model at batch rows
1 and 32 (`--rows`), weights cycled out of cache, fastest call of `--rounds` passes, on
`--threads` threads, and prints the table for docs/performance.md, the `lscpu` model and flags,
and the machine key with its entry for `MEASURED` in models/matmul_choice.py. `--errors` adds
each candidate's relative error on the default model's real weights and activations.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

HBM_BYTES_PER_S = 3.35e12  # H100 SXM
MODELS: dict[str, dict[str, Any]] = {
    "mistral-7b": dict(
        hidden=4096,
        heads=32,
        kv=8,
        hd=128,
        inter=14336,
        vocab=32768,
        window=4096,
        tokens=(1, 512),
        batch=(1, 32),
        ctx=4096,
        prefill=2048,
    ),
    "smollm2-135m": dict(
        hidden=576,
        heads=9,
        kv=3,
        hd=64,
        inter=1536,
        vocab=49152,
        window=None,
        tokens=(1, 512),
        batch=(1, 32),
        ctx=2048,
        prefill=2048,
    ),
    "smoke": dict(
        hidden=256,
        heads=4,
        kv=2,
        hd=8,
        inter=96,
        vocab=64,
        window=8,
        tokens=(1, 3),
        batch=(2,),
        ctx=12,
        prefill=6,
    ),
}
Row = tuple[str, str, Callable[[], Any], dict[str, Callable[[], Any]], float, float]


def _row(torch: Any, op: str, case: str, args: tuple, nbytes: float, **extra: Any) -> Row:
    """One case: the launcher and the torch reference on the same args, checked once.

    In-place ops (rope, lora_delta) are checked on clones; timing reuses the same buffers.
    """
    from kernels_cuda import dispatch, reference

    kern, ref = dispatch.kernel(op), getattr(reference, op)

    def clones() -> tuple:
        return tuple(a.clone() if isinstance(a, torch.Tensor) else a for a in args)

    got, want = kern(*clones()), ref(*clones())
    pairs = zip(got, want, strict=True) if isinstance(got, tuple) else [(got, want)]
    diff = max(float((a.float() - b.float()).abs().max()) for a, b in pairs)
    bases = {"torch ref": lambda: ref(*args), **extra}
    return op, case, lambda: kern(*args), bases, diff, nbytes


def cases(torch: Any, m: dict[str, Any], device: str) -> Iterator[Row]:
    """Every (op, case) for one model, at decode and prefill/batch token counts."""
    F = torch.nn.functional
    f16 = dict(device=device, dtype=torch.float16)
    h, nh, nkv, hd, inter = m["hidden"], m["heads"], m["kv"], m["hd"], m["inter"]
    cos, sin = torch.rand(8192, hd // 2, device=device), torch.rand(8192, hd // 2, device=device)
    for t in m["tokens"]:
        x, res, w = torch.randn(t, h, **f16), torch.randn(t, h, **f16), torch.rand(h, **f16)
        yield _row(torch, "rmsnorm_residual", f"T={t} H={h}", (x, res, w), 8 * t * h)
        q, k = torch.randn(t, nh, hd, **f16), torch.randn(t, nkv, hd, **f16)
        pos = torch.randint(0, 8192, (t,), device=device)
        nbytes = 4 * t * (nh + nkv) * hd + 4 * t * hd + 8 * t
        yield _row(torch, "rope", f"T={t}", (q, k, pos, cos, sin), nbytes)
        g, u = torch.randn(t, inter, **f16), torch.randn(t, inter, **f16)
        yield _row(torch, "silu_mul", f"T={t} I={inter}", (g, u), 6 * t * inter)
    ctx, win = m["ctx"], m["window"]
    for b in m["batch"]:
        pool_k, pool_v = torch.randn(b * ctx, nkv, hd, **f16), torch.randn(b * ctx, nkv, hd, **f16)
        slots = torch.randperm(b * ctx, device=device).reshape(b, ctx)
        q = torch.randn(b, nh, hd, **f16)
        dk = pool_k[slots].permute(0, 2, 1, 3).contiguous()  # (B, n_kv, ctx, hd)
        dv = pool_v[slots].permute(0, 2, 1, 3).contiguous()
        sdpa = lambda q=q, k=dk, v=dv: F.scaled_dot_product_attention(  # noqa: E731
            q[:, :, None], k, v, enable_gqa=True
        )
        args = (q, pool_k, pool_v, slots, torch.full((b,), ctx, device=device), None, None, win)
        nbytes = 4 * b * ctx * nkv * hd + 16 * b * ctx + 4 * b * nh * hd
        yield _row(
            torch, "decode_attention", f"B={b} ctx={ctx}", args, nbytes, **{"sdpa dense": sdpa}
        )
    t = m["prefill"]
    q, k, v = (torch.randn(t, n, hd, **f16) for n in (nh, nkv, nkv))
    sdpa = lambda: F.scaled_dot_product_attention(  # noqa: E731
        q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1), is_causal=True, enable_gqa=True
    )
    nbytes = 4 * t * (nh + nkv) * hd
    yield _row(
        torch,
        "prefill_attention",
        f"T={t}",
        (q, k, v, None, None, win),
        nbytes,
        **{"sdpa causal": sdpa},
    )
    for t in m["batch"]:
        n_ad, r = 4, 16
        y, x, s = (
            torch.randn(t, h, **f16),
            torch.randn(t, h, **f16),
            torch.rand(t, n_ad, device=device),
        )
        a, bb = torch.randn(n_ad, r, h, **f16) * 0.05, torch.randn(n_ad, h, r, **f16) * 0.05
        nbytes = 2 * n_ad * r * 2 * h + 2 * t * 3 * h
        yield _row(torch, "lora_delta", f"T={t} {n_ad}x r{r}", (y, x, a, bb, s), nbytes)
        logits = torch.randn(t, m["vocab"], device=device) * 3
        nbytes = 16 * t * m["vocab"]
        yield _row(torch, "sample_filter", f"B={t} V={m['vocab']}", (logits, 0.8, 40, 0.9), nbytes)


def timeit(torch: Any, fn: Callable[[], Any], reps: int, gpu: bool) -> float:
    """Milliseconds per call after warm-up (CUDA events on a GPU)."""
    for _ in range(3 if gpu else 1):
        fn()
    if not gpu:
        start = time.perf_counter()
        for _ in range(reps):
            fn()
        return (time.perf_counter() - start) * 1e3 / reps
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(reps):
        fn()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / reps


# (K in, N out, int4 terms) of SmolLM2-135M: o_proj, down's transpose, down, fused q/k/v, fused
# gate/up, the Q8_0 head (two int4 terms).
CPU_SHAPES = [(576, 576, 1), (576, 1536, 1), (1536, 576, 1), (576, 960, 1), (576, 3072, 1), (576, 49152, 2)]


def lscpu_lines() -> list[str]:
    """The `lscpu` model name and flags lines (every CPU figure is logged with them)."""
    import subprocess

    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
    except OSError:
        return ["lscpu: not available"]
    return [ln.strip() for ln in out.splitlines() if ln.startswith(("Model name", "Flags"))]


def cpu_matmul(args: argparse.Namespace) -> int:
    """Time every matmul candidate per shape on this CPU and print the tables."""
    import torch

    from mistralrs_cli.models import matmul_choice as mc
    from mistralrs_cli.models.matmul_candidates import CANDIDATES

    torch.set_num_threads(args.threads)
    names = list(CANDIDATES) if args.candidates == "all" else args.candidates.split(",")
    rows = {f"M={m}": m for m in args.rows}
    machine = mc.this_machine()
    print("\n".join(lscpu_lines()))
    print(f"torch {torch.__version__}, machine key {machine.key()}, {args.threads} threads, best of {args.rounds}")
    print(f"\n| K×N (terms) | {' | '.join(names)} |\n|---|{'---|' * len(names)}")
    table: dict[str, dict[str, dict[str, float]]] = {}
    for k, n, terms in CPU_SHAPES:
        got = mc.measure_shape(k, n, names, args.rounds, terms, rows)
        table[mc.shape_key(k, n)] = got
        fast = {r: min(got[r].values()) for r in rows}
        cells = [" / ".join(_cell(got[r][name], fast[r]) for r in rows) for name in names]
        print(f"| {k}×{n} ({terms}) | {' | '.join(cells)} |", flush=True)
    print(f"(µs per call, {' / '.join(rows)}; bold: fastest)")
    probe = {bucket: f"M={m}" for bucket, m in mc.PROBE_M.items()}
    if all(label in rows for label in probe.values()):
        entry = {
            shape: {bucket: {name: round(t[label][name], 1) for name in names} for bucket, label in probe.items()}
            for shape, t in table.items()
        }
        print(f"\nMEASURED[{machine.key()!r}] = {entry!r}")
        choice = mc.Choice(machine, "measured", entry)
        print("choice:", choice.describe((k, n) for k, n, _ in CPU_SHAPES))
    if args.errors:
        real_errors(names)
    return 0


def _cell(us: float, fastest: float) -> str:
    text = f"{us:.0f}" if us >= 10 else f"{us:.1f}"
    return f"**{text}**" if us == fastest else text


def real_errors(names: list[str]) -> None:
    """Relative error of each candidate on the default model: every quantized linear's real input
    (a chat prompt, teacher-forced) against its exact f32 weight, summed over the model."""
    import torch

    from mistralrs_cli.loading.default_model import resolve_default_model
    from mistralrs_cli.loading.gguf import load_gguf_file
    from mistralrs_cli.loading.spec import LoadOptions
    from mistralrs_cli.models.matmul_candidates import prepare
    from mistralrs_cli.models.quant_linear import Int4Linear

    path = resolve_default_model().gguf_path
    fast, exact = load_gguf_file(path, LoadOptions()), load_gguf_file(path, LoadOptions(dtype="f32"))
    layers = {name: m for name, m in fast.model.named_modules() if isinstance(m, Int4Linear)}
    inputs: dict[str, torch.Tensor] = {}
    for name, m in layers.items():
        m.register_forward_pre_hook(lambda mod, a, name=name: inputs.__setitem__(name, a[0].reshape(-1, mod.in_features)))
    ids = fast.tokenizer.encode_chat([{"role": "user", "content": "Write a haiku about the sea, then explain it."}])
    seq = torch.tensor([ids])
    exact_modules = dict(exact.model.named_modules())
    err = {name: 0.0 for name in names}
    ref_norm = 0.0
    with torch.inference_mode():
        fast.model(seq, torch.arange(seq.shape[1])[None])
        for name, layer in layers.items():
            x = inputs[name].float()
            ref = x @ exact_modules[name].weight.float().T
            ref_norm += ref.square().sum().item()
            for cand in names:
                err[cand] += (prepare(cand, layer).matmul(x) - ref).square().sum().item()
    print(f"\nrelative error on the default model's weights ({len(layers)} linears, {seq.shape[1]} tokens):")
    for cand in names:
        print(f"  {cand:16} {(err[cand] / ref_norm) ** 0.5:.2e}")


def main(argv: list[str] | None = None) -> int:
    """Parse options, run every case, print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=["all", "mistral-7b", "smollm2-135m"], default="all")
    parser.add_argument("--reps", type=int, default=50)
    parser.add_argument("--smoke", action="store_true", help="toy shapes in the CUDA simulator")
    parser.add_argument("--cpu-matmul", action="store_true", help="time the CPU matmul candidates instead")
    parser.add_argument("--threads", type=int, default=2, help="--cpu-matmul: torch threads")
    parser.add_argument("--rounds", type=int, default=5, help="--cpu-matmul: passes over the weight copies")
    parser.add_argument("--rows", type=lambda s: [int(v) for v in s.split(",")], default=[1, 32])
    parser.add_argument("--candidates", default="all", help="--cpu-matmul: comma-separated names")
    parser.add_argument("--errors", action="store_true", help="--cpu-matmul: relative error on real weights")
    args = parser.parse_args(argv)
    if args.cpu_matmul:
        return cpu_matmul(args)
    if args.smoke:
        os.environ["NUMBA_ENABLE_CUDASIM"] = "1"  # before numba is imported
    import torch

    gpu = not args.smoke
    if gpu and not torch.cuda.is_available():
        print(
            "bench_kernels: no CUDA GPU visible to torch; the kernels need one to be timed "
            "(use --smoke to check the script in the simulator)",
            file=sys.stderr,
        )
        return 2
    models = (
        ["smoke"] if args.smoke else (list(MODELS)[:2] if args.model == "all" else [args.model])
    )
    device = "cuda" if gpu else "cpu"
    print(f"device: {torch.cuda.get_device_name() if gpu else 'numba CUDA simulator (CPU)'}")
    head = f"{'op':18} {'case':20} {'kernel ms':>10} {'baseline':>12} {'base ms':>9} {'speedup':>8} {'GB/s':>8} {'%HBM':>6} {'max|diff|':>10}"
    with torch.inference_mode():
        for name in models:
            print(f"\n== {name} (f16 activations) ==\n{head}")
            for op, case, kern, bases, diff, nbytes in cases(torch, MODELS[name], device):
                k_ms = timeit(torch, kern, args.reps if gpu else 1, gpu)
                gbs = nbytes / (k_ms * 1e-3) / 1e9
                for base, fn in bases.items():
                    b_ms = timeit(torch, fn, args.reps if gpu else 1, gpu)
                    print(
                        f"{op:18} {case:20} {k_ms:10.4f} {base:>12} {b_ms:9.4f} {b_ms / k_ms:8.2f} "
                        f"{gbs:8.1f} {100 * gbs * 1e9 / HBM_BYTES_PER_S:6.1f} {diff:10.2e}"
                    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
