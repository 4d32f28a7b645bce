"""Turning a module into a backend variant of its class, in place (the backend is chosen once, after load)."""

from __future__ import annotations

from typing import Any, TypeVar

from torch import nn

M = TypeVar("M", bound=nn.Module)


def become(module: nn.Module, variant: type[M], **state: Any) -> M:
    """Make `module` an instance of `variant`, a subclass of its class that adds no parameters.

    The object itself is kept, so nothing else notices: its parameters, buffers and children
    are untouched (no copies, same state_dict keys) and every reference to it stays valid
    (X-LoRA's list of LoRA wrappers, a fused projection's sources). `state` sets the
    variant's own attributes (tables, fused weights), which are not parameters.
    """
    if not issubclass(variant, type(module)):
        raise TypeError(f"{variant.__name__} is not a variant of {type(module).__name__}")
    module.__class__ = variant
    for name, value in state.items():
        setattr(module, name, value)
    return module  # type: ignore[return-value]
