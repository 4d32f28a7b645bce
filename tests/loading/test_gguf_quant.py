"""Dequantization (bit-exact vs gguf.quants) and the int4 re-packing of GGML blocks."""

from __future__ import annotations

import gguf
import numpy as np
import pytest
import torch
from gguf import GGML_QUANT_SIZES

from mistralrs_cli.errors import GGUFError
from mistralrs_cli.loading.quant import SUPPORTED_TYPES, check_supported, dequantize
from mistralrs_cli.loading.quant_pack import INT4_TYPES, int4_codes, int4_linear
from mistralrs_cli.models.fused import FusedProjection
from mistralrs_cli.models.quant_linear import Int4Linear, concat_int4, pack_int4, unpack_int4

Q = gguf.GGMLQuantizationType
QUANTIZABLE = [Q.F32, Q.F16, Q.BF16, Q.Q4_0, Q.Q4_1, Q.Q5_0, Q.Q5_1, Q.Q8_0]
K_QUANTS = [Q.Q2_K, Q.Q3_K, Q.Q4_K, Q.Q5_K, Q.Q6_K]
# Byte offsets of the f16 scale fields in each K-quant block (d, and dmin where present).
_K_SCALE_FIELDS = {Q.Q2_K: (80, 82), Q.Q3_K: (108,), Q.Q4_K: (0, 2), Q.Q5_K: (0, 2), Q.Q6_K: (208,)}


