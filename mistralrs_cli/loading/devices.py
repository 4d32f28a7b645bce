"""Picking the device and compute dtype from `--device` / `--dtype`."""

from __future__ import annotations

import torch

from mistralrs_cli.errors import ConfigError
from mistralrs_cli.models.kernel_ops import wants_kernels

_DTYPES = {"f32": torch.float32, "bf16": torch.bfloat16, "f16": torch.float16}


def pick_device(name: str) -> torch.device:
    """`auto` picks cuda when available; `cpu`, `cuda`, `cuda:N` are taken as given."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name != "cpu" and not name.startswith("cuda"):
        raise ConfigError(f"--device {name!r}: expected auto, cpu, cuda or cuda:N")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"--device {name}: CUDA is not available on this machine")
    return device


def pick_dtype(name: str, device: torch.device, checkpoint_dtype: torch.dtype | None = None) -> torch.dtype:
    """`auto`: f32 on CPU; on GPU f16 when the numba kernels run (they take f16/f32), else the
    checkpoint's half type (or bf16)."""
    if name == "auto":
        if device.type == "cpu":
            return torch.float32
        if wants_kernels(device):
            return torch.float16
        if checkpoint_dtype in (torch.float16, torch.bfloat16):
            return checkpoint_dtype
        return torch.bfloat16
    if name not in _DTYPES:
        raise ConfigError(f"--dtype {name!r}: expected auto, f32, bf16 or f16")
    return _DTYPES[name]
