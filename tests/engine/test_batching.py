"""The batching invariant: a request's output does not depend on what else runs with it.

16 requests of different prompt lengths arrive at different steps, with a small token
budget so long prompts are prefilled in chunks while others decode. Every output must be
token-for-token the output of that request run alone. Batched (B, Q) matmuls may differ
from unbatched ones in the last bits, so besides the tokens we compare each token's
logprob (log_softmax of the model's logits) to 1e-5: a drift in the cache or masks
would show there even where argmax happened not to change.
"""

from __future__ import annotations

import pytest

from mistralrs_cli.engine import EngineConfig, SamplingParams
from tests.engine.helpers import prompts, run_alone, run_core

BATCHED = EngineConfig(max_seqs=16, max_batched_tokens=24, block_size=4, kv_blocks=512)


def _arrivals(params_for):
    return [(i // 2 * 3, p, params_for(i)) for i, p in enumerate(prompts(16))]


def _assert_same(got, want):
    for g, w in zip(got, want, strict=True):
        assert g.choices[0].token_ids == w.choices[0].token_ids
        assert g.choices[0].finish_reason == w.choices[0].finish_reason
        for a, b in zip(g.choices[0].logprobs, w.choices[0].logprobs, strict=True):
            assert abs(a.logprob - b.logprob) < 1e-5


@pytest.mark.parametrize("model", ["tiny_mistral", "tiny_llama"])
def test_greedy_batched_equals_alone(model, request):
    loaded = request.getfixturevalue(model)

    def params(i):
        return SamplingParams(temperature=0, max_tokens=8 + i, ignore_eos=True, logprobs=True)

    arrivals = _arrivals(params)
    got = run_core(loaded, BATCHED, arrivals)
    want = [run_alone(loaded, p, sp) for _, p, sp in arrivals]
    _assert_same(got, want)
    # The test is only meaningful if outputs differ between requests.
    assert len({tuple(o.choices[0].token_ids[:8]) for o in got}) > 8


def test_seeded_sampling_batched_equals_alone(tiny_mistral):
    def params(i):
        return SamplingParams(
            temperature=0.9,
            top_k=50 if i % 2 else 0,
            top_p=0.9 if i % 3 else 1.0,
            min_p=0.02 if i % 4 == 1 else 0.0,
            repetition_penalty=1.2 if i % 5 else 1.0,
            frequency_penalty=0.3 if i % 2 else 0.0,
            presence_penalty=0.2,
            seed=1000 + i,
            max_tokens=10 + i,
            ignore_eos=True,
            logprobs=True,
        )

    arrivals = _arrivals(params)
    got = run_core(tiny_mistral, BATCHED, arrivals)
    want = [run_alone(tiny_mistral, p, sp) for _, p, sp in arrivals]
    _assert_same(got, want)
    again = run_alone(tiny_mistral, arrivals[3][1], arrivals[3][2])
    assert again.choices[0].token_ids == want[3].choices[0].token_ids  # same seed, same output


def test_tiny_cache_preempts_and_keeps_outputs(tiny_llama):
    def params(i):
        return SamplingParams(temperature=0.7, seed=i, max_tokens=12 + i, ignore_eos=True, logprobs=True)

    arrivals = _arrivals(params)
    ample = run_core(tiny_llama, BATCHED, arrivals)
    from mistralrs_cli.engine.core import EngineCore

    tight = EngineConfig(max_seqs=16, max_batched_tokens=24, block_size=4, kv_blocks=20)
    core = EngineCore(tiny_llama, tight)
    got = run_core(tiny_llama, tight, arrivals, core=core)
    _assert_same(got, ample)
    assert core.stats().preemptions > 0
    assert core.stats().kv_blocks_used == 0


def test_running_sequences_stream_while_a_long_prompt_prefills(tiny_llama):
    from mistralrs_cli.engine.core import EngineCore

    core = EngineCore(tiny_llama, EngineConfig(max_seqs=4, max_batched_tokens=8, block_size=4, kv_blocks=256))
    short = core.new_request("a", [5, 6, 7], None, SamplingParams(temperature=0, max_tokens=30, ignore_eos=True), None, core.abort)
    core.add(short)
    core.step()  # prefill + first token
    seq_a = core.scheduler.running[0]
    long = core.new_request("b", list(range(3, 60)), None, SamplingParams(temperature=0, max_tokens=2), None, core.abort)
    core.add(long)
    produced = []
    for _ in range(8):  # 57 prompt tokens at 7 per step: B prefills over 8+ steps
        before = seq_a.num_output
        core.step()
        produced.append(seq_a.num_output - before)
    assert produced == [1] * 8
    seq_b = next(s for s in core.scheduler.running if s.request.request_id == "b")
    assert 0 < seq_b.num_computed < 57  # B was prefilled in chunks, alongside A
