"""Tiled prefill attention for one sequence: causal + sliding-window mask from position arrays.

Negative key positions mark padding (never visible). One block per (query tile of `bq`, head). Key tiles of `bk` stream through shared memory with
an online softmax; tiles that no query of the block can see (future keys, or keys behind the
window) are skipped before any K/V is read.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import numpy as np
import torch
from numba import cuda, float32, int64

from . import _common
from ._common import KernelInputError, check_float, check_shape, next_pow2, smax, smin

NO_WINDOW = 1 << 62  # "no sliding window": larger than any position difference
_FAR = 1 << 62  # position for padding rows/keys: never visible
NEG_INF = float32(-math.inf)
SMEM_LIMIT = 48 * 1024  # static shared memory per block


@functools.cache
def _kernel(hd: int, bq: int, bk: int, nt: int) -> Any:
    """Kernel for head_dim `hd`, tiles of `bq` queries x `bk` keys, `nt` threads."""
    pad = hd + 1  # NOTE: padded K rows so threads reading different keys hit different banks
    # shared array sizes must be plain constants for numba, not expressions
    q_size, k_size, v_size, s_size = bq * hd, bk * pad, bk * hd, bq * bk

    @cuda.jit
    def prefill_kernel(q, k, v, q_pos, k_pos, window, scale, out):
        h = cuda.blockIdx.y
        tid = cuda.threadIdx.x
        kvh = h // (q.shape[1] // k.shape[1])
        n_q = q.shape[0]
        n_k = k.shape[0]
        q0 = cuda.blockIdx.x * bq
        qs = cuda.shared.array(q_size, float32)
        acc = cuda.shared.array(q_size, float32)  # each element owned by one thread
        ks = cuda.shared.array(k_size, float32)
        vs = cuda.shared.array(v_size, float32)
        sc = cuda.shared.array(s_size, float32)  # scores, then probabilities
        qp_s = cuda.shared.array(bq, int64)
        kp_s = cuda.shared.array(bk, int64)
        m_s = cuda.shared.array(bq, float32)
        l_s = cuda.shared.array(bq, float32)
        corr_s = cuda.shared.array(bq, float32)

        for e in range(tid, bq * hd, nt):
            i = e // hd
            qs[e] = float32(0.0)
            if q0 + i < n_q:
                qs[e] = float32(q[q0 + i, h, e - i * hd]) * float32(scale)
            acc[e] = 0.0
        if tid < bq:
            qp_s[tid] = q_pos[q0 + tid] if q0 + tid < n_q else -_FAR
            m_s[tid] = NEG_INF
            l_s[tid] = 0.0
        cuda.syncthreads()
        q_lo = _FAR
        q_hi = -_FAR
        for i in range(smin(bq, n_q - q0)):
            q_lo = smin(q_lo, qp_s[i])
            q_hi = smax(q_hi, qp_s[i])
        for k0 in range(0, n_k, bk):
            n_valid = smin(bk, n_k - k0)
            if tid < bk:
                kp_s[tid] = k_pos[k0 + tid] if tid < n_valid else _FAR
            cuda.syncthreads()
            k_lo = _FAR
            k_hi = -_FAR
            for j in range(n_valid):
                k_lo = smin(k_lo, kp_s[j])
                k_hi = smax(k_hi, kp_s[j])
            if k_lo <= q_hi and q_lo - k_hi < window:  # some query may see some key
                for e in range(tid, n_valid * hd, nt):
                    j = e // hd
                    d = e - j * hd
                    ks[j * pad + d] = float32(k[k0 + j, kvh, d])
                    vs[e] = float32(v[k0 + j, kvh, d])
                cuda.syncthreads()
                for e in range(tid, bq * bk, nt):
                    i = e // bk
                    j = e - i * bk
                    qp = qp_s[i]
                    kp = kp_s[j]
                    s = NEG_INF
                    if kp >= 0 and kp <= qp and qp - kp < window:
                        s = float32(0.0)
                        for d in range(hd):
                            s += qs[i * hd + d] * ks[j * pad + d]
                    sc[e] = s
                cuda.syncthreads()
                if tid < bq:  # online softmax, one thread per query row (see attention.py)
                    m_old = m_s[tid]
                    m_new = m_old
                    for j in range(bk):
                        m_new = smax(m_new, sc[tid * bk + j])
                    tot = float32(0.0)
                    for j in range(bk):
                        s = sc[tid * bk + j]
                        p = float32(0.0) if s == NEG_INF else math.exp(s - m_new)
                        sc[tid * bk + j] = p
                        tot += p
                    corr = float32(1.0) if m_old == NEG_INF else math.exp(m_old - m_new)
                    l_s[tid] = l_s[tid] * corr + tot
                    m_s[tid] = m_new
                    corr_s[tid] = corr
                cuda.syncthreads()
                for e in range(tid, bq * hd, nt):
                    i = e // hd
                    d = e - i * hd
                    a = acc[e] * corr_s[i]
                    for j in range(n_valid):
                        a += sc[i * bk + j] * vs[j * hd + d]
                    acc[e] = a
            cuda.syncthreads()  # shared buffers are rewritten by the next tile
        for e in range(tid, bq * hd, nt):
            i = e // hd
            if q0 + i < n_q:
                lsum = l_s[i]
                out[q0 + i, h, e - i * hd] = acc[e] / lsum if lsum > 0 else float32(0.0)

    return prefill_kernel


def _smem_bytes(hd: int, bq: int, bk: int) -> int:
    """Static shared memory of one block of the prefill kernel."""
    floats = 2 * bq * hd + bk * (hd + 1) + bk * hd + bq * bk + 3 * bq
    return 4 * floats + 8 * (bq + bk)


@torch.inference_mode()
def prefill_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    q_pos: torch.Tensor | None = None,
    k_pos: torch.Tensor | None = None,
    window: int | None = None,
    scale: float | None = None,
    *,
    block_q: int = 16,
    block_k: int = 32,
) -> torch.Tensor:
    """Causal (+ sliding window) attention of q (T, n_heads, hd) over k/v (Tk, n_kv, hd)."""
    for name, t in (("q", q), ("k", k), ("v", v)):
        check_float(name, t)
    n_q, n_heads, hd = q.shape
    n_k, n_kv, _ = k.shape
    check_shape("k", k, (None, None, hd))
    check_shape("v", v, tuple(k.shape))
    if n_kv == 0 or n_heads % n_kv:
        raise KernelInputError(f"n_heads {n_heads} is not a multiple of n_kv {n_kv}")
    if k_pos is None:
        k_pos = torch.arange(n_k, device=q.device)
    if q_pos is None:
        q_pos = torch.arange(n_k - n_q, n_k, device=q.device)  # queries are the last T keys
    check_shape("q_pos", q_pos, (n_q,))
    check_shape("k_pos", k_pos, (n_k,))
    out = torch.empty_like(q)
    if n_q == 0:
        return out
    if n_k == 0:
        return out.zero_()
    bq = min(block_q, next_pow2(n_q))
    bk = min(block_k, next_pow2(n_k))
    while _smem_bytes(hd, bq, bk) > SMEM_LIMIT and bk > 8:
        bk //= 2
    if _smem_bytes(hd, bq, bk) > SMEM_LIMIT:
        raise KernelInputError(f"head_dim {hd} too large for the prefill tiles")
    nt = min(128, max(32, next_pow2(bq * bk)))
    _common.launch(
        _kernel(hd, bq, bk, nt),
        (-(-n_q // bq), n_heads),
        nt,
        q.contiguous(),
        k.contiguous(),
        v.contiguous(),
        q_pos.to(torch.int64).contiguous(),
        k_pos.to(torch.int64).contiguous(),
        NO_WINDOW if window is None else int(window),
        np.float32(hd**-0.5 if scale is None else scale),
        out,
    )
    return out
