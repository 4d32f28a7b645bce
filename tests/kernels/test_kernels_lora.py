"""Batched LoRA / X-LoRA delta kernel against its reference; reference against peft."""

from __future__ import annotations

import copy

import pytest
import torch

from kernels_cuda import reference as ref
from kernels_cuda.dispatch import DISABLE_ENV
from kernels_cuda.lora import lora_delta

pytestmark = pytest.mark.cuda


def _case(device: str, n_tok: int, n_ad: int, rank: int = 4, n_in: int = 24, n_out: int = 20):
    x = torch.randn(n_tok, n_in, device=device)
    a = torch.randn(n_ad, rank, n_in, device=device)
    b = torch.randn(n_ad, n_out, rank, device=device)
    s = torch.rand(n_tok, n_ad, device=device)  # per-token X-LoRA scalings
    return torch.randn(n_tok, n_out, device=device), x, a, b, s


@pytest.mark.parametrize("n_tok,n_ad,tiles", [(3, 3, None), (1, 1, 3), (2, 2, 1)])
def test_matches_reference(device, n_tok, n_ad, tiles):
    y, x, a, b, s = _case(device, n_tok, n_ad)
    got = y.clone()
    assert lora_delta(got, x, a, b, s, out_tiles=tiles) is got  # in place
    want = ref.lora_delta(y.clone(), x, a, b, s)
    # |delta| ~ 10 here (24-term then 4-term sums): compare with a scaled absolute tolerance
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-4)
    assert not torch.allclose(got, y)


def test_f16(device):
    y, x, a, b, s = (t.half() for t in _case(device, 2, 3))
    # |y| reaches ~20, where one f16 ulp is 2^-6: the 2e-3 default is too tight in absolute terms
    got = lora_delta(y.clone(), x, a, b, s)
    torch.testing.assert_close(got, ref.lora_delta(y.clone(), x, a, b, s), rtol=2e-3, atol=2e-2)


def test_zero_adapters_is_a_no_op(device):
    y, x, a, b, s = _case(device, 2, 0)
    got = y.clone()
    lora_delta(got, x, a, b, s)
    assert torch.equal(got, y)


def test_reference_matches_peft():
    from peft import LoraConfig, get_peft_model

    base = torch.nn.Sequential(torch.nn.Linear(16, 12, bias=False))
    model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=["0"]))
    layer = model.base_model.model[0]
    torch.nn.init.normal_(layer.lora_B["default"].weight)  # peft starts B at zero
    x = torch.randn(3, 16)
    a = layer.lora_A["default"].weight.detach()[None]  # (1, r, in)
    b = layer.lora_B["default"].weight.detach()[None]  # (1, out, r)
    y = layer.base_layer(x).detach()
    got = ref.lora_delta(y, x, a, b, torch.full((3, 1), 8 / 4))
    torch.testing.assert_close(got, model(x).detach(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("mix", ["tokens", "per-adapter", "none", "scalar"])
@torch.inference_mode()
def test_lora_linear_through_the_kernel_matches_its_torch_path(device, mix):
    from mistralrs_cli.adapters.lora import CudaLoraLinear, LoraLinear
    from mistralrs_cli.models.swap import become

    g = torch.Generator().manual_seed(4)
    base = torch.nn.Linear(16, 12, bias=False).to(device)
    # Two adapters of different rank (zero-padded to 3), as the loader builds them.
    pairs = [(torch.randn(3, 16, generator=g), torch.randn(12, 3, generator=g), 0.5),
             (torch.randn(2, 16, generator=g), torch.randn(12, 2, generator=g), 2.0)]
    layer = LoraLinear(base, pairs, torch.float32, torch.device(device))
    x = torch.randn(2, 3, 16, generator=g).to(device)
    layer.mix = {"tokens": torch.rand(2, 3, 2, generator=g).to(device), "per-adapter": torch.tensor([0.3, 1.7]).to(device),
                 "none": None, "scalar": 0.75}[mix]
    want = layer(x)
    fast = become(copy.deepcopy(layer), CudaLoraLinear)  # what the backend does to every LoraLinear
    got = fast(x)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-4)
    assert not torch.allclose(want, base(x))  # the delta is not negligible


def test_the_cuda_backend_reaches_lora_wrappers(tiny_mistral_dir, tmp_path):
    from mistralrs_cli.adapters.lora import CudaLoraLinear, LoraLinear
    from mistralrs_cli.cli.compose import build_model
    from mistralrs_cli.cli.spec import model_spec
    from mistralrs_cli.models.backend import use_cuda_kernels
    from tests.adapters.helpers import write_adapter

    adapter = write_adapter(tmp_path / "a", seed=1, targets=("q_proj", "v_proj"))
    model = build_model(model_spec("lora-mistral", model_id=str(tiny_mistral_dir), adapter=[str(adapter)],
                                   dtype="f32", device="cpu")).model
    fast = copy.deepcopy(model)
    use_cuda_kernels(fast)  # what select_backend does on a CUDA device
    wrappers = [m for m in fast.modules() if isinstance(m, LoraLinear)]
    assert len(wrappers) == 4 and all(isinstance(w, CudaLoraLinear) for w in wrappers)
    assert not any(isinstance(m, CudaLoraLinear) for m in model.modules())  # the torch model is untouched


@torch.inference_mode()
def test_xlora_through_the_kernels_matches_its_torch_path(device, tiny_mistral_dir, tmp_path, monkeypatch):
    """X-LoRA sets each wrapper's mix around its passes: the swap must keep those very wrappers."""
    from mistralrs_cli.adapters.lora import CudaLoraLinear
    from mistralrs_cli.cli.compose import build_model
    from mistralrs_cli.cli.spec import model_spec
    from mistralrs_cli.models.attention import AttentionBatch
    from mistralrs_cli.models.backend import use_cuda_kernels
    from tests.adapters.test_xlora_oracle import build

    # Adapters on 3 projections, 3 prompt tokens: the simulator runs every GPU thread in Python.
    xdir, ordering, *_ = build(tmp_path, [None, None], "no-bias-subset-targets")  # writes its own adapters
    monkeypatch.setenv(DISABLE_ENV, "1")  # the torch model, also on a GPU
    model = build_model(model_spec("x-lora-mistral", model_id=str(tiny_mistral_dir), xlora_model_id=str(xdir),
                                   order=ordering, dtype="f32", device=device)).model
    fast = copy.deepcopy(model)
    use_cuda_kernels(fast)  # what select_backend does on a CUDA device
    assert len(fast.lora_layers) == 6 and all(isinstance(w, CudaLoraLinear) for w in fast.lora_layers)
    dev = torch.device(device)
    ids, pos = torch.tensor([[1, 17, 99]], device=dev), torch.arange(3, device=dev)[None]

    def prefill(m):
        cfg = m.config
        pool = [(torch.zeros(16, cfg.num_key_value_heads, cfg.head_dim, device=dev),
                 torch.zeros(16, cfg.num_key_value_heads, cfg.head_dim, device=dev)) for _ in range(m.num_kv_layers)]
        batch = AttentionBatch.build(pos, pos, cfg.sliding_window, pos[0] + 1, pos + 1)
        batch.seq_ids, batch.prompt_lens = (7,), (3,)
        return m(ids, pos, batch, pool, torch.tensor([2], device=dev))

    want = prefill(model)
    torch.testing.assert_close(prefill(fast), want, rtol=1e-4, atol=1e-4)
    # Not vacuous: the base alone runs every wrapper at mix None (each adapter at 1), which differs.
    assert not torch.allclose(want, prefill(model.base))
