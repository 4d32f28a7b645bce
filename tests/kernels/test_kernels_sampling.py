"""Sampling filter kernel (temperature, top-k, top-p) against its reference; reference against
the transformers logits warpers."""

from __future__ import annotations

import pytest
import torch

from kernels_cuda import reference as ref
from kernels_cuda.sampling import sample_filter

pytestmark = pytest.mark.cuda

# Probabilities are computed from the same f32 scores with another summation order.
TOL = {"rtol": 1e-5, "atol": 1e-7}


def _check(logits, temp, top_k, top_p):
    got = sample_filter(logits, temp, top_k, top_p)
    want = ref.sample_filter(logits, temp, top_k, top_p)
    assert torch.equal(got > 0, want > 0), "kept sets differ"
    torch.testing.assert_close(got, want, **TOL)
    return got


def test_mixed_rows(device):
    logits = torch.randn(5, 50, device=device) * 3  # V = 50: not a multiple of the block
    temp = torch.tensor([1.0, 0.7, 0.0, 1.3, 1.0], device=device)
    top_k = torch.tensor([0, 5, 3, 10, 0], device=device)
    top_p = torch.tensor([0.9, 1.0, 0.5, 0.6, 1.0], device=device)
    got = _check(logits, temp, top_k, top_p)
    kept = (got > 0).sum(1).tolist()
    assert kept[1] == 5 and kept[2] == 1 and kept[4] == 50  # top-k only, greedy, no filter
    assert 1 < kept[0] < 50 and 1 <= kept[3] <= 10
    torch.testing.assert_close(got.sum(1), torch.ones(5, device=device))


def test_ties_and_extremes(device):
    logits = torch.tensor(
        [
            [0.5, 2.0, 1.0, 2.0, 1.0, 1.0, -1.0, 0.0],  # top-3: both 2.0 and all three 1.0 tie
            [3.0, -2.0, 3.0, 0.0, 1.0, 1.0, 2.0, 0.0],  # greedy on a tie: first index
            [1.0, 4.0, 2.0, 0.0, -1.0, 0.5, 0.2, 0.1],  # top-p 0: only the top token
            [1.0, 4.0, 2.0, 0.0, -1.0, 0.5, 0.2, 0.1],  # top-k 1
        ],
        device=device,
    )
    temp = torch.tensor([1.0, 0.0, 0.5, 2.0], device=device)
    top_k = torch.tensor([3, 0, 0, 1], device=device)
    top_p = torch.tensor([1.0, 1.0, 0.0, 1.0], device=device)
    got = _check(logits, temp, top_k, top_p)
    assert (got[0] > 0).sum() == 5
    assert got[1].tolist() == [1.0] + [0.0] * 7
    assert got[2].argmax() == 1 and got[2, 1] == 1 and got[3, 1] == 1


def test_wide_vocab_with_scalars(device):
    logits = torch.randn(2, 300, device=device) * 2
    got = _check(logits, 0.8, 40, 0.7)  # one setting for every row
    assert ((got > 0).sum(1) <= 40).all()


def test_reference_matches_transformers_warpers():
    from transformers.generation.logits_process import (
        TemperatureLogitsWarper,
        TopKLogitsWarper,
        TopPLogitsWarper,
    )

    logits = torch.randn(4, 64) * 2
    settings = [(0.7, 10, 0.9), (1.0, 0, 0.5), (1.5, 3, 1.0), (1.0, 0, 1.0)]
    for row, (t, k, p) in enumerate(settings):
        scores = TemperatureLogitsWarper(t)(None, logits[row : row + 1].clone())
        if k:
            scores = TopKLogitsWarper(k)(None, scores)
        if p < 1:
            scores = TopPLogitsWarper(p)(None, scores)
        want = scores.softmax(-1)
        got = ref.sample_filter(
            logits[row : row + 1], torch.tensor([t]), torch.tensor([k]), torch.tensor([p])
        )
        torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_engine_sampler_through_the_kernel_matches_its_torch_path(device):
    from types import SimpleNamespace

    from mistralrs_cli.engine import SamplingParams
    from mistralrs_cli.engine.sampling import probabilities

    settings = [dict(temperature=0.7, top_k=5), dict(temperature=1.3, top_p=0.6), dict(temperature=1.0),
                dict(temperature=0.9, top_k=10, top_p=0.8)]
    seqs = [SimpleNamespace(params=SamplingParams(**s)) for s in settings]
    logits = torch.randn(len(seqs), 40, device=device) * 3  # continuous values: no ties at the cut-offs
    got = probabilities(logits, seqs, use_kernel=True)
    want = probabilities(logits, seqs, use_kernel=False)
    assert torch.equal(got > 0, want > 0), "kept sets differ"
    torch.testing.assert_close(got, want, **TOL)
    # min-p has no kernel: such a batch takes the torch path whatever is asked.
    seqs.append(SimpleNamespace(params=SamplingParams(temperature=1.0, min_p=0.2)))
    logits = torch.randn(len(seqs), 40, device=device)
    assert torch.equal(probabilities(logits, seqs, True), probabilities(logits, seqs, False))
