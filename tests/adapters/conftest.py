"""Fixtures: a set of random PEFT adapters for the tiny Mistral, shared by the adapter tests."""

from __future__ import annotations

import pytest
import torch

from tests.adapters.helpers import write_adapter


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models gain nothing from a second thread, and lose a lot to OpenMP waits when the
    other core is busy (many small ops per step); run the adapter tests on one."""
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)


@pytest.fixture(scope="session")
def adapter_dirs(tmp_path_factory):
    """Three adapters on all seven projections: ranks 4, 8, 4 (the third with rsLoRA)."""
    root = tmp_path_factory.mktemp("adapters")
    return [
        write_adapter(root / "a0", seed=1, r=4, alpha=8),
        write_adapter(root / "a1", seed=2, r=8, alpha=16),
        write_adapter(root / "a2", seed=3, r=4, alpha=4, use_rslora=True),
    ]
