"""The dispatch API (`available`, `kernel`), and a compile of every kernel for a real GPU (sm_90) without one."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from kernels_cuda import dispatch, reference
from kernels_cuda.compile_check import NO_NVVM

# conftest.py has set the simulator up when there is no GPU
GPU = os.environ.get("NUMBA_ENABLE_CUDASIM") != "1"


def test_every_op_has_a_reference_and_a_kernel():
    for op in dispatch.KERNEL_MODULES:
        assert callable(getattr(reference, op))
        kern = dispatch.kernel(op)
        assert callable(kern) and kern.__name__ == op
    with pytest.raises(ValueError, match="unknown kernel op"):
        dispatch.kernel("softmax")


def test_env_switch_disables_kernels(monkeypatch):
    from mistralrs_cli.models.kernel_ops import wants_kernels

    monkeypatch.setattr(dispatch, "_device_ok", lambda: True)  # as if on a GPU machine
    monkeypatch.delenv(dispatch.DISABLE_ENV, raising=False)
    assert dispatch.available()
    assert wants_kernels(torch.device("cuda")) and not wants_kernels(torch.device("cpu"))  # CPU models take torch
    monkeypatch.setenv(dispatch.DISABLE_ENV, "1")
    assert not dispatch.available()
    assert not wants_kernels(torch.device("cuda"))


@pytest.mark.skipif(GPU, reason="checks the CPU / simulator side")
def test_the_simulator_is_never_available():
    assert not dispatch.available()


@pytest.mark.cuda
@pytest.mark.skipif(not GPU, reason="needs a CUDA device")
def test_a_kernel_runs_on_cuda_tensors():
    assert dispatch.available()
    x = torch.randn(2, 64, device="cuda")
    out = dispatch.kernel("silu_mul")(x, x)
    torch.testing.assert_close(out, reference.silu_mul(x, x))


def test_kernels_compile_for_sm90():
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_ENABLE_CUDASIM"}
    res = subprocess.run(
        [sys.executable, "-m", "kernels_cuda.compile_check", "--cc", "9.0"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    if res.returncode == NO_NVVM:
        pytest.skip("no CUDA toolkit (NVVM) to compile with")
    assert res.returncode == 0, res.stdout + res.stderr
    assert "0 with f64 arithmetic" in res.stdout
