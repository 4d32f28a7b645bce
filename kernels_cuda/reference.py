"""Torch twins of the numba.cuda kernels: each defines what its kernel must compute.

The kernel tests and `benchmarks/bench_kernels.py` compare every launcher against its twin.
Every function takes and returns torch tensors with the same signature as its kernel
launcher; math runs in f32.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

__all__ = [
    "decode_attention",
    "lora_delta",
    "per_row",
    "prefill_attention",
    "rmsnorm_residual",
    "rope",
    "rope_tables",
    "sample_filter",
    "silu_mul",
]


def rmsnorm_residual(
    x: torch.Tensor, residual: torch.Tensor | None, weight: torch.Tensor, eps: float = 1e-6
) -> tuple[torch.Tensor, torch.Tensor]:
    """h = x + residual (rounded to x.dtype); return (rmsnorm(h) * weight, h)."""
    h = x if residual is None else (x.float() + residual.float()).to(x.dtype)
    hf = h.float()
    out = hf * torch.rsqrt(hf.pow(2).mean(-1, keepdim=True) + eps) * weight.float()
    return out.to(x.dtype), h


def rope_tables(inv_freq: torch.Tensor, max_pos: int) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin tables (max_pos, head_dim // 2) in f32 from the rotary inverse frequencies."""
    pos = torch.arange(max_pos, dtype=torch.float32, device=inv_freq.device)
    freqs = torch.outer(pos, inv_freq.float())  # (max_pos, head_dim // 2)
    return freqs.cos(), freqs.sin()


