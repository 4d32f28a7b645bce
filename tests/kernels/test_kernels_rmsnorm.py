"""RMSNorm + residual kernel against its torch reference, and the reference against HF."""

from __future__ import annotations

import pytest
import torch

from kernels_cuda import reference as ref
from kernels_cuda._common import KernelInputError
from kernels_cuda.rmsnorm import rmsnorm_residual

pytestmark = pytest.mark.cuda


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("n_tok", [1, 3])
def test_matches_reference(device, tol, dtype, n_tok):
    # hidden 40: not a multiple of the 32-thread block
    x = torch.randn(n_tok, 40, device=device).to(dtype)
    res = torch.randn(n_tok, 40, device=device).to(dtype)
    w = torch.randn(40, device=device).to(dtype)
    out, new_res = rmsnorm_residual(x, res, w, 1e-5)
    want_out, want_res = ref.rmsnorm_residual(x, res, w, 1e-5)
    assert out.dtype == dtype and out.shape == x.shape
    torch.testing.assert_close(new_res, want_res, rtol=0, atol=0)  # one rounding, same order
    torch.testing.assert_close(out, want_out, **tol(dtype))


def test_without_residual_and_3d(device, tol):
    x = torch.randn(2, 2, 24, device=device)  # (B, T, hidden) flattens to tokens
    w = torch.rand(24, device=device)
    out, new_res = rmsnorm_residual(x, None, w, 1e-6)
    want, _ = ref.rmsnorm_residual(x, None, w, 1e-6)
    assert new_res is x
    torch.testing.assert_close(out, want, **tol(torch.float32))


def test_reference_matches_hf():
    from transformers.models.mistral.modeling_mistral import MistralRMSNorm

    norm = MistralRMSNorm(16, eps=1e-5)
    with torch.no_grad():
        norm.weight.copy_(torch.randn(16))
    x, res = torch.randn(4, 16), torch.randn(4, 16)
    out, h = ref.rmsnorm_residual(x, res, norm.weight.detach(), 1e-5)
    torch.testing.assert_close(h, x + res)
    torch.testing.assert_close(out, norm(x + res).detach(), rtol=1e-6, atol=1e-6)


def test_refuses_bf16(device):
    x = torch.randn(2, 8, device=device, dtype=torch.bfloat16)
    with pytest.raises(KernelInputError, match="bfloat16"):
        rmsnorm_residual(x, None, torch.ones(8, device=device), 1e-6)
