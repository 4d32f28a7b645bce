"""The vectorized sampler against per-row reference semantics, on hand-made logits."""

from __future__ import annotations

import math
from types import SimpleNamespace

import torch

from mistralrs_cli.engine import SamplingParams
from mistralrs_cli.engine.sampling import apply_penalties, filter_logits, sample


def _seq(params: SamplingParams, tokens=(), prompt_len=0, u=0.5, repeat_last_n=64):
    return SimpleNamespace(
        params=params,
        request=SimpleNamespace(repeat_last_n=repeat_last_n),
        token_ids=list(tokens),
        num_prompt=prompt_len,
        uniform=lambda: u,
    )


def _logits(*probs):
    return torch.log(torch.tensor([list(probs)], dtype=torch.float32))


def test_inverse_cdf_maps_the_uniform_draw_onto_token_mass():
    logits = _logits(0.25, 0.25, 0.5)
    for u, token in ((0.25, 0), (0.26, 1), (0.5, 1), (0.51, 2), (1.0, 2)):
        assert sample(logits, [_seq(SamplingParams(), u=u)]).tokens == [token]


def test_zero_probability_tokens_are_never_drawn():
    logits = torch.tensor([[0.0, float("-inf"), 0.0, float("-inf")]])
    for u in (1e-9, 0.5, 0.50001, 1.0):
        assert sample(logits, [_seq(SamplingParams(), u=u)]).tokens[0] in (0, 2)


def test_top_k_top_p_min_p_keep_the_expected_tokens():
    logits = _logits(0.5, 0.3, 0.15, 0.05)
    rows = logits.expand(6, 4)
    seqs = [
        _seq(SamplingParams(top_k=2)),
        _seq(SamplingParams(top_p=0.6)),  # 0.5 < 0.6, so the second token is needed too
        _seq(SamplingParams(min_p=0.5)),  # keep p >= 0.25
        _seq(SamplingParams(top_p=0.45)),  # the first token alone reaches 0.45
        _seq(SamplingParams(top_k=3)),
        _seq(SamplingParams()),  # no filter: other rows' filters must not leak into it
    ]
    kept = torch.isfinite(filter_logits(rows, seqs)).tolist()
    assert kept == [[True, True, False, False]] * 3 + [[True, False, False, False], [True, True, True, False], [True] * 4]


def test_temperature_sharpens_and_zero_is_greedy():
    logits = _logits(0.4, 0.6)
    x = filter_logits(logits, [_seq(SamplingParams(temperature=0.5))])
    p = x.softmax(-1)[0]
    assert math.isclose(p[1].item(), 0.6**2 / (0.4**2 + 0.6**2), rel_tol=1e-5)
    mixed = sample(logits.expand(2, 2), [_seq(SamplingParams(temperature=0), u=0.01), _seq(SamplingParams(), u=0.01)])
    assert mixed.tokens == [1, 0]


def test_penalties_match_a_per_row_reference():
    torch.manual_seed(0)
    logits = torch.randn(3, 10)
    seqs = [
        _seq(SamplingParams(repetition_penalty=1.5), tokens=[1, 2, 3, 3, 9], prompt_len=2, repeat_last_n=3),
        _seq(SamplingParams(frequency_penalty=0.5, presence_penalty=0.25), tokens=[4, 5, 5, 5], prompt_len=1),
        _seq(SamplingParams(logit_bias={7: 5.0, 0: -100}), tokens=[7]),
    ]
    got = apply_penalties(logits.clone(), seqs)
    want = logits.clone()
    for t in {3, 9}:  # the last 3 tokens: 3, 3, 9
        want[0, t] = want[0, t] / 1.5 if want[0, t] > 0 else want[0, t] * 1.5
    want[1, 5] -= 0.5 * 3 + 0.25  # output tokens are 5, 5, 5 (the prompt's 4 does not count)
    want[2, 7] += 5.0
    want[2, 0] -= 100
    assert torch.allclose(got, want)


def test_logprobs_are_of_the_raw_logits_not_the_filtered_ones():
    logits = _logits(0.7, 0.2, 0.1)
    out = sample(logits, [_seq(SamplingParams(temperature=0.3, top_k=1, logprobs=True, top_logprobs=2))])
    assert out.tokens == [0]
    assert math.isclose(out.logprobs[0], math.log(0.7), rel_tol=1e-5)
    assert out.top_ids == [[0, 1]]