def _weights(rows: int, cols: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    # Rows of very different scales, plus exact zeros and a constant row (edge cases for d = 0).
    w = rng.standard_normal((rows, cols)) * rng.uniform(0.001, 4.0, (rows, 1))
    w[0, :40] = 0.0
    w[1] = 0.5
    return w.astype(np.float32)


def _random_k_blocks(qtype: int, rows: int, cols: int, seed: int = 0) -> np.ndarray:
    """Random block bytes with finite f16 scales (random bits elsewhere)."""
    rng = np.random.default_rng(seed)
    _, size = GGML_QUANT_SIZES[qtype]
    blocks = rng.integers(0, 256, (rows * cols // 256, size), dtype=np.uint8)
    for off in _K_SCALE_FIELDS[qtype]:
        scales = rng.uniform(-0.05, 0.05, blocks.shape[0]).astype(np.float16)
        blocks[:, off : off + 2] = scales.view(np.uint8).reshape(-1, 2)
    return blocks.reshape(rows, -1)


def _same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    return a.shape == b.shape and np.array_equal(a.view(np.uint32), b.view(np.uint32))


@pytest.mark.parametrize("qtype", QUANTIZABLE, ids=lambda t: Q(t).name)
def test_dequantize_matches_gguf_bit_for_bit(qtype):
    raw = gguf.quants.quantize(_weights(48, 512), qtype)
    expected = gguf.quants.dequantize(raw, qtype)
    got = dequantize(torch.from_numpy(raw.view(np.uint8).reshape(48, -1).copy()), qtype, 512).numpy()
    assert _same_bits(got, expected.reshape(48, 512))


@pytest.mark.parametrize("qtype", K_QUANTS, ids=lambda t: Q(t).name)
def test_dequantize_k_quants_match_gguf_on_random_blocks(qtype):
    raw = _random_k_blocks(qtype, 16, 1024)
    expected = gguf.quants.dequantize(raw, qtype)
    assert np.isfinite(expected).all()
    got = dequantize(torch.from_numpy(raw.copy()), qtype, 1024).numpy()
    assert _same_bits(got, expected)


def test_every_supported_type_is_listed_and_others_are_refused():
    names = {Q(t).name for t in SUPPORTED_TYPES}
    assert names == {"F32", "F16", "BF16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K"}
    with pytest.raises(GGUFError, match="IQ2_XXS.*not supported"):
        check_supported(Q.IQ2_XXS, "tensor 'blk.0.attn_q.weight'")
    with pytest.raises(GGUFError, match="TQ1_0"):
        dequantize(torch.zeros(1, 54, dtype=torch.uint8), Q.TQ1_0, 256)


def test_pack_int4_matches_torch_packing_and_unpacks():
    u = torch.randint(0, 16, (192, 256), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    expected = torch.ops.aten._convert_weight_to_int4pack_for_cpu(u.to(torch.int32), 1)
    assert torch.equal(pack_int4(u), expected)
    assert torch.equal(unpack_int4(pack_int4(u)), u)


def _raw(qtype: int, rows: int, cols: int) -> torch.Tensor:
    if qtype in K_QUANTS:
        return torch.from_numpy(_random_k_blocks(qtype, rows, cols))
    return torch.from_numpy(gguf.quants.quantize(_weights(rows, cols), qtype).view(np.uint8).reshape(rows, -1).copy())


@pytest.mark.parametrize("qtype", sorted(INT4_TYPES), ids=lambda t: Q(t).name)
def test_int4_linear_reproduces_the_dequantized_weights(qtype):
    # 200 rows: not a multiple of 64, so the padded last block is exercised too.
    rows, cols = 200, 512
    raw = _raw(qtype, rows, cols)
    exact = dequantize(raw, qtype, cols)
    layer = int4_linear(raw, qtype, cols)
    # Only scale and zero are rounded (to bf16, relative 2^-9): per group, |error| <= 2^-8 of its range.
    err = (layer.weight_f32() - exact).abs().reshape(rows, -1, 32).amax(-1)
    spread = exact.reshape(rows, -1, 32).abs().amax(-1)
    assert (err <= spread * 2**-7 + 1e-7).all()
    x = torch.randn(5, cols, generator=torch.Generator().manual_seed(2))
    y, ref = layer(x), x @ exact.t()
    # bf16 inputs and outputs add about 2^-8 relative; allow 1% of the output scale.
    assert (y - ref).abs().max() <= 0.01 * ref.abs().max()


@pytest.mark.parametrize("qtype", [Q.Q4_0, Q.Q4_1, Q.Q8_0], ids=lambda t: Q(t).name)
def test_direct_repacking_equals_the_code_path(qtype):
    raw = _raw(qtype, 256, 384)
    direct, coded = int4_linear(raw, qtype, 384), int4_linear(raw, qtype, 384, direct=False)
    for (p1, s1), (p2, s2) in zip(direct.terms(), coded.terms(), strict=True):
        assert torch.equal(p1, p2) and torch.equal(s1, s2)
    assert len(int4_codes(raw, qtype, 384)) == direct.n_terms


def test_fused_projection_equals_separate_projections_and_shares_memory():
    parts = [int4_linear(_raw(Q.Q4_1, n, 256), Q.Q4_1, 256) for n in (128, 64, 64)]
    x = torch.randn(3, 256)
    separate = torch.cat([p(x) for p in parts], dim=-1)
    fused = concat_int4(parts)
    assert isinstance(fused, Int4Linear)
    assert torch.equal(fused(x), separate)
    proj = FusedProjection(tuple(parts), fused, (128, 64, 64))
    assert proj.applies_to(*parts) and not proj.applies_to(parts[0], parts[2], parts[1])
    assert concat_int4([parts[0], int4_linear(_raw(Q.Q4_1, 64, 512), Q.Q4_1, 512)]) is None


def test_fused_projection_adds_the_deltas_of_lora_wrappers():
    from mistralrs_cli.adapters.lora import LoraLinear

    parts = [int4_linear(_raw(Q.Q4_1, n, 256), Q.Q4_1, 256) for n in (128, 64, 64)]
    proj = FusedProjection(tuple(parts), concat_int4(parts), (128, 64, 64))
    g = torch.Generator().manual_seed(3)
    pairs = [(torch.randn(4, 256, generator=g), torch.randn(64, 4, generator=g), 0.5)]
    wrapped = LoraLinear(parts[1], pairs, torch.float32, torch.device("cpu"))
    modules = (parts[0], wrapped, parts[2])
    assert proj.applies_to(*modules)
    x = torch.randn(3, 256, generator=g)
    want = torch.cat([m(x) for m in modules], dim=-1)
    assert torch.allclose(proj(x, *modules), want, rtol=0, atol=1e-5)
    wrapped.mix = 0.0  # switched off (X-LoRA's scaling pass): the plain fused output
    assert torch.equal(proj(x, *modules), proj(x, *parts))
    other = LoraLinear(int4_linear(_raw(Q.Q4_1, 64, 256), Q.Q4_1, 256), pairs, torch.float32, torch.device("cpu"))
    assert not proj.applies_to(parts[0], other, parts[2])  # a wrapper around another module
