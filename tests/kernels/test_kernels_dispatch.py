"""The dispatch table, and a compile of every kernel for a real GPU (sm_90) without one."""

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
        assert dispatch.get(op).__doc__ == getattr(reference, op).__doc__
        assert callable(dispatch.kernel(op))
    with pytest.raises(ValueError, match="unknown kernel op"):
        dispatch.get("softmax")


def test_env_switch_disables_kernels(monkeypatch):
    monkeypatch.setattr(dispatch, "_device_ok", lambda: True)  # as if on a GPU machine
    monkeypatch.delenv(dispatch.DISABLE_ENV, raising=False)
    assert dispatch.available()
    assert not dispatch.uses_kernel(torch.ones(2))  # CPU tensors still take torch
    monkeypatch.setenv(dispatch.DISABLE_ENV, "1")
    assert not dispatch.available()


@pytest.mark.skipif(GPU, reason="checks the CPU / simulator side")
def test_cpu_tensors_take_the_reference_path():
    assert not dispatch.available()  # the simulator is never "available"
    x, res, w = torch.randn(2, 8), torch.randn(2, 8), torch.rand(8)
    out, h = dispatch.get("rmsnorm_residual")(x, res, w, 1e-6)
    want, want_h = reference.rmsnorm_residual(x, res, w, 1e-6)
    assert torch.equal(out, want) and torch.equal(h, want_h)
    assert not dispatch.uses_kernel(x)


@pytest.mark.cuda
@pytest.mark.skipif(not GPU, reason="needs a CUDA device")
def test_cuda_tensors_take_the_kernel_path():
    assert dispatch.available()
    x = torch.randn(2, 64, device="cuda")
    assert dispatch.uses_kernel(x)
    assert not dispatch.uses_kernel(x.bfloat16())  # bf16 stays on torch
    out = dispatch.get("silu_mul")(x, x)
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
