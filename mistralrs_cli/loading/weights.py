"""Filling the one model from a state dict: shape checks that name the tensor, then assign."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager

import torch
from torch import nn

from mistralrs_cli.errors import WeightError
from mistralrs_cli.models.config import ModelConfig
from mistralrs_cli.models.mistral import MistralForCausalLM

# Buffers some checkpoints carry that our model recomputes.
_IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)


def build_empty_model(cfg: ModelConfig) -> MistralForCausalLM:
    """Construct the model on the meta device, without weight initialisation: no memory until weights are assigned."""
    with _no_init(), torch.device("meta"):
        return MistralForCausalLM(cfg)


@contextmanager
def _no_init() -> Iterator[None]:
    """Skip random initialisation while building on `meta` (the first meta `normal_` alone
    costs ~1 s of one-time imports; every value is overwritten anyway)."""
    names = ("normal_", "uniform_", "kaiming_uniform_")
    saved = {n: getattr(nn.init, n) for n in names}
    for n in names:
        setattr(nn.init, n, lambda tensor, *args, **kwargs: tensor)
    try:
        yield
    finally:
        for n, fn in saved.items():
            setattr(nn.init, n, fn)


def load_state_dict(
    model: MistralForCausalLM,
    tensors: Mapping[str, torch.Tensor],
    dtype: torch.dtype,
    device: torch.device,
    source: str,
) -> MistralForCausalLM:
    """Assign tensors to the meta-built model after checking names and shapes exactly."""
    expected = {k: v.shape for k, v in model.state_dict().items()}
    tied = model.config.tie_word_embeddings
    if tied:
        expected.pop("lm_head.weight", None)
    state: dict[str, torch.Tensor] = {}
    for name, tensor in tensors.items():
        if name.endswith(_IGNORED_SUFFIXES) or (tied and name == "lm_head.weight"):
            continue
        if name not in expected:
            raise WeightError(f"{source}: unexpected tensor {name!r} {tuple(tensor.shape)} for this model")
        if tuple(tensor.shape) != tuple(expected[name]):
            raise WeightError(
                f"{source}: tensor {name!r} has shape {tuple(tensor.shape)}, "
                f"the model expects {tuple(expected[name])}"
            )
        state[name] = tensor.to(device=device, dtype=dtype)
    missing = sorted(set(expected) - set(state))
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise WeightError(f"{source}: missing tensor {missing[0]!r}{more}")
    model.load_state_dict(state, assign=True, strict=True if not tied else False)
    model.tie_weights()
    return model.eval()
