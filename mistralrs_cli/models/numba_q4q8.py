"""A numba CPU kernel for 4-bit weight blocks times int8-quantized activations, as llama.cpp does.

Weights: per row, blocks of 32 codes u in 0..15 packed two per byte in GGML's order (byte j of a
block holds u[j] in its low nibble, u[j + 16] in its high one), with w = d * u + m per block.
Activations: each block of 32 is quantized to int8 with its own scale xd = max|x| / 127, so
    y[i, n] = sum_b d[n, b] xd[i, b] sum_j u xq  +  m[n, b] xd[i, b] sum_j xq.
The inner dot runs in f32 on small integers: every product and the 32-term sum are exact in f32
(|u xq| <= 15 * 127), so the result is the integer dot product, and LLVM vectorizes f32 FMAs
where it widens int8 maths to int64 (measured: the integer form was ~2x slower).
Eager only: torch.compile cannot trace a numba call.
"""

from __future__ import annotations

from dataclasses import dataclass

import numba
import numpy as np
import torch
from numba import njit, prange

BLOCK = 32


@dataclass(frozen=True)
class Q4Term:
    """One 4-bit term: q (N, K/2) uint8, d and m (N, K/32) f32, w = d * u + m."""

    q: np.ndarray
    d: np.ndarray
    m: np.ndarray

    def nbytes(self) -> int:
        return self.q.nbytes + self.d.nbytes + self.m.nbytes

    def weight(self) -> torch.Tensor:
        """The dequantized weight (N, K) f32 (the reference this term encodes)."""
        q = torch.from_numpy(self.q).view(self.q.shape[0], -1, BLOCK // 2)
        u = torch.cat((q & 0x0F, q >> 4), dim=2).float()  # (N, K/32, 32)
        w = u * torch.from_numpy(self.d)[..., None] + torch.from_numpy(self.m)[..., None]
        return w.reshape(self.q.shape[0], -1)


def pack_blocks(u: torch.Tensor) -> np.ndarray:
    """(N, K) codes 0..15 -> (N, K/2) bytes in GGML's nibble order."""
    n, k = u.shape
    b = u.to(torch.uint8).view(n, k // BLOCK, 2, BLOCK // 2)
    return (b[:, :, 0] | (b[:, :, 1] << 4)).reshape(n, k // 2).contiguous().numpy()


def from_int4_term(u: torch.Tensor, scale_zero: torch.Tensor, n: int) -> Q4Term:
    """A term of torch's int4 layout (u (N', K), table (K/32, N', 2): w = (u - 8) scale + zero) -> Q4Term."""
    sz = scale_zero.float()[:, :n].transpose(0, 1)  # (N, K/32, 2)
    d, zero = sz[..., 0].contiguous(), sz[..., 1].contiguous()
    return Q4Term(pack_blocks(u[:n]), d.numpy(), (zero - 8 * d).numpy())


@njit(parallel=True, fastmath=True, cache=True)
def _quantize(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:  # pragma: no cover - numba
    m, k = x.shape
    nb = k // 32
    xq = np.empty((m, k), np.float32)  # int8 values, held as f32 for the f32 dot
    xd = np.empty((m, nb), np.float32)
    xs = np.empty((m, nb), np.float32)
    for t in prange(m * nb):
        i, b = t // nb, t % nb
        amax = np.float32(0.0)
        for j in range(32):
            amax = max(amax, abs(x[i, b * 32 + j]))
        d = amax / np.float32(127.0)
        inv = np.float32(1.0) / d if d > 0 else np.float32(0.0)
        s = np.float32(0.0)
        for j in range(32):
            v = np.float32(np.round(x[i, b * 32 + j] * inv))
            xq[i, b * 32 + j] = v
            s += v
        xd[i, b] = d
        xs[i, b] = s * d
    return xq, xd, xs


@njit(parallel=True, fastmath=True, cache=True)
def _matmul(q, d, mm, xq, xd, xs, out):  # pragma: no cover - numba
    n_rows, half = q.shape
    m = xq.shape[0]
    nb = half // 16
    for n in prange(n_rows):
        for i in range(m):
            acc = np.float32(0.0)
            for b in range(nb):
                dot = np.float32(0.0)
                for j in range(16):
                    byte = q[n, b * 16 + j]
                    dot += np.float32(byte & 15) * xq[i, b * 32 + j]
                    dot += np.float32(byte >> 4) * xq[i, b * 32 + 16 + j]
                acc += d[n, b] * xd[i, b] * dot + mm[n, b] * xs[i, b]
            out[i, n] = acc


Activations = tuple[np.ndarray, np.ndarray, np.ndarray]


def quantize_activations(x: torch.Tensor) -> Activations:
    """(M, K) f32 -> int8 values (as f32), per-block scales and scaled block sums."""
    return _quantize(np.ascontiguousarray(x.detach().numpy()))


def matmul(xq: Activations, term: Q4Term) -> torch.Tensor:
    """(M, N) f32 = quantized activations times one 4-bit term."""
    q, xd, xs = xq
    out = np.empty((q.shape[0], term.q.shape[0]), np.float32)
    numba.set_num_threads(min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS))
    _matmul(term.q, term.d, term.m, q, xd, xs, out)
    return torch.from_numpy(out)
