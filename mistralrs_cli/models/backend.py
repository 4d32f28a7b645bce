"""Backend selection, done once after the weights (and any adapters) are in place.

Loaders only produce weights and configs, and the model's modules are plain torch. This step
decides how the model computes on its device by swapping modules, in place, for a variant of
their class (models/swap.py): fused int4 projections on CPU (models/fused.py), numba.cuda
kernels on a CUDA device (models/cuda_modules.py, and any variant registered with
`register_cuda_variant`, e.g. LoRA's), plain torch otherwise; on CPU each int4 layer also gets the
matmul kernels models/matmul_choice.py picks for its shape and batch size on this machine. Nothing is flagged or re-checked
per forward. Returns a short description for `bench`, `/stats` and logs.
"""

from __future__ import annotations

import torch
from torch import nn

from mistralrs_cli.models import matmul_choice
from mistralrs_cli.models.attention import Attention
from mistralrs_cli.models.cuda_modules import CudaAttention, CudaMLP, CudaRMSNorm
from mistralrs_cli.models.fused import fuse_projections
from mistralrs_cli.models.kernel_ops import wants_kernels
from mistralrs_cli.models.layers import MLP, RMSNorm, RotaryEmbedding
from mistralrs_cli.models.quant_linear import Int4Linear
from mistralrs_cli.models.swap import become

# plain class -> its kernels_cuda variant (stateless ones; CudaAttention is given the rope cache)
_CUDA_VARIANTS: dict[type[nn.Module], type[nn.Module]] = {RMSNorm: CudaRMSNorm, MLP: CudaMLP}


def register_cuda_variant(plain: type[nn.Module], variant: type[nn.Module]) -> None:
    """Have `use_cuda_kernels` turn every `plain` module into `variant` (for modules of higher rooms,
    such as LoRA wrappers, that this room cannot import)."""
    if not issubclass(variant, plain):
        raise TypeError(f"{variant.__name__} is not a variant of {plain.__name__}")
    _CUDA_VARIANTS[plain] = variant


def select_backend(model: nn.Module, device: torch.device) -> str:
    """Prepare `model` (a MistralForCausalLM, possibly wrapped) for `device`; return what was chosen."""
    if wants_kernels(device):
        use_cuda_kernels(model)
        return "kernels_cuda (numba)"
    # Int4 linears exist only on CPU (torch's int4 matmul is a CPU kernel): never with kernels_cuda.
    fused = fuse_projections(model)
    # After fusion: the fused q/k/v and gate/up layers are the ones that compute.
    matmuls = matmul_choice.apply(model) if any(isinstance(m, Int4Linear) for m in model.modules()) else None
    if not fused and matmuls is None:
        return "torch"
    return ", ".join(part for part in ("fused int4 projections" if fused else "", matmuls and f"matmuls: {matmuls}") if part)


def use_cuda_kernels(model: nn.Module) -> None:
    """Swap every module of `model` (anything with the model's `config`: a MistralForCausalLM or a
    wrapper around one) that has a kernels_cuda variant for it, adapter wrappers included."""
    cfg = model.config
    rotary = next(m for m in model.modules() if isinstance(m, RotaryEmbedding))
    # The rope kernel rotates whole heads; partial rotary stays on the torch path.
    rope_tables = rotary.tables if cfg.rotary_dim == cfg.head_dim else None
    for module in list(model.modules()):
        if type(module) is Attention:
            become(module, CudaAttention, rope_tables=rope_tables, window=cfg.sliding_window)
        elif type(module) in _CUDA_VARIANTS:
            become(module, _CUDA_VARIANTS[type(module)])
