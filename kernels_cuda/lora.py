"""Batched LoRA / X-LoRA delta in one launch per linear: y += sum_i s[t, i] * B_i (A_i x_t).

One block per (token, tile of output features). The block first shrinks its token through
every adapter's A (all n_ad * r dot products at once, `lanes` threads per dot, one tree
reduction in shared memory), folds in the token's scalings, then expands through B for
its output tile. The shrink is repeated per output tile; A stays in L2 across tiles.
"""

from __future__ import annotations

import functools
from typing import Any

import torch
from numba import cuda, float32

from . import _common
from ._common import KernelInputError, check_float, check_shape, next_pow2, smin

MAX_THREADS = 128
RED_FLOATS = 8192  # shared floats for the shrink's partial sums (32 KiB)


@functools.cache
def _kernel(pairs_cap: int, lanes: int, groups: int) -> Any:
    """Kernel for up to `pairs_cap` (adapter, rank) pairs, `groups` x `lanes` threads."""
    nt = lanes * groups
    per_thread = pairs_cap // groups  # pairs each lane group sums
    red_size = pairs_cap * lanes  # a plain constant: numba needs one for shared arrays

    @cuda.jit
    def lora_kernel(x, a, b, scalings, tile_out, y):
        t = cuda.blockIdx.x
        tid = cuda.threadIdx.x
        grp = tid // lanes
        lane = tid - grp * lanes
        rank = a.shape[1]
        n_pairs = a.shape[0] * rank
        n_in = x.shape[1]
        red = cuda.shared.array(red_size, float32)  # red[p * lanes + lane]
        # Shrink: lane `lane` of group `grp` sums x . A[p] over d = lane, lane + lanes, ...
        for k in range(per_thread):
            p = grp + k * groups
            part = float32(0.0)
            if p < n_pairs:
                i = p // rank
                r = p - i * rank
                for d in range(lane, n_in, lanes):
                    part += float32(a[i, r, d]) * float32(x[t, d])
            red[p * lanes + lane] = part
        cuda.syncthreads()
        s = lanes // 2
        while s > 0:  # tree over lanes, all pairs at once
            if lane < s:
                for k in range(per_thread):
                    p = grp + k * groups
                    red[p * lanes + lane] += red[p * lanes + lane + s]
            cuda.syncthreads()
            s //= 2
        # Expand: h'[p] = (A_i x_t)[r] * s[t, i] sits in red[p * lanes].
        o0 = cuda.blockIdx.y * tile_out
        o1 = smin(o0 + tile_out, y.shape[1])
        for o in range(o0 + tid, o1, nt):
            acc = float32(0.0)
            for p in range(n_pairs):
                i = p // rank
                acc += float32(b[i, o, p - i * rank]) * red[p * lanes] * float32(scalings[t, i])
            y[t, o] = float32(y[t, o]) + acc

    return lora_kernel


@torch.inference_mode()
def lora_delta(
    y: torch.Tensor,
    x: torch.Tensor,
    a: torch.Tensor,
    b: torch.Tensor,
    scalings: torch.Tensor,
    *,
    out_tiles: int | None = None,
) -> torch.Tensor:
    """y (T, out) += sum_i scalings[t, i] * B_i (A_i x_t), in place; returns y.

    a (n_ad, r, in), b (n_ad, out, r), scalings (T, n_ad) already hold alpha/r and any
    global weight; adapters of different rank are zero-padded to a common r by the caller.
    """
    for name, t in (("y", y), ("x", x), ("a", a), ("b", b), ("scalings", scalings)):
        check_float(name, t)
    n_tok, n_out = y.shape
    n_ad, rank, n_in = a.shape
    check_shape("x", x, (n_tok, n_in))
    check_shape("b", b, (n_ad, n_out, rank))
    check_shape("scalings", scalings, (n_tok, n_ad))
    if n_ad == 0 or rank == 0 or n_tok == 0 or n_out == 0:
        return y
    pairs_cap = next_pow2(n_ad * rank)
    if pairs_cap > RED_FLOATS:
        raise KernelInputError(f"{n_ad} adapters x rank {rank} exceeds {RED_FLOATS} pairs")
    lanes = max(1, min(32, next_pow2(n_in // 4), RED_FLOATS // pairs_cap))
    groups = max(1, min(MAX_THREADS // lanes, 4, pairs_cap))
    nt = lanes * groups
    if out_tiles is None:  # enough blocks for two waves, at least nt outputs per tile
        out_tiles = min(-(-2 * _common.sm_count() // n_tok), -(-n_out // nt))
    out_tiles = max(1, min(out_tiles, n_out))
    tile = -(-n_out // out_tiles)
    # In-place update needs y's own storage to be contiguous.
    yc = y if y.is_contiguous() else y.contiguous()
    _common.launch(
        _kernel(pairs_cap, lanes, groups),
        (n_tok, -(-n_out // tile)),
        nt,
        x.contiguous(),
        a.contiguous(),
        b.contiguous(),
        scalings.contiguous(),
        tile,
        yc,
    )
    if yc is not y:
        y.copy_(yc)
    return y
