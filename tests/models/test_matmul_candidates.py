"""Each candidate matmul (models/matmul_candidates.py) against its reference, on GGML-quantized weights.

The weights come from gguf's own quantizer re-packed by the loader (the exact int4 terms a GGUF
gives). Each candidate is checked against `x @ W.T` in f32 with the weight it claims to hold,
within a bound derived from its format:
  - bf16 activations or output (int4, int8, bf16): 2^-7 * (|x| @ |W|.T), two bf16 roundings;
  - activations quantized (dyn-int8 per tensor, numba per block of 32): half a quantization step
    per element times |W|, summed over K.
"""

from __future__ import annotations

import gguf
import numpy as np
import pytest
import torch

from mistralrs_cli.loading.quant_pack import int4_linear
from mistralrs_cli.models.matmul_candidates import CANDIDATES, prepare
from mistralrs_cli.models.quant_linear import Int4Linear

Q = gguf.GGMLQuantizationType
K = 96
BF16_REL = 2.0**-7


@pytest.fixture(scope="module", params=[(Q.Q4_1, 40), (Q.Q8_0, 128), (Q.Q4_0, 64)], ids=lambda p: f"{p[0].name}-N{p[1]}")
def layer(request) -> Int4Linear:
    """A GGUF tensor (N x K, rows of different scales; N=40 needs padding to the int4 block)."""
    qtype, n = request.param
    rng = np.random.default_rng(int(qtype))
    w = (rng.standard_normal((n, K)) * rng.uniform(0.01, 1.0, (n, 1))).astype(np.float32)
    return int4_linear(torch.from_numpy(gguf.quants.quantize(w, qtype)), qtype, K)


def _x(m: int) -> torch.Tensor:
    x = torch.randn(m, K, generator=torch.Generator().manual_seed(m))
    x[:, :32] *= 8  # one block much larger than the rest: per-block scales matter
    return x


def _check(got: torch.Tensor, ref: torch.Tensor, bound: torch.Tensor) -> None:
    assert got.shape == ref.shape and got.dtype == torch.float32
    assert ((got - ref).abs() <= bound).all(), ((got - ref).abs() / bound).max().item()


@pytest.mark.parametrize("m", [1, 3])
def test_int4_is_the_layer_itself(layer, m):
    x = _x(m)
    got = prepare("int4", layer).matmul(x)
    assert torch.equal(got, layer(x))
    xb, w = x.bfloat16().float(), layer.weight_f32()
    _check(got, xb @ w.T, BF16_REL * (xb.abs() @ w.abs().T))


@pytest.mark.parametrize("m", [1, 3])
def test_int8_weight_only(layer, m):
    cand, x = prepare("int8", layer), _x(m)
    w = cand.weight()
    # Per-channel int8 of the GGUF weight: half a step of rounding, plus the scale's bf16 rounding
    # (relative 2^-8) times a code of at most 127.
    step = layer.weight_f32().abs().amax(1, keepdim=True) / 127
    assert ((w - layer.weight_f32()).abs() <= step * (0.5 + 127 * 2.0**-8) * 1.001).all()
    xb = x.bfloat16().float()
    _check(cand.matmul(x), xb @ w.T, BF16_REL * (xb.abs() @ w.abs().T))


@pytest.mark.parametrize("name", ["dyn-int8-fbgemm", "dyn-int8-onednn"])
@pytest.mark.parametrize("m", [1, 3])
def test_dynamic_int8(layer, m, name):
    if CANDIDATES[name].engine not in torch.backends.quantized.supported_engines:
        pytest.skip(f"torch built without {CANDIDATES[name].engine}")
    cand = prepare(name, layer)
    x = _x(m)
    w = cand.weight()
    # uint8 activations per tensor: step (max - min) / 255 over the range including zero.
    step = (max(x.max().item(), 0.0) - min(x.min().item(), 0.0)) / 255
    _check(cand.matmul(x), x @ w.T, step / 2 * w.abs().sum(1)[None] + 1e-5)


@pytest.mark.parametrize("m", [1, 3])
def test_bf16_dense(layer, m):
    cand, x = prepare("bf16", layer), _x(m)
    w = cand.w.float()
    assert torch.equal(w, layer.weight_f32().bfloat16().float())
    xb = x.bfloat16().float()
    _check(cand.matmul(x), xb @ w.T, BF16_REL * (xb.abs() @ w.abs().T))


@pytest.mark.parametrize("m", [1, 3])
def test_numba_q4q8(layer, m):
    cand, x = prepare("numba-q4q8", layer), _x(m)
    w = sum(t.weight() for t in cand.terms)
    assert torch.allclose(w, layer.weight_f32(), rtol=0, atol=1e-6)  # the same 4-bit terms, re-laid
    # int8 activations per block of 32: step max|x_block| / 127.
    n = w.shape[0]
    step = x.view(m, -1, 32).abs().amax(-1) / 127  # (M, K/32)
    bound = (step / 2) @ w.abs().view(n, -1, 32).sum(-1).T + 1e-5
    _check(cand.matmul(x), x @ w.T, bound)


def test_every_candidate_reports_its_size(layer):
    sizes = {name: prepare(name, layer).nbytes() for name in CANDIDATES}
    n_weights = layer.in_features * layer.out_features
    assert sizes["bf16"] == 2 * n_weights
    assert n_weights < sizes["int8"] < 1.1 * n_weights
    assert sizes["int4"] == sum(b.numel() * b.element_size() for b in layer.buffers())  # shared, no copy
