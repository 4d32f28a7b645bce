"""Temperature + top-k + top-p filtering without a sort: radix select on order-preserving keys.

One block per row. Each f32 logit maps to a 32-bit key whose integer order is the float
order. Top-k finds the k-th largest key with four 8-bit histogram passes (counts); top-p
finds the smallest kept key whose "mass strictly below" exceeds 1 - p with four passes of
probability-mass histograms. Both histograms live in shared memory (atomics), so a row costs
~10 streaming passes over V instead of two sorts.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import torch
from numba import cuda, float32, int32, int64

from . import _common
from ._common import block_sum, check_shape, next_pow2, smax, smin
from .reference import per_row

BINS = 256
NEG_INF = float32(-math.inf)


@cuda.jit(device=True)
def _key(bits):
    """Order-preserving unsigned key (in an int64) of the f32 whose bit pattern is `bits`."""
    u = int64(bits) & 0xFFFFFFFF
    if u >= 0x80000000:
        return 0xFFFFFFFF - u  # negative floats: larger magnitude sorts lower
    return u + 0x80000000


@cuda.jit(device=True)
def _block_max2(fbuf, fv, ibuf, iv, tid, nt):
    """Block-wide max of a float and of an int in one tree; every thread gets both."""
    fbuf[tid] = fv
    ibuf[tid] = iv
    cuda.syncthreads()
    s = nt // 2
    while s > 0:
        if tid < s:
            fbuf[tid] = smax(fbuf[tid], fbuf[tid + s])
            ibuf[tid] = smax(ibuf[tid], ibuf[tid + s])
        cuda.syncthreads()
        s //= 2
    f = fbuf[0]
    i = ibuf[0]
    cuda.syncthreads()
    return f, i


@functools.cache
def _kernel(nt: int) -> Any:
    """Kernel for blocks of `nt` threads (a power of two)."""

    @cuda.jit
    def sample_filter_kernel(scaled, bits, greedy, top_k, top_p, out):
        row = cuda.blockIdx.x
        tid = cuda.threadIdx.x
        vocab = scaled.shape[1]
        fbuf = cuda.shared.array(nt, float32)
        ibuf = cuda.shared.array(nt, int64)
        hist_c = cuda.shared.array(BINS, int32)
        hist_f = cuda.shared.array(BINS, float32)
        sel = cuda.shared.array(2, int64)
        sel_f = cuda.shared.array(1, float32)

        m = NEG_INF
        kmax = int64(-1)
        for j in range(tid, vocab, nt):
            m = smax(m, scaled[row, j])
            kmax = smax(kmax, _key(bits[row, j]))
        m, kmax = _block_max2(fbuf, m, ibuf, kmax, tid, nt)

        if greedy[row]:  # one-hot on the first maximal logit
            first = int64(vocab)
            for j in range(tid, vocab, nt):
                if _key(bits[row, j]) == kmax:
                    first = smin(first, j)
            first = -_block_max2(fbuf, NEG_INF, ibuf, -first, tid, nt)[1]
            for j in range(tid, vocab, nt):
                out[row, j] = float32(1.0) if j == first else float32(0.0)
            return

        thr = int64(0)  # keep keys >= thr
        k = top_k[row]
        if k > 0 and k < vocab:
            # Radix select of the k-th largest key, 8 bits per pass from the top.
            remaining = k
            for shift in range(24, -8, -8):
                for i in range(tid, BINS, nt):
                    hist_c[i] = 0
                cuda.syncthreads()
                for j in range(tid, vocab, nt):
                    key = _key(bits[row, j])
                    if (key >> (shift + 8)) == (thr >> (shift + 8)):
                        cuda.atomic.add(hist_c, (key >> shift) & 255, 1)
                cuda.syncthreads()
                if tid == 0:  # walk bins from the top until k keys are covered
                    d = BINS - 1
                    while d > 0 and hist_c[d] < remaining:
                        remaining -= hist_c[d]
                        d -= 1
                    sel[0] = thr | (int64(d) << shift)
                    sel[1] = remaining
                cuda.syncthreads()
                thr = sel[0]
                remaining = sel[1]

        p = top_p[row]
        if p < 1.0:
            part = float32(0.0)
            for j in range(tid, vocab, nt):
                if _key(bits[row, j]) >= thr:
                    part += math.exp(scaled[row, j] - m)
            budget = (float32(1.0) - p) * block_sum(fbuf, part, tid, nt)
            # Largest key c whose kept mass strictly below c is <= budget: every kept key
            # >= c has cumulative mass (ascending) > 1 - p, which is HF's rule.
            cut = int64(0)
            below = float32(0.0)
            for shift in range(24, -8, -8):
                for i in range(tid, BINS, nt):
                    hist_f[i] = 0.0
                cuda.syncthreads()
                for j in range(tid, vocab, nt):
                    key = _key(bits[row, j])
                    if key >= thr and (key >> (shift + 8)) == (cut >> (shift + 8)):
                        cuda.atomic.add(hist_f, (key >> shift) & 255, math.exp(scaled[row, j] - m))
                cuda.syncthreads()
                if tid == 0:
                    d = 0
                    cum = below + hist_f[0]
                    while d < BINS - 1 and cum <= budget:
                        below = cum
                        d += 1
                        cum += hist_f[d]
                    sel[0] = cut | (int64(d) << shift)
                    sel_f[0] = below
                cuda.syncthreads()
                cut = sel[0]
                below = sel_f[0]
            thr = smax(thr, smin(cut, kmax))  # NOTE: the top token always survives

        part = float32(0.0)
        for j in range(tid, vocab, nt):
            if _key(bits[row, j]) >= thr:
                part += math.exp(scaled[row, j] - m)
        inv = float32(1.0) / block_sum(fbuf, part, tid, nt)
        for j in range(tid, vocab, nt):
            e = float32(0.0)
            if _key(bits[row, j]) >= thr:
                e = math.exp(scaled[row, j] - m) * inv
            out[row, j] = e

    return sample_filter_kernel


@torch.inference_mode()
def sample_filter(
    logits: torch.Tensor,
    temperature: torch.Tensor | float,
    top_k: torch.Tensor | int,
    top_p: torch.Tensor | float,
) -> torch.Tensor:
    """Temperature, then top-k, then top-p (HF warper semantics) -> probabilities (B, V) f32.

    top_k <= 0 and top_p >= 1 switch a filter off; temperature <= 0 means greedy (one-hot
    on the first maximal logit).
    """
    check_shape("logits", logits, (None, None))
    bsz, vocab = logits.shape
    dev = logits.device
    temp = per_row(temperature, bsz, torch.float32, dev)
    greedy = temp <= 0
    # Scale with torch: the same IEEE division as the reference, and the bits come for free.
    scaled = (logits.float() / torch.where(greedy, 1.0, temp)[:, None]).contiguous()  # (B, V)
    out = torch.empty_like(scaled)
    if bsz and vocab:
        nt = min(1024, max(32, next_pow2(vocab // 8)))
        _common.launch(
            _kernel(nt),
            bsz,
            nt,
            scaled,
            scaled.view(torch.int32),
            greedy.to(torch.int32),
            per_row(top_k, bsz, torch.int64, dev),
            per_row(top_p, bsz, torch.float32, dev),
            out,
        )
    return out
