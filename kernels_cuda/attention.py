"""Decode attention over a paged KV pool (one query per sequence), with GQA and sliding window.

One block per (sequence, kv head, context split) serves all the query heads of that kv head,
so each K/V row is read once per group. Keys stream through in tiles of `kt` with an online
softmax; long contexts are split across blocks and merged by a second small kernel
(flash-decoding). The tiled prefill kernel lives in attention_prefill.py.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import numpy as np
import torch
from numba import cuda, float32, int32, int64

from . import _common
from ._common import KernelInputError, check_float, check_shape, next_pow2, smax, smin
from .attention_prefill import NO_WINDOW, prefill_attention

__all__ = ["decode_attention", "prefill_attention"]

NEG_INF = float32(-math.inf)


@functools.cache
def _kernel(hd: int, group: int, kt: int, nt: int) -> Any:
    """Kernel for head_dim `hd`, `group` query heads per kv head, key tiles of `kt`, `nt` threads."""
    pad = hd + 1  # NOTE: padded K rows so threads reading different keys hit different banks
    # shared array sizes must be plain constants for numba, not expressions
    q_size, k_size, s_size = group * hd, kt * pad, group * kt

    @cuda.jit
    def decode_kernel(
        q,
        k_pool,
        v_pool,
        slots,
        lens,
        q_pos,
        k_pos,
        window,
        scale,
        tiles_per_split,
        out,
        part_m,
        part_l,
        part_acc,
    ):
        b = cuda.blockIdx.x
        kvh = cuda.blockIdx.y
        split = cuda.blockIdx.z
        tid = cuda.threadIdx.x
        qs = cuda.shared.array(q_size, float32)  # scaled queries of the group
        acc = cuda.shared.array(q_size, float32)  # each element owned by one thread
        ks = cuda.shared.array(k_size, float32)
        sc = cuda.shared.array(s_size, float32)  # scores, then probabilities
        slot_s = cuda.shared.array(kt, int64)
        ok_s = cuda.shared.array(kt, int32)
        m_s = cuda.shared.array(group, float32)
        l_s = cuda.shared.array(group, float32)
        corr_s = cuda.shared.array(group, float32)

        n_ctx = smin(lens[b], slots.shape[1])
        qp = q_pos[b]
        for e in range(tid, group * hd, nt):
            g = e // hd
            qs[e] = float32(q[b, kvh * group + g, e - g * hd]) * float32(scale)
            acc[e] = 0.0
        if tid < group:
            m_s[tid] = NEG_INF
            l_s[tid] = 0.0
        cuda.syncthreads()
        first = split * tiles_per_split
        for tile in range(first, first + tiles_per_split):
            start = tile * kt
            if start >= n_ctx:
                break  # uniform: every thread sees the same n_ctx
            if tid < kt:
                kj = start + tid
                ok = 0
                slot_s[tid] = 0
                if kj < n_ctx:
                    slot_s[tid] = slots[b, kj]
                    kp = k_pos[b, kj]
                    if kp >= 0 and kp <= qp and qp - kp < window:
                        ok = 1
                ok_s[tid] = ok
            cuda.syncthreads()
            visible = 0
            for j in range(kt):
                visible |= ok_s[j]
            if visible:  # skip tiles wholly outside the causal window (no K/V traffic)
                for e in range(tid, kt * hd, nt):
                    j = e // hd
                    if ok_s[j]:
                        ks[j * pad + e - j * hd] = float32(k_pool[slot_s[j], kvh, e - j * hd])
                cuda.syncthreads()
                for e in range(tid, group * kt, nt):
                    g = e // kt
                    j = e - g * kt
                    s = NEG_INF
                    if ok_s[j]:
                        s = float32(0.0)
                        for d in range(hd):
                            s += qs[g * hd + d] * ks[j * pad + d]
                    sc[e] = s
                cuda.syncthreads()
                # Online softmax, one thread per head scanning the tile's scores in shared
                # memory: for kt <= 64 a serial scan costs fewer barriers than a tree.
                if tid < group:
                    m_old = m_s[tid]
                    m_new = m_old
                    for j in range(kt):
                        m_new = smax(m_new, sc[tid * kt + j])
                    tot = float32(0.0)
                    for j in range(kt):
                        s = sc[tid * kt + j]
                        p = float32(0.0) if s == NEG_INF else math.exp(s - m_new)
                        sc[tid * kt + j] = p
                        tot += p
                    corr = float32(1.0) if m_old == NEG_INF else math.exp(m_old - m_new)
                    l_s[tid] = l_s[tid] * corr + tot
                    m_s[tid] = m_new
                    corr_s[tid] = corr
                cuda.syncthreads()
                for e in range(tid, group * hd, nt):
                    g = e // hd
                    d = e - g * hd
                    a = acc[e] * corr_s[g]
                    for j in range(kt):
                        p = sc[g * kt + j]
                        if p != 0.0:  # masked keys: no V read
                            a += p * float32(v_pool[slot_s[j], kvh, d])
                    acc[e] = a
            cuda.syncthreads()  # shared buffers are rewritten by the next tile
        for e in range(tid, group * hd, nt):
            g = e // hd
            h = kvh * group + g
            d = e - g * hd
            if part_acc.shape[2] == 1:
                lsum = l_s[g]
                out[b, h, d] = acc[e] / lsum if lsum > 0 else float32(0.0)
            else:
                part_acc[b, h, split, d] = acc[e]
                if d == 0:
                    part_m[b, h, split] = m_s[g]
                    part_l[b, h, split] = l_s[g]

    return decode_kernel


@cuda.jit
def combine_kernel(part_m, part_l, part_acc, out):
    """Merge the splits' partial softmax states: one block per (sequence, head), threads over hd."""
    b = cuda.blockIdx.x
    h = cuda.blockIdx.y
    n_split = part_m.shape[2]
    m = NEG_INF
    for s in range(n_split):
        m = smax(m, part_m[b, h, s])
    for d in range(cuda.threadIdx.x, out.shape[2], cuda.blockDim.x):
        lsum = float32(0.0)
        a = float32(0.0)
        for s in range(n_split):
            ms = part_m[b, h, s]
            if ms != NEG_INF:
                w = math.exp(ms - m)
                lsum += part_l[b, h, s] * w
                a += part_acc[b, h, s, d] * w
        out[b, h, d] = a / lsum if lsum > 0 else float32(0.0)