def rope(
    q: torch.Tensor,
    k: torch.Tensor,
    positions: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    interleaved: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotate q (T, n_heads, hd) and k (T, n_kv, hd) in place; pairs are (i, i + hd/2) or (2i, 2i+1)."""
    c = cos[positions].float()[:, None, :]  # (T, 1, hd // 2)
    s = sin[positions].float()[:, None, :]
    half = q.shape[-1] // 2
    for t in (q, k):
        x1, x2 = (t[..., 0::2], t[..., 1::2]) if interleaved else (t[..., :half], t[..., half:])
        a, b = x1.float(), x2.float()
        r1, r2 = a * c - b * s, b * c + a * s  # both before writing: a and b may alias t
        x1.copy_(r1)
        x2.copy_(r2)
    return q, k


def silu_mul(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """silu(gate) * up, computed in f32."""
    return (F.silu(gate.float()) * up.float()).to(gate.dtype)


def _softmax_rows(scores: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
    """Softmax over the last dim with masked entries removed; rows with none allowed give 0."""
    p = torch.softmax(scores.masked_fill(~allowed, float("-inf")), dim=-1)
    return torch.nan_to_num(p, nan=0.0)


def _window_mask(q_pos: torch.Tensor, k_pos: torch.Tensor, window: int | None) -> torch.Tensor:
    """Causal + sliding-window rule: key visible iff 0 <= k <= q and q - k < window.

    Negative key positions mark padding (the model's convention), never visible.
    """
    ok = (k_pos >= 0) & (k_pos <= q_pos)
    if window is not None:
        ok &= (q_pos - k_pos) < window
    return ok


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
) -> torch.Tensor:
    """One query per sequence over its keys in a paged pool; returns (B, n_heads, hd)."""
    b, n_heads, hd = q.shape
    lmax = ctx_slots.shape[1]
    group = n_heads // k_pool.shape[1]
    scale = hd**-0.5 if scale is None else scale
    idx = torch.arange(lmax, device=q.device)
    if k_pos is None:
        k_pos = idx.expand(b, lmax)
    if q_pos is None:
        q_pos = ctx_lens.long() - 1
    slots = ctx_slots.clamp(0, k_pool.shape[0] - 1)  # padding may hold any value
    k = k_pool[slots].float().repeat_interleave(group, dim=2)  # (B, Lmax, n_heads, hd)
    v = v_pool[slots].float().repeat_interleave(group, dim=2)
    scores = torch.einsum("bhd,blhd->bhl", q.float(), k) * scale  # (B, n_heads, Lmax)
    allowed = (idx[None] < ctx_lens[:, None]) & _window_mask(q_pos[:, None], k_pos, window)
    p = _softmax_rows(scores, allowed[:, None, :])
    return torch.einsum("bhl,blhd->bhd", p, v).to(q.dtype)


def prefill_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    q_pos: torch.Tensor | None = None,
    k_pos: torch.Tensor | None = None,
    window: int | None = None,
    scale: float | None = None,
) -> torch.Tensor:
    """Causal (+ sliding window) attention of q (T, n_heads, hd) over k/v (Tk, n_kv, hd)."""
    t, n_heads, hd = q.shape
    tk = k.shape[0]
    group = n_heads // k.shape[1]
    scale = hd**-0.5 if scale is None else scale
    if k_pos is None:
        k_pos = torch.arange(tk, device=q.device)
    if q_pos is None:
        q_pos = torch.arange(tk - t, tk, device=q.device)  # queries are the last T keys
    kf = k.float().repeat_interleave(group, dim=1)  # (Tk, n_heads, hd)
    vf = v.float().repeat_interleave(group, dim=1)
    scores = torch.einsum("thd,shd->hts", q.float(), kf) * scale  # (n_heads, T, Tk)
    p = _softmax_rows(scores, _window_mask(q_pos[:, None], k_pos[None, :], window)[None])
    return torch.einsum("hts,shd->thd", p, vf).to(q.dtype)


def lora_delta(
    y: torch.Tensor, x: torch.Tensor, a: torch.Tensor, b: torch.Tensor, scalings: torch.Tensor
) -> torch.Tensor:
    """y (T, out) += sum_i scalings[t, i] * B_i (A_i x_t), in place; returns y."""
    if a.shape[0] == 0:
        return y
    h = torch.einsum("ti,ari->tar", x.float(), a.float())  # (T, n_ad, r)
    delta = torch.einsum("tar,aor,ta->to", h, b.float(), scalings.float())  # (T, out)
    y.copy_((y.float() + delta).to(y.dtype))
    return y


def per_row(v: torch.Tensor | float, n: int, dtype: torch.dtype, device: Any) -> torch.Tensor:
    """A contiguous (n,) tensor from a per-row tensor or one scalar for all rows."""
    t = torch.as_tensor(v, dtype=dtype, device=device)
    return t.expand(n).contiguous() if t.dim() == 0 else t.to(dtype).contiguous()


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
    bsz, vocab = logits.shape
    temp = per_row(temperature, bsz, torch.float32, logits.device).reshape(bsz, 1)
    top_k = per_row(top_k, bsz, torch.int64, logits.device)
    top_p = per_row(top_p, bsz, torch.float32, logits.device)
    scores = logits.float() / torch.where(temp > 0, temp, torch.ones_like(temp))
    # top-k keeps every token whose score is >= the k-th largest (ties included), as HF does
    k = torch.where(top_k > 0, top_k.clamp(max=vocab), torch.full_like(top_k, vocab)).long()
    kth = scores.sort(dim=-1, descending=True).values.gather(1, (k - 1).reshape(bsz, 1))
    scores = scores.masked_fill(scores < kth, float("-inf"))
    # top-p: sort ascending, drop the prefix whose cumulative probability is <= 1 - p
    sorted_scores, order = scores.sort(dim=-1)
    cum = sorted_scores.softmax(dim=-1).cumsum(dim=-1)
    drop = cum <= (1 - top_p).reshape(bsz, 1)
    drop[:, -1] = False  # always keep at least one token
    scores = scores.masked_fill(drop.scatter(1, order, drop), float("-inf"))
    probs = scores.softmax(dim=-1)
    greedy = F.one_hot(logits.argmax(dim=-1), vocab).float()  # (B, V)
    return torch.where(temp > 0, probs, greedy)
