"""KV cache: sliding-window release, n choices sharing a prefill, prefix caching, no-cache mode."""

from __future__ import annotations

import torch

from mistralrs_cli.engine import EngineConfig, SamplingParams
from mistralrs_cli.engine.core import EngineCore
from tests.engine.helpers import prompts, run_alone, run_core

GREEDY = SamplingParams(temperature=0, max_tokens=40, ignore_eos=True, logprobs=True, top_logprobs=3)


def _reference(loaded, prompt: list[int], output: list[int]) -> torch.Tensor:
    """log_softmax of the model's logits over the whole sequence, without any cache."""
    ids = torch.tensor([prompt + output])
    with torch.inference_mode():
        logits = loaded.model(ids, torch.arange(ids.shape[1])[None])[0]
    return torch.log_softmax(logits, -1)[len(prompt) - 1 : -1]  # row i predicts output[i]


def test_logprobs_match_log_softmax_of_the_model_logits(tiny_mistral):
    prompt = prompts(1)[0] * 4  # longer than the window of 8
    out = run_alone(tiny_mistral, prompt, GREEDY).choices[0]
    ref = _reference(tiny_mistral, prompt, out.token_ids)
    assert out.token_ids == ref.argmax(-1).tolist()  # greedy, windowed attention included
    for row, lp in enumerate(out.logprobs):
        assert abs(lp.logprob - ref[row, lp.token_id].item()) < 1e-4
        top = ref[row].topk(3)
        assert [t for t, _, _ in lp.top] == top.indices.tolist()
        assert max(abs(a - b) for (_, _, a), b in zip(lp.top, top.values.tolist(), strict=True)) < 1e-4


def test_sliding_window_releases_blocks_outside_the_window(tiny_mistral):
    # window 8, blocks of 4: a decoding sequence never needs more than 3 blocks.
    core = EngineCore(tiny_mistral, EngineConfig(max_seqs=1, block_size=4, kv_blocks=64))
    request = core.new_request("r", prompts(1)[0], None, GREEDY, None, core.abort)
    core.add(request)
    held = []
    while core.has_work():
        core.step()
        held.append(core.blocks.num_used)
    assert max(held[3:]) <= 3 and len(held) > 30
    assert core.blocks.num_used == 0


def test_n_choices_share_the_prompt_prefill(tiny_llama):
    prompt = prompts(8)[7]  # 17 tokens: the last block is partial, so choices copy it on write
    params = SamplingParams(temperature=1.0, seed=7, n=3, max_tokens=10, ignore_eos=True)
    core = EngineCore(tiny_llama, EngineConfig(block_size=4, kv_blocks=64))
    out = run_core(tiny_llama, None, [(0, prompt, params)], core=core)[0]
    assert [c.index for c in out.choices] == [0, 1, 2]
    assert core.stats().prompt_tokens_computed == len(prompt)  # one prefill for three choices
    assert out.usage.completion_tokens == 30
    for i, choice in enumerate(out.choices):
        alone = run_alone(tiny_llama, prompt, SamplingParams(temperature=1.0, seed=7 + i, max_tokens=10, ignore_eos=True))
        assert choice.token_ids == alone.choices[0].token_ids
    assert len({tuple(c.token_ids) for c in out.choices}) == 3


def test_prefix_caching_reuses_blocks_and_keeps_outputs(tiny_llama):
    system = prompts(20, seed=3)[19]  # 41 shared tokens
    tails = [[7, 8, 9], [10, 11], [12, 13, 14, 15]]
    arrivals = [(i * 12, system + t, GREEDY) for i, t in enumerate(tails)]
    plain = run_core(tiny_llama, EngineConfig(block_size=4, kv_blocks=128), arrivals)
    core = EngineCore(tiny_llama, EngineConfig(block_size=4, kv_blocks=128, prefix_caching=True))
    cached = run_core(tiny_llama, None, arrivals, core=core)
    for a, b in zip(cached, plain, strict=True):
        assert a.choices[0].token_ids == b.choices[0].token_ids
    assert [o.usage.cached_prompt_tokens for o in cached] == [0, 40, 40]
    assert core.stats().prefix_cache_hit_tokens == 80


def test_no_kv_cache_mode_recomputes_and_matches(tiny_mistral):
    prompt = prompts(3)[2]
    params = SamplingParams(temperature=0, max_tokens=12, ignore_eos=True)
    want = run_alone(tiny_mistral, prompt, params)
    core = EngineCore(tiny_mistral, EngineConfig(block_size=4, kv_blocks=64, no_kv_cache=True))
    got = run_core(tiny_mistral, None, [(0, prompt, params)], core=core)[0]
    assert got.choices[0].token_ids == want.choices[0].token_ids
    assert core.stats().prompt_tokens_computed > 12 * len(prompt)  # really recomputed every step


def test_prefix_caching_with_window_preemption_and_forks_keeps_outputs(tiny_mistral):
    # Shared prefixes of 12 and 20 tokens, a sliding window of 8, n=2 forks, a tight cache.
    heads = prompts(20, seed=5)[19][:12], prompts(20, seed=6)[19]
    arrivals = [
        (i, heads[i % 2] + [30 + i] * (1 + i % 3), SamplingParams(temperature=0.8, seed=i, n=1 + i % 2, max_tokens=9, ignore_eos=True))
        for i in range(10)
    ]
    want = run_core(tiny_mistral, EngineConfig(block_size=4, kv_blocks=256), arrivals)
    config = EngineConfig(max_seqs=8, max_batched_tokens=16, block_size=4, kv_blocks=14, prefix_caching=True)
    core = EngineCore(tiny_mistral, config)
    got = run_core(tiny_mistral, None, arrivals, core=core)
    for g, w in zip(got, want, strict=True):
        assert [c.token_ids for c in g.choices] == [c.token_ids for c in w.choices]
    assert core.stats().prefix_cache_hit_tokens > 0 and core.stats().preemptions > 0
