"""Rotary embedding kernel (both pair layouts) against its reference; reference against HF."""

from __future__ import annotations

import pytest
import torch

from kernels_cuda import reference as ref
from kernels_cuda.rope import rope

pytestmark = pytest.mark.cuda

HD = 8


def _tables(device: str, max_pos: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    inv_freq = 1.0 / (10000 ** (torch.arange(0, HD, 2, dtype=torch.float32) / HD))
    return ref.rope_tables(inv_freq.to(device), max_pos)


@pytest.mark.parametrize("interleaved", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("n_heads,n_kv,n_tok", [(6, 2, 3), (4, 4, 1)])
def test_matches_reference(device, tol, interleaved, dtype, n_heads, n_kv, n_tok):
    cos, sin = _tables(device)
    q = torch.randn(n_tok, n_heads, HD, device=device).to(dtype)
    k = torch.randn(n_tok, n_kv, HD, device=device).to(dtype)
    pos = torch.tensor([7, 0, 31][:n_tok], device=device)
    q1, k1 = q.clone(), k.clone()
    out_q, out_k = rope(q1, k1, pos, cos, sin, interleaved)
    assert out_q is q1 and out_k is k1  # in place
    q2, k2 = ref.rope(q.clone(), k.clone(), pos, cos, sin, interleaved)
    torch.testing.assert_close(q1, q2, **tol(dtype))
    torch.testing.assert_close(k1, k2, **tol(dtype))
    assert not torch.equal(q1, q)  # it did rotate


def test_strided_views_are_written_back(device, tol):
    cos, sin = _tables(device)
    qk = torch.randn(2, 3 * HD, device=device)  # a fused projection: q and k are views
    q, k = qk[:, : 2 * HD].view(2, 2, HD), qk[:, 2 * HD :].view(2, 1, HD)
    want_q, want_k = ref.rope(q.clone(), k.clone(), torch.tensor([1, 2], device=device), cos, sin)
    rope(q, k, torch.tensor([1, 2], device=device), cos, sin)
    torch.testing.assert_close(q, want_q, **tol(torch.float32))
    torch.testing.assert_close(k, want_k, **tol(torch.float32))


def test_reference_matches_hf():
    from transformers.models.mistral.modeling_mistral import apply_rotary_pos_emb

    cos, sin = _tables("cpu")
    pos = torch.tensor([3, 9, 0])
    q, k = torch.randn(3, 4, HD), torch.randn(3, 2, HD)
    c = torch.cat([cos[pos], cos[pos]], dim=-1)[None]  # HF: (1, T, hd), heads on dim 1
    s = torch.cat([sin[pos], sin[pos]], dim=-1)[None]
    want_q, want_k = apply_rotary_pos_emb(q.transpose(0, 1)[None], k.transpose(0, 1)[None], c, s)
    got_q, got_k = ref.rope(q.clone(), k.clone(), pos, cos, sin)
    torch.testing.assert_close(got_q, want_q[0].transpose(0, 1), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(got_k, want_k[0].transpose(0, 1), rtol=1e-6, atol=1e-6)


def test_interleaved_is_rotate_half_on_permuted_dims():
    # llama.cpp's layout: GGUF q/k rows are permuted so pairs (i, i + hd/2) sit at (2i, 2i+1).
    cos, sin = _tables("cpu")
    pos = torch.tensor([5, 11])
    q, k = torch.randn(2, 2, HD), torch.randn(2, 1, HD)
    perm = torch.stack([torch.arange(HD // 2), torch.arange(HD // 2) + HD // 2], 1).reshape(-1)
    want_q, want_k = ref.rope(q.clone(), k.clone(), pos, cos, sin, interleaved=False)
    got_q, got_k = ref.rope(q[..., perm].clone(), k[..., perm].clone(), pos, cos, sin, True)
    torch.testing.assert_close(got_q, want_q[..., perm])
    torch.testing.assert_close(got_k, want_k[..., perm])
