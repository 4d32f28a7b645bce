"""Compile every kernel to PTX (and SASS via ptxas) at the launchers' real signatures, no GPU needed.

`python -m kernels_cuda.compile_check [--cc 9.0]` drives each launcher at Mistral-7B and
SmolLM2 shapes in f16 and f32, but instead of launching it compiles the kernel with NVVM
for the given compute capability, fails on any f64 arithmetic (an accidental promotion),
and, when ptxas is found, prints registers, shared memory and spills per kernel. Needs
NVVM (a CUDA toolkit) and NUMBA_ENABLE_CUDASIM unset.
"""

from __future__ import annotations

import argparse
import glob
import os
import re
import shutil
import subprocess
import sys
import tempfile
from typing import Any

import numba
import torch
from numba import cuda

from . import _common

F64_OPS = re.compile(r"^\s*[a-z]+(\.\w+)*\.f64\b.*$", re.M)  # any f64 instruction
NO_NVVM = 3  # exit status when no toolkit is installed
SHAPES = {  # name: (hidden, n_heads, n_kv, head_dim, intermediate, vocab)
    "mistral-7b": (4096, 32, 8, 128, 14336, 32768),
    "smollm2-135m": (576, 9, 3, 64, 1536, 49152),
}


def _probe(a: Any) -> None:
    a[0] = 1.0


def _ptxas() -> str | None:
    """Path of ptxas, from PATH, CUDA_HOME or /usr/local/cuda*."""
    found = shutil.which("ptxas")
    if found:
        return found
    roots = [os.environ.get("CUDA_HOME", "")] + sorted(glob.glob("/usr/local/cuda*"))
    for root in roots:
        path = os.path.join(root, "bin", "ptxas")
        if root and os.path.exists(path):
            return path
    return None


class Compiler:
    """Stands in for `_common.launch`: compiles instead of launching and records the result."""

    def __init__(self, cc: tuple[int, int]) -> None:
        self.cc = cc
        self.seen: dict[tuple[int, tuple[Any, ...]], tuple[str, str]] = {}

    def __call__(self, kernel: Any, grid: Any, block: int, *args: Any) -> None:
        arrays = [a.detach().numpy() if isinstance(a, torch.Tensor) else a for a in args]
        sig = tuple(numba.typeof(a) for a in arrays)
        key = (id(kernel), sig)  # factories make one kernel object per configuration
        if key not in self.seen:
            ptx, _ = cuda.compile_ptx(kernel.py_func, sig, cc=self.cc)
            self.seen[key] = (kernel.py_func.__name__, ptx)


def _drive(shapes: tuple[int, ...], dtype: torch.dtype) -> None:
    """Call every launcher once at these model shapes (tiny token counts, real widths)."""
    from . import activation, attention, attention_prefill, lora, rmsnorm, rope, sampling

    hidden, nh, nkv, hd, inter, vocab = shapes
    r = torch.randn
    x = r(2, hidden).to(dtype)
    rmsnorm.rmsnorm_residual(x, x, r(hidden).to(dtype), 1e-5)
    rmsnorm.rmsnorm_residual(x, None, r(hidden).to(dtype), 1e-5)
    cos, sin = r(16, hd // 2), r(16, hd // 2)
    for inter_leaved in (False, True):
        rope.rope(
            r(2, nh, hd).to(dtype),
            r(2, nkv, hd).to(dtype),
            torch.tensor([1, 2]),
            cos,
            sin,
            inter_leaved,
        )
    activation.silu_mul(r(2, inter).to(dtype), r(2, inter).to(dtype))
    pool = r(256, nkv, hd).to(dtype)
    slots = torch.arange(256).reshape(2, 128)
    for splits in (1, 2):
        attention.decode_attention(
            r(2, nh, hd).to(dtype),
            pool,
            pool,
            slots,
            torch.tensor([128, 7]),
            window=16,
            num_splits=splits,
        )
    kv = r(40, nkv, hd).to(dtype)
    attention_prefill.prefill_attention(r(40, nh, hd).to(dtype), kv, kv, window=8)
    lora.lora_delta(
        r(2, hidden).to(dtype),
        x,
        r(3, 16, hidden).to(dtype),
        r(3, hidden, 16).to(dtype),
        torch.rand(2, 3),
    )
    sampling.sample_filter(
        r(2, vocab), torch.ones(2), torch.tensor([0, 40]), torch.tensor([0.9, 1.0])
    )


def _resources(ptxas: str, ptx: str, cc: tuple[int, int]) -> str:
    """ptxas's one-line resource report (registers, smem, spills) for one kernel."""
    with tempfile.NamedTemporaryFile("w", suffix=".ptx", delete=False) as f:
        f.write(ptx)
    try:
        arch = f"sm_{cc[0]}{cc[1]}"
        res = subprocess.run(
            [ptxas, f"-arch={arch}", "-v", f.name, "-o", os.devnull],
            capture_output=True,
            text=True,
            check=True,
        )
    finally:
        os.unlink(f.name)
    used = re.findall(r"Used (\d+) registers.*?(?:, (\d+) bytes smem)?", res.stderr)
    spills = re.findall(r"(\d+) bytes spill stores", res.stderr)
    regs = used[0][0] if used else "?"
    smem = re.findall(r"(\d+) bytes smem", res.stderr)
    return (
        f"regs {regs:>3}  smem {smem[0] if smem else 0:>6} B  spill {spills[0] if spills else 0} B"
    )


def main(argv: list[str] | None = None) -> int:
    """Compile all kernels; print one line per kernel variant; exit 1 on f64 arithmetic."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cc", default="9.0", help="compute capability, e.g. 9.0 for H100")
    args = parser.parse_args(argv)
    if _common.is_simulator():
        print("unset NUMBA_ENABLE_CUDASIM: the simulator cannot compile", file=sys.stderr)
        return 2
    cc = tuple(int(p) for p in args.cc.split("."))
    # Device functions compile for the "current device": stand one in with the wanted cc.
    from numba.cuda import dispatcher

    device = argparse.Namespace(compute_capability=cc)
    dispatcher.get_current_device = lambda: device  # type: ignore[attr-defined]
    compiler = Compiler(cc)  # type: ignore[arg-type]
    try:  # probe: NVVM (and, with numba-cuda, NVRTC) must load
        cuda.compile_ptx(_probe, (numba.types.float32[:],), cc=cc)
    except (RuntimeError, OSError, ImportError) as exc:
        print(f"no usable CUDA toolkit to compile with: {exc}".splitlines()[0], file=sys.stderr)
        return NO_NVVM
    _common.launch = compiler  # type: ignore[assignment]
    _common.sm_count = lambda: 132  # H100 SXM  # type: ignore[assignment]
    for shapes in SHAPES.values():
        for dtype in (torch.float16, torch.float32):
            _drive(shapes, dtype)
    ptxas = _ptxas()
    bad = 0
    for (_, sig), (name, ptx) in compiler.seen.items():
        f64 = F64_OPS.findall(ptx)
        bad += bool(f64)
        res = _resources(ptxas, ptx, cc) if ptxas else "ptxas not found"
        types = ", ".join(str(t) for t in sig if isinstance(t, numba.types.Array))
        print(f"{name:24s} {res}  {'F64! ' if f64 else ''}[{types}]")
    print(
        f"{len(compiler.seen)} kernel variants compiled for sm_{cc[0]}{cc[1]}; "
        f"{bad} with f64 arithmetic"
    )
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
