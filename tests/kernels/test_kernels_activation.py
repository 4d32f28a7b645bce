"""SiLU-and-multiply kernel against its torch reference."""

from __future__ import annotations

import pytest
import torch

from kernels_cuda import reference as ref
from kernels_cuda.activation import silu_mul

pytestmark = pytest.mark.cuda


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("shape", [(1, 5), (3, 37)])  # 111 elements: a partial last block
def test_matches_reference(device, tol, dtype, shape):
    gate = (torch.randn(shape, device=device) * 4).to(dtype)
    up = torch.randn(shape, device=device).to(dtype)
    out = silu_mul(gate, up)
    assert out.shape == gate.shape and out.dtype == dtype
    torch.testing.assert_close(out, ref.silu_mul(gate, up), **tol(dtype))
    torch.testing.assert_close(
        ref.silu_mul(gate, up).float(),
        torch.nn.functional.silu(gate.float()) * up.float(),
        **tol(dtype),
    )
