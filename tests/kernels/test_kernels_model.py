"""A tiny Mistral forward through the kernel dispatch (prefill chunk + batched decode) matches the torch path."""

from __future__ import annotations

import copy

import pytest
import torch

from mistralrs_cli.loading.hf_config import config_from_hf
from mistralrs_cli.loading.weights import build_empty_model, load_state_dict
from mistralrs_cli.models.attention import AttentionBatch
from mistralrs_cli.models.backend import use_cuda_kernels
from mistralrs_cli.models.cuda_modules import CudaAttention, CudaMLP, CudaRMSNorm
from tests.oracles.tiny_models import tiny_hf_model

pytestmark = pytest.mark.cuda


def _tiny(device: str):
    # Smallest shapes that still exercise GQA (2 query heads per kv head) and a sliding window.
    hf = tiny_hf_model("mistral", seed=5, hidden_size=32, intermediate_size=32, num_hidden_layers=1,
                       num_attention_heads=2, num_key_value_heads=1, head_dim=16, vocab_size=48, sliding_window=4)
    cfg = config_from_hf(hf.config.to_dict())
    return load_state_dict(build_empty_model(cfg), hf.state_dict(), torch.float32, torch.device(device), "tiny")


def _run(model, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Prefill a 5-token prompt (B = 1), then decode one token for it and a 2-token sequence (B = 2)."""
    cfg = model.config
    dev = torch.device(device)
    pool = [(torch.zeros(16, cfg.num_key_value_heads, cfg.head_dim, device=dev),
             torch.zeros(16, cfg.num_key_value_heads, cfg.head_dim, device=dev))]
    pos = torch.arange(5, device=dev)[None]
    batch = AttentionBatch.build(pos, pos, cfg.sliding_window, pos[0] + 1, pos + 1)
    ids = torch.tensor([[3, 17, 9, 40, 11]], device=dev)
    prefill = model(ids, pos, batch, pool, torch.tensor([4], device=dev))
    # Sequence A: slots 1..6 (position 5 is new); sequence B: slots 8, 9 (position 1 is new).
    q_pos = torch.tensor([[5], [1]], device=dev)
    k_pos = torch.tensor([[0, 1, 2, 3, 4, 5], [0, 1, -1, -1, -1, -1]], device=dev)
    ctx = torch.tensor([[1, 2, 3, 4, 5, 6], [8, 9, 0, 0, 0, 0]], device=dev)
    pool[0][0][8].normal_(generator=torch.Generator(device=dev).manual_seed(1))
    pool[0][1][8].normal_(generator=torch.Generator(device=dev).manual_seed(2))
    batch = AttentionBatch.build(q_pos, k_pos, cfg.sliding_window, torch.tensor([6, 9], device=dev), ctx)
    decode = model(torch.tensor([[21], [30]], device=dev), q_pos, batch, pool, torch.tensor([0, 0], device=dev))
    return prefill, decode


@torch.inference_mode()
def test_model_forward_through_kernels_matches_torch(device):
    model = _tiny(device)
    fast = copy.deepcopy(model)
    use_cuda_kernels(fast)  # what select_backend does on a CUDA device
    layer = fast.model.layers[0]
    assert isinstance(layer.self_attn, CudaAttention) and isinstance(layer.mlp, CudaMLP)
    assert isinstance(layer.input_layernorm, CudaRMSNorm)
    assert fast.state_dict().keys() == model.state_dict().keys()
    expected = _run(model, device)
    got = _run(fast, device)
    for e, g in zip(expected, got, strict=True):
        torch.testing.assert_close(g, e, rtol=1e-4, atol=1e-4)
