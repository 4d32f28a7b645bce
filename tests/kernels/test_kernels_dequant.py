"""GGUF dequantization and fused matvec kernels against gguf.quants and the torch reference."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType
from gguf.quants import dequantize, quantize

from kernels_cuda import reference as ref
from kernels_cuda._common import KernelInputError
from kernels_cuda.dequant import dequant, q_matvec

pytestmark = pytest.mark.cuda

SIMPLE = ["Q4_0", "Q4_1", "Q8_0"]
K_QUANTS = ["Q4_K", "Q6_K"]


def _simple(name: str, rows: int, cols: int) -> np.ndarray:
    """Real quantized data: gguf's own quantizer over random weights."""
    w = np.random.default_rng(1).standard_normal((rows, cols)).astype(np.float32)
    return quantize(w, GGMLQuantizationType[name])


def _k_quant(name: str, rows: int, blocks_per_row: int) -> np.ndarray:
    """Random bytes with sane f16 super-block scales (gguf cannot quantize K-quants)."""
    nbytes = ref.GGUF_BLOCKS[name][1]
    rng = np.random.default_rng(2)
    raw = rng.integers(0, 256, (rows * blocks_per_row, nbytes), dtype=np.uint8)
    scales = rng.uniform(1e-3, 2e-2, (raw.shape[0], 2)).astype(np.float16).view(np.uint8)
    if name == "Q4_K":
        raw[:, 0:4] = scales  # d, dmin
    else:
        raw[:, 208:210] = scales[:, :2]  # d sits at the end of a Q6_K block
    return raw.reshape(rows, blocks_per_row * nbytes)


def _data(name: str) -> np.ndarray:
    return _simple(name, 3, 64) if name in SIMPLE else _k_quant(name, 2, 1)


@pytest.mark.parametrize("name", SIMPLE + K_QUANTS)
def test_reference_is_bit_exact_to_gguf(name):
    raw = _data(name) if name in SIMPLE else _k_quant(name, 3, 2)
    want = dequantize(raw, GGMLQuantizationType[name])
    got = ref.dequant(torch.from_numpy(raw), name, torch.float32).numpy()
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("name", SIMPLE + K_QUANTS)
def test_dequant_matches_gguf(device, dtype, name):
    raw = _data(name)
    want = torch.from_numpy(dequantize(raw, GGMLQuantizationType[name])).to(dtype)
    got = dequant(torch.from_numpy(raw).to(device), GGMLQuantizationType[name], dtype)
    assert got.shape == want.shape and got.dtype == dtype
    # Same arithmetic order as gguf; a GPU may fuse d*q + m into one FMA (one rounding less),
    # so allow 1 ulp: of f32, or of f16 where that ulp moved the rounding.
    torch.testing.assert_close(
        got.cpu(), want, rtol=2e-7 if dtype == torch.float32 else 2**-10, atol=0
    )


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("name", SIMPLE)
def test_q_matvec_matches_reference(device, dtype, name):
    raw = torch.from_numpy(_simple(name, 5, 96)).to(device)  # 3 blocks per row
    x = torch.randn(1, 96, device=device).to(dtype)
    y = q_matvec(raw, name, x)
    want = ref.q_matvec(raw, name, x)
    assert y.shape == (1, 5) and y.dtype == dtype
    # 96-term dot products summed in another order: f32 error ~ sqrt(96) ulp of |terms|
    t = {"rtol": 1e-5, "atol": 1e-5} if dtype == torch.float32 else {"rtol": 2e-3, "atol": 4e-3}
    torch.testing.assert_close(y, want, **t)
    w = torch.from_numpy(dequantize(raw.cpu().numpy(), GGMLQuantizationType[name]))
    torch.testing.assert_close(want.float().cpu(), x.float().cpu() @ w.T, **t)


def test_q_matvec_1d_and_errors(device):
    raw = torch.from_numpy(_simple("Q8_0", 2, 32)).to(device)
    x = torch.randn(32, device=device)
    assert q_matvec(raw, "Q8_0", x).shape == (2,)
    with pytest.raises(KernelInputError, match="expected"):
        q_matvec(raw, "Q8_0", torch.randn(64, device=device))
    with pytest.raises(KernelInputError, match="Q4_0, Q4_1 and Q8_0"):
        q_matvec(torch.from_numpy(_k_quant("Q6_K", 1, 1)).to(device), "Q6_K", torch.randn(256))
    with pytest.raises(ValueError, match="unsupported"):
        dequant(raw, "Q5_K")
