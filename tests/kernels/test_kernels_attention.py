"""Decode (paged) and prefill attention kernels against their torch references; references
against torch's scaled_dot_product_attention."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from kernels_cuda import reference as ref
from kernels_cuda.attention import decode_attention, prefill_attention

pytestmark = pytest.mark.cuda

HD = 8


def _paged(device: str, lens: list[int], n_kv: int, dtype: torch.dtype, n_slots: int = 48):
    """A shuffled KV pool and per-sequence slot rows padded with -1 (must never be read)."""
    k_pool = torch.randn(n_slots, n_kv, HD, device=device).to(dtype)
    v_pool = torch.randn(n_slots, n_kv, HD, device=device).to(dtype)
    perm = torch.randperm(n_slots, device=device)
    slots = torch.full((len(lens), max(lens)), -1, dtype=torch.int64, device=device)
    start = 0
    for b, n in enumerate(lens):
        slots[b, :n] = perm[start : start + n]
        start += n
    return k_pool, v_pool, slots, torch.tensor(lens, device=device)


@pytest.mark.parametrize(
    "group,window,splits",
    [(1, None, 1), (3, None, 1), (4, None, 1), (4, 6, 1), (3, 4, 3), (1, None, 2)],
)
def test_decode_matches_reference(device, tol, group, window, splits):
    n_kv = 2 if group < 4 else 1
    k_pool, v_pool, slots, lens = _paged(device, [5, 19, 1], n_kv, torch.float32)
    q = torch.randn(3, n_kv * group, HD, device=device)
    # key tiles of 8: 19 keys are two full tiles and a partial one
    out = decode_attention(
        q, k_pool, v_pool, slots, lens, window=window, block_keys=8, num_splits=splits
    )
    want = ref.decode_attention(q, k_pool, v_pool, slots, lens, window=window)
    torch.testing.assert_close(out, want, **tol(torch.float32))


def test_decode_f16_positions_and_empty_sequence(device, tol):
    dtype = torch.float16
    k_pool, v_pool, slots, lens = _paged(device, [9, 0, 6], 2, dtype)
    q = torch.randn(3, 4, HD, device=device).to(dtype)
    # a rolling buffer: keys sit in the pool out of position order
    k_pos = torch.stack([torch.randperm(9, device=device) + 20 for _ in range(3)])
    k_pos[0, 4] = -1  # padding inside the row: never visible
    q_pos = torch.tensor([28, 5, 25], device=device)
    kwargs = dict(q_pos=q_pos, k_pos=k_pos, window=None)  # no window: only causality hides keys
    out = decode_attention(q, k_pool, v_pool, slots, lens, block_keys=4, **kwargs)
    want = ref.decode_attention(q, k_pool, v_pool, slots, lens, **kwargs)
    torch.testing.assert_close(out, want, **tol(dtype))
    assert out[1].abs().max() == 0  # no keys: zeros, not NaN


def test_decode_single_key(device, tol):
    k_pool, v_pool, slots, lens = _paged(device, [1], 1, torch.float32, n_slots=4)
    q = torch.randn(1, 3, HD, device=device)
    out = decode_attention(q, k_pool, v_pool, slots, lens)
    # one visible key: softmax weight 1, the output is that key's value for every head
    torch.testing.assert_close(out, v_pool[slots[0, 0]].expand(3, HD)[None], **tol(torch.float32))


@pytest.mark.parametrize("group,window", [(1, None), (3, None), (4, 3)])
def test_prefill_matches_reference(device, tol, group, window):
    n_kv = 2 if group < 4 else 1
    q = torch.randn(11, n_kv * group, HD, device=device)  # 11: partial query and key tiles
    k = torch.randn(11, n_kv, HD, device=device)
    v = torch.randn(11, n_kv, HD, device=device)
    out = prefill_attention(q, k, v, window=window, block_q=4, block_k=8)
    torch.testing.assert_close(
        out, ref.prefill_attention(q, k, v, window=window), **tol(torch.float32)
    )


def test_prefill_with_prior_context_f16(device, tol):
    dtype = torch.float16
    q = torch.randn(5, 4, HD, device=device).to(dtype)  # positions 8..12 over keys 0..12
    k = torch.randn(13, 2, HD, device=device).to(dtype)
    v = torch.randn(13, 2, HD, device=device).to(dtype)
    out = prefill_attention(q, k, v, window=6, block_q=4, block_k=4)
    torch.testing.assert_close(out, ref.prefill_attention(q, k, v, window=6), **tol(dtype))


def test_prefill_follows_positions_not_order(device, tol):
    q = torch.randn(6, 2, HD, device=device)
    k = torch.randn(6, 1, HD, device=device)
    v = torch.randn(6, 1, HD, device=device)
    pos = torch.arange(6, device=device) * 3  # gaps between positions
    k_pos = pos.clone()
    k_pos[2] = -1  # a padding key
    perm = torch.randperm(6, device=device)
    shuffled = prefill_attention(
        q, k[perm], v[perm], q_pos=pos, k_pos=k_pos[perm], block_q=4, block_k=4
    )
    ordered = ref.prefill_attention(q, k, v, q_pos=pos, k_pos=k_pos)
    torch.testing.assert_close(shuffled, ordered, **tol(torch.float32))


def test_prefill_single_token(device, tol):
    q = torch.randn(1, 4, HD, device=device)
    k = torch.randn(1, 4, HD, device=device)
    out = prefill_attention(q, k, k)
    torch.testing.assert_close(out, k, **tol(torch.float32))


@pytest.mark.parametrize("window", [None, 4])
def test_prefill_reference_matches_sdpa(window):
    q, k, v = torch.randn(9, 6, HD), torch.randn(9, 2, HD), torch.randn(9, 2, HD)
    pos = torch.arange(9)
    mask = pos[None] <= pos[:, None]
    if window is not None:
        mask &= pos[:, None] - pos[None] < window
    want = F.scaled_dot_product_attention(
        q.transpose(0, 1),
        k.repeat_interleave(3, 1).transpose(0, 1),
        v.repeat_interleave(3, 1).transpose(0, 1),
        attn_mask=mask,
    ).transpose(0, 1)  # (T, heads, hd)
    torch.testing.assert_close(ref.prefill_attention(q, k, v, window=window), want)


def test_decode_reference_is_last_prefill_row():
    k_pool, v_pool, slots, lens = _paged("cpu", [7], 2, torch.float32)
    q = torch.randn(1, 4, HD)
    got = ref.decode_attention(q, k_pool, v_pool, slots, lens, window=3)
    k, v = k_pool[slots[0]], v_pool[slots[0]]
    want = ref.prefill_attention(q, k, v, window=3)  # q at position 6, the last key
    torch.testing.assert_close(got, want)
