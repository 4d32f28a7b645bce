"""Backend selection, done once after the weights (and any adapters) are in place.

Loaders only produce weights and configs; this step decides how the model computes on its
device: fused int4 projections on CPU, numba.cuda kernels on a CUDA device, plain torch
otherwise. Returns a short description for `bench`, `/stats` and logs.
"""

from __future__ import annotations

import torch
from torch import nn

from mistralrs_cli.models.fused import fuse_projections
from mistralrs_cli.models.kernel_ops import set_kernels, wants_kernels


def select_backend(model: nn.Module, device: torch.device) -> str:
    """Prepare `model` (a MistralForCausalLM, possibly wrapped) for `device`; return what was chosen."""
    base = getattr(model, "base", model)  # an X-LoRA wrapper computes through its base model
    chosen = []
    if fuse_projections(base):
        chosen.append("fused int4 projections")
    if wants_kernels(device):
        set_kernels(model, True)  # the whole tree: adapter wrappers have kernel paths too
        chosen.append("kernels_cuda (numba)")
    return ", ".join(chosen) or "torch"
