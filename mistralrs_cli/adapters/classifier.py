"""The X-LoRA classifier: hidden states after the final norm -> per-token adapter scalings.

Depth 1 is one `Linear(hidden, n_out)`; depth d >= 2 is `Linear(hidden, size)`, then d - 2
`Linear(size, size)`, then `Linear(size, n_out)`, with ReLU between (dropout is off at
inference). n_out is n_adapters * n_lora_layers when `layerwise_scalings`, else n_adapters
(broadcast to every layer). It runs in f32 whatever the model's dtype: it is tiny.
Weights load under mistral.rs's names (`inner.{j}`, `last`) or PEFT's
(`internal_xlora_classifier.layers.{k}`, where ReLU/Dropout also take indices).
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from mistralrs_cli.adapters.xlora_config import XLoraSettings
from mistralrs_cli.errors import AdapterError

_INNER = re.compile(r"^(?:.*\.)?(inner|layers)\.(\d+)\.(weight|bias)$")
_LAST = re.compile(r"^(?:.*\.)?last\.(weight|bias)$")


class XLoraClassifier(nn.Module):
    """MLP over hidden states giving scalings (B, Q, n_layers, n_adapters) in f32."""

    def __init__(self, settings: XLoraSettings, linears: list[nn.Linear], n_layers: int, n_adapters: int) -> None:
        super().__init__()
        self.settings = settings
        self.layers = nn.ModuleList(linears)
        self.n_layers, self.n_adapters = n_layers, n_adapters

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        """Scalings (B, Q, n_layers, n_adapters) for hidden (B, Q, hidden_size)."""
        s = self.settings
        x = hidden.float()
        for i, linear in enumerate(self.layers):
            x = linear(x)
            if i < len(self.layers) - 1 and s.enable_relu:
                x = F.relu(x)
        bsz, q = x.shape[:2]
        if not s.layerwise_scalings:
            x = x.unsqueeze(2).expand(bsz, q, self.n_layers, self.n_adapters)  # same for every layer
        scalings = x.reshape(bsz, q, self.n_layers, self.n_adapters)
        if s.enable_softmax:
            scalings = torch.softmax(scalings / s.softmax_temperature, dim=-1)
        return scalings

    def select(self, scalings: torch.Tensor) -> torch.Tensor:
        """Per LoRA layer: keep the top-k adapters of each token, re-softmaxed if configured (PEFT)."""
        s = self.settings
        if s.top_k_lora is not None:
            top = torch.topk(scalings, k=s.top_k_lora, dim=-1).indices
            keep = torch.zeros_like(scalings, dtype=torch.bool).scatter_(-1, top, True)
            scalings = scalings * keep
        if s.enable_softmax_topk:
            kept = scalings != 0
            # NOTE: a token whose kept values are all zero gives NaN here, zeroed again below (as PEFT).
            scalings = torch.softmax(scalings.masked_fill(~kept, float("-inf")), dim=-1).masked_fill(~kept, 0.0)
        return scalings

    def pass_scalings(self, device: torch.device) -> torch.Tensor:
        """The scaling pass's fixed scalings (n_layers, n_adapters), after `select` as PEFT does."""
        dummy = torch.full((1, 1, self.n_layers, self.n_adapters), self.settings.pass_value, device=device)
        return self.select(dummy)[0, 0]


def build_classifier(
    settings: XLoraSettings,
    tensors: Mapping[str, torch.Tensor],
    n_layers: int,
    n_adapters: int,
    source: str,
) -> XLoraClassifier:
    """Check the classifier tensors against the settings and LoRA layer count, then build it."""
    pairs = _ordered_pairs(tensors, source)
    depth = settings.xlora_depth
    if len(pairs) != depth:
        raise AdapterError(f"{source}: the classifier has {len(pairs)} linear layers but xlora_depth={depth}")
    n_out = n_adapters * n_layers if settings.layerwise_scalings else n_adapters
    size = settings.xlora_size if settings.xlora_size is not None else pairs[0][0].shape[0]
    dims = [settings.hidden_size] + [size] * (depth - 1) + [n_out]
    linears = []
    for j, (weight, bias) in enumerate(pairs):
        expected = (dims[j + 1], dims[j])
        if tuple(weight.shape) != expected:
            raise AdapterError(
                f"{source}: classifier layer {j} weight is {tuple(weight.shape)}, expected {expected} "
                f"({_explain(settings, j, depth, n_adapters, n_layers)})"
            )
        if (bias is not None) != settings.use_bias:
            have = "has" if bias is not None else "has no"
            raise AdapterError(f"{source}: classifier layer {j} {have} bias but use_bias={str(settings.use_bias).lower()}")
        if bias is not None and tuple(bias.shape) != (dims[j + 1],):
            raise AdapterError(f"{source}: classifier layer {j} bias is {tuple(bias.shape)}, expected ({dims[j + 1]},)")
        linear = nn.Linear(dims[j], dims[j + 1], bias=bias is not None, device="meta")
        linear.weight = nn.Parameter(weight.float(), requires_grad=False)
        if bias is not None:
            linear.bias = nn.Parameter(bias.float(), requires_grad=False)
        linears.append(linear)
    return XLoraClassifier(settings, linears, n_layers, n_adapters).eval()


def _ordered_pairs(tensors: Mapping[str, torch.Tensor], source: str) -> list[tuple[torch.Tensor, torch.Tensor | None]]:
    """(weight, bias) of each linear in order: inner.0 .. inner.{d-2}, last (or layers.{k} by k)."""
    indexed: dict[int, dict[str, torch.Tensor]] = {}
    last: dict[str, torch.Tensor] = {}
    styles = set()
    for key, tensor in tensors.items():
        if m := _INNER.match(key):
            styles.add(m.group(1))
            indexed.setdefault(int(m.group(2)), {})[m.group(3)] = tensor
        elif m := _LAST.match(key):
            styles.add("last")
            last[m.group(1)] = tensor
        else:
            raise AdapterError(f"{source}: unexpected classifier tensor {key!r}")
    if "layers" in styles and len(styles) > 1:
        raise AdapterError(f"{source}: classifier tensors mix PEFT (layers.N) and mistral.rs (inner.N/last) names")
    groups = [indexed[k] for k in sorted(indexed)] + ([last] if last else [])
    if not groups:
        raise AdapterError(f"{source}: no classifier weights")
    if "inner" in styles and not last:
        raise AdapterError(f"{source}: classifier has inner layers but no last.weight")
    pairs = []
    for group in groups:
        if "weight" not in group:
            raise AdapterError(f"{source}: a classifier layer has a bias but no weight")
        pairs.append((group["weight"], group.get("bias")))
    return pairs


def _explain(s: XLoraSettings, j: int, depth: int, n_adapters: int, n_layers: int) -> str:
    if j < depth - 1:
        return f"hidden_size={s.hidden_size}, xlora_size={s.xlora_size}"
    if s.layerwise_scalings:
        return f"{n_adapters} adapters x {n_layers} LoRA layers, layerwise_scalings=true"
    return f"{n_adapters} adapters, layerwise_scalings=false"
