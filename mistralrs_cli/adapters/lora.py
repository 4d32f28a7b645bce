"""LoraLinear: the wrapper put in place of a targeted linear, holding the LoRA pairs of every adapter.

`y = base(x) + sum_i mix_i * B_i (A_i x) * alpha_i / r_i`. The base may be any module with
`in_features` / `out_features` (dense `nn.Linear` or a quantized linear): it is only called.
The adapters are stacked so the delta is two matmuls whatever their number: A is (n*r, in),
B is (out, n*r) with alpha/r folded in, ranks zero-padded to the largest one. `mix` picks the
adapter weights: None sums them all (plain LoRA), a tensor (..., n) weighs them per token
(X-LoRA scalings), 0.0 switches the delta off.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from functools import cached_property

import torch
import torch.nn.functional as F
from torch import nn

from mistralrs_cli.adapters.lora_files import PROJECTIONS, LoraAdapter, module_sort_key
from mistralrs_cli.errors import AdapterError
from mistralrs_cli.models import kernel_ops
from mistralrs_cli.models.backend import register_cuda_variant

log = logging.getLogger(__name__)

LoraPair = tuple[torch.Tensor, torch.Tensor, float]  # A (r, in), B (out, r), alpha / r


class LoraLinear(nn.Module):
    """A base linear plus stacked LoRA deltas of `n_adapters` adapters, weighed by `mix`."""

    def __init__(
        self,
        base: nn.Module,
        pairs: Sequence[LoraPair | None],
        dtype: torch.dtype,
        device: torch.device,
    ) -> None:
        super().__init__()
        self.base = base
        self.in_features, self.out_features = linear_shape(base)
        self.n_adapters = len(pairs)
        self.rank = max((p[0].shape[0] for p in pairs if p is not None), default=0)
        n, r = self.n_adapters, self.rank
        a = torch.zeros(n, r, self.in_features, dtype=torch.float32)
        b = torch.zeros(self.out_features, n, r, dtype=torch.float32)
        for i, pair in enumerate(pairs):
            if pair is not None:  # an adapter that leaves this module alone keeps zeros
                pa, pb, scale = pair
                a[i, : pa.shape[0]] = pa.float()
                b[:, i, : pb.shape[1]] = pb.float() * scale
        self.register_buffer("lora_a", a.reshape(n * r, self.in_features).to(device, dtype))
        self.register_buffer("lora_b", b.reshape(self.out_features, n * r).to(device, dtype))
        # Set by the X-LoRA model around each forward; None = every adapter at weight 1.
        self.mix: torch.Tensor | float | None = None

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, adapters={self.n_adapters}, rank={self.rank}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base(x)
        if self.switched_off():
            return y
        return self._plus_delta(y, x)

    def _plus_delta(self, y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return y + self.delta(x).to(y.dtype)

    def switched_off(self) -> bool:
        """True when the delta is zero: no adapter touches this module, or its mix is 0.0."""
        return self.rank == 0 or (isinstance(self.mix, float) and self.mix == 0.0)

    def delta(self, x: torch.Tensor) -> torch.Tensor | None:
        """The weighted LoRA term alone (None when switched off), in the adapters' dtype.

        Fused base projections (models/fused.py) call this after computing the base once.
        """
        if self.switched_off():
            return None
        mix = self.mix
        h = F.linear(x.to(self.lora_a.dtype), self.lora_a)  # (..., n*r)
        if isinstance(mix, torch.Tensor):
            # mix (..., n) broadcasts over each adapter's r columns: (..., n, r)
            h = (h.unflatten(-1, (self.n_adapters, self.rank)) * mix.unsqueeze(-1).to(h.dtype)).flatten(-2)
        elif mix is not None:
            h = h * mix
        return F.linear(h, self.lora_b)


class CudaLoraLinear(LoraLinear):
    """LoraLinear adding its delta with the lora_delta kernel (one launch); swapped in by the backend."""

    def _plus_delta(self, y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        if kernel_ops.takes(x, y, self.lora_a):
            return kernel_ops.lora_delta(y, x, *self.kernel_layout, self.mix, self.n_adapters)
        return super()._plus_delta(y, x)

    @cached_property
    def kernel_layout(self) -> tuple[torch.Tensor, torch.Tensor]:
        """A as (n, r, in) and B as (n, out, r), made once (B is a transposed copy)."""
        n, r = self.n_adapters, self.rank
        a = self.lora_a.view(n, r, self.in_features)
        b = self.lora_b.view(self.out_features, n, r).permute(1, 0, 2).contiguous()
        return a, b


# models/backend.py turns every LoraLinear into a CudaLoraLinear when it picks kernels_cuda.
register_cuda_variant(LoraLinear, CudaLoraLinear)


def linear_shape(module: nn.Module) -> tuple[int, int]:
    """(in_features, out_features) of a dense, quantized or already wrapped linear."""
    try:
        return int(module.in_features), int(module.out_features)
    except AttributeError:
        raise AdapterError(f"{type(module).__name__} has no in_features/out_features; cannot adapt it") from None


def base_shapes(model: nn.Module) -> dict[str, tuple[int, int]]:
    """{module path: (in, out)} for every adaptable projection of the one Mistral model."""
    shapes = {}
    for i, layer in enumerate(model.model.layers):
        for parent, name in PROJECTIONS:
            shapes[f"model.layers.{i}.{parent}.{name}"] = linear_shape(getattr(getattr(layer, parent), name))
    return shapes


def attach(
    model: nn.Module,
    adapters: Sequence[LoraAdapter],
    paths: Sequence[str] | None,
    dtype: torch.dtype,
    device: torch.device,
) -> list[LoraLinear]:
    """Wrap each module in `paths` (None: every adapted one, in model order); returns the wrappers.

    The LoRA weights take the model's activation dtype and device.
    """
    if paths is None:
        paths = sorted({p for a in adapters for p in a.weights}, key=module_sort_key)
    wrappers = []
    for path in paths:
        parent_path, _, attr = path.rpartition(".")
        parent = model.get_submodule(parent_path)
        base = getattr(parent, attr)
        if isinstance(base, LoraLinear):
            raise AdapterError(f"{path} is already adapted")
        pairs = [(*a.weights[path], a.scales[path]) if path in a.weights else None for a in adapters]
        wrapper = LoraLinear(base, pairs, dtype, device)
        setattr(parent, attr, wrapper)
        wrappers.append(wrapper)
    return wrappers


@torch.no_grad()
def merge(
    model: nn.Module, adapters: Sequence[LoraAdapter], dtype: torch.dtype, device: torch.device
) -> tuple[int, list[LoraLinear]]:
    """Fold every adapter into dense base weights (W += sum_i scale_i B_i A_i).

    Quantized linears cannot take a dense delta without losing their format: those keep the
    adapters unmerged (same result, a little slower). Returns (merged count, wrappers made).
    """
    paths = sorted({p for a in adapters for p in a.weights}, key=module_sort_key)
    unmerged, merged = [], 0
    for path in paths:
        base = model.get_submodule(path)
        if not isinstance(base, nn.Linear):
            unmerged.append(path)
            continue
        delta = torch.zeros(base.out_features, base.in_features, dtype=torch.float32, device=base.weight.device)
        for a in adapters:
            if path in a.weights:
                pa, pb = a.weights[path]
                delta += (pb.float().to(delta.device) @ pa.float().to(delta.device)) * a.scales[path]
        base.weight.copy_((base.weight.float() + delta).to(base.weight.dtype))
        merged += 1
    if unmerged:
        log.info("%d quantized linears keep their LoRA adapters unmerged", len(unmerged))
    return merged, attach(model, adapters, unmerged, dtype, device) if unmerged else []