def _splits(n_blocks: int, n_tiles: int, num_splits: int | None) -> int:
    """Context splits: enough blocks for two waves on the device, >= 2 tiles per split."""
    if num_splits is None:
        num_splits = -(-2 * _common.sm_count() // max(1, n_blocks))
        num_splits = min(num_splits, max(1, n_tiles // 2))
    return max(1, min(num_splits, n_tiles))


@torch.inference_mode()
def decode_attention(
    q: torch.Tensor,
    k_pool: torch.Tensor,
    v_pool: torch.Tensor,
    ctx_slots: torch.Tensor,
    ctx_lens: torch.Tensor,
    q_pos: torch.Tensor | None = None,
    k_pos: torch.Tensor | None = None,
    window: int | None = None,
    scale: float | None = None,
    *,
    block_keys: int = 32,
    num_splits: int | None = None,
) -> torch.Tensor:
    """One query per sequence over its keys in a paged pool; returns (B, n_heads, hd).

    NOTE: ctx_slots[b, :ctx_lens[b]] must be valid pool rows (not checked: that would sync).
    """
    for name, t in (("q", q), ("k_pool", k_pool), ("v_pool", v_pool)):
        check_float(name, t)
    bsz, n_heads, hd = q.shape
    n_kv = k_pool.shape[1]
    check_shape("k_pool", k_pool, (None, n_kv, hd))
    check_shape("v_pool", v_pool, tuple(k_pool.shape))
    check_shape("ctx_slots", ctx_slots, (bsz, None))
    check_shape("ctx_lens", ctx_lens, (bsz,))
    if n_heads % n_kv:
        raise KernelInputError(f"n_heads {n_heads} is not a multiple of n_kv {n_kv}")
    lmax = ctx_slots.shape[1]
    group = n_heads // n_kv
    out = torch.empty_like(q)
    if bsz == 0 or lmax == 0:
        return out.zero_()
    if k_pos is None:
        k_pos = torch.arange(lmax, device=q.device).expand(bsz, lmax)
    if q_pos is None:
        q_pos = ctx_lens.long() - 1
    check_shape("k_pos", k_pos, (bsz, lmax))
    check_shape("q_pos", q_pos, (bsz,))
    kt = min(block_keys, next_pow2(lmax))
    nt = min(128, max(32, next_pow2(group * kt)))
    n_tiles = -(-lmax // kt)
    splits = _splits(bsz * n_kv, n_tiles, num_splits)
    per_split = -(-n_tiles // splits)
    splits = -(-n_tiles // per_split)
    f32 = dict(device=q.device, dtype=torch.float32)
    part_m = torch.empty(bsz, n_heads, splits, **f32)
    part_l = torch.empty(bsz, n_heads, splits, **f32)
    part_acc = torch.empty(bsz, n_heads, splits, hd, **f32)
    scale = np.float32(hd**-0.5 if scale is None else scale)  # f32: no f64 in kernels
    window = NO_WINDOW if window is None else int(window)
    i64 = torch.int64
    _common.launch(
        _kernel(hd, group, kt, nt),
        (bsz, n_kv, splits),
        nt,
        q.contiguous(),
        k_pool,
        v_pool,
        ctx_slots.to(i64).contiguous(),
        ctx_lens.to(i64).contiguous(),
        q_pos.to(i64).contiguous(),
        k_pos.to(i64).contiguous(),
        window,
        scale,
        per_split,
        out,
        part_m,
        part_l,
        part_acc,
    )
    if splits > 1:
        _common.launch(
            combine_kernel,
            (bsz, n_heads),
            min(128, max(32, next_pow2(hd))),
            part_m,
            part_l,
            part_acc,
            out,
        )
    return out
