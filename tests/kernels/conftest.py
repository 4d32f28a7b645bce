"""Kernel tests run on a real GPU when torch sees one, else in numba's CUDA simulator.

NUMBA_ENABLE_CUDASIM must be set before numba.cuda is first imported, so it is set here, at
collection time, ahead of any kernel module.
"""

from __future__ import annotations

import os
import sys

import pytest
import torch

GPU = torch.cuda.is_available() and os.environ.get("NUMBA_ENABLE_CUDASIM") != "1"
if not GPU:
    os.environ["NUMBA_ENABLE_CUDASIM"] = "1"
    if "numba" in sys.modules:  # imported by an earlier test module: re-read the env
        import numba

        numba.config.reload_config()
    if "numba.cuda" in sys.modules and not sys.modules["numba"].config.ENABLE_CUDASIM:
        raise RuntimeError("numba.cuda was imported without the simulator before kernel tests")

DEVICE = "cuda" if GPU else "cpu"

# Tolerances against the f32 torch reference. f32: kernels sum in another order (and on a GPU
# use FMA and their own expf), a few ulps of the result. f16 outputs: the kernel and the
# reference each round an f32 result once, so they may land one f16 ulp (2^-10 relative) apart.
TOL = {
    torch.float32: {"rtol": 1e-5, "atol": 1e-5},
    torch.float16: {"rtol": 2e-3, "atol": 2e-3},
}


@pytest.fixture
def device() -> str:
    """Where kernel inputs live: "cuda" on a GPU, "cpu" for the simulator."""
    return DEVICE


@pytest.fixture
def tol():
    """Tolerance kwargs for torch.testing.assert_close by output dtype."""
    return lambda dtype: TOL[dtype]


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)
