"""Bad input: typed, one-line RequestErrors at submit time; context fitting and truncation."""

from __future__ import annotations

import pytest

from mistralrs_cli.engine import EngineConfig, SamplingParams
from mistralrs_cli.engine.core import EngineCore
from mistralrs_cli.errors import RequestError
from tests.engine.helpers import run_core


@pytest.mark.parametrize(
    "bad",
    [
        {"temperature": -0.1},
        {"top_p": 0.0},
        {"top_p": 1.5},
        {"max_tokens": 0},
        {"stop": 5},
        {"stop": ["ok", 3]},
        {"stop": [""]},
        {"top_k": -1},
        {"min_p": 2.0},
        {"n": 0},
        {"top_logprobs": 21},
        {"frequency_penalty": 3.0},
        {"repetition_penalty": 0},
        {"logit_bias": {"x": 1}},
        {"logit_bias": {"5": 500}},
        {"temperature": "hot"},
        {"seed": 1.5},
        {"best_of": 2},
    ],
)
def test_invalid_sampling_values_raise_one_line_request_errors(bad):
    with pytest.raises(RequestError) as err:
        SamplingParams.from_dict(bad)
    assert "\n" not in str(err.value) and str(err.value)


def test_from_dict_normalises_openai_forms():
    p = SamplingParams.from_dict({"stop": "###", "logit_bias": {"12": -100}, "seed": None, "max_tokens": 5})
    assert p.stop == ("###",) and p.logit_bias == {12: -100.0} and p.seed is None


@pytest.fixture
def core(tiny_llama):  # max_position_embeddings = 256
    return EngineCore(tiny_llama, EngineConfig(max_seqs=4, block_size=4, kv_blocks=50))


def _new(core, prompt, params=None, messages=None):
    return core.new_request("r", prompt, messages, params or SamplingParams(), None, core.abort)


def test_prompt_problems_are_request_errors(core):
    for prompt in ([], [5, 999], [5, -1]):
        with pytest.raises(RequestError):
            _new(core, prompt)
    with pytest.raises(RequestError, match="exactly one"):
        _new(core, "hi", messages=[{"role": "user", "content": "hi"}])
    with pytest.raises(RequestError, match="vocabulary"):
        _new(core, [5, 6], SamplingParams(logit_bias={400: 1.0}))


def test_too_long_prompt_is_rejected_or_truncated_keeping_room_for_max_tokens(core, tiny_llama):
    long = list(range(3, 303))  # 300 tokens > context 256
    with pytest.raises(RequestError, match="--truncate-sequence"):
        _new(core, long, SamplingParams(max_tokens=10))
    trunc = EngineCore(tiny_llama, EngineConfig(truncate_sequence=True, block_size=4, kv_blocks=100))
    request = trunc.new_request("r", long, None, SamplingParams(max_tokens=10), None, trunc.abort)
    assert request.prompt_ids == long[-246:] and request.max_tokens == 10


def test_request_that_can_never_fit_the_cache_is_rejected(core):
    with pytest.raises(RequestError, match="KV blocks"):
        _new(core, list(range(3, 200)), SamplingParams(max_tokens=53))  # 250 tokens > 50 blocks x 4
    with pytest.raises(RequestError, match="KV blocks"):
        _new(core, [5, 6, 7], SamplingParams(max_tokens=150, n=3))  # 3 x 39 blocks
    _new(core, list(range(3, 153)), SamplingParams(max_tokens=50))  # 200 tokens: fits exactly


def test_default_max_tokens_runs_to_the_context_end(tiny_llama):
    out = run_core(
        tiny_llama,
        EngineConfig(max_seqs=2, block_size=8, kv_blocks=64),
        [(0, list(range(3, 253)), SamplingParams(temperature=0, ignore_eos=True))],
    )[0]
    assert len(out.choices[0].token_ids) == 6 and out.choices[0].finish_reason == "length"


def test_chat_messages_are_rendered_with_the_template(tiny_mistral):
    core = EngineCore(tiny_mistral, EngineConfig(block_size=4, kv_blocks=64))
    messages = [{"role": "user", "content": "Hello"}]
    request = core.new_request("r", None, messages, SamplingParams(), None, core.abort)
    assert request.prompt_ids == tiny_mistral.tokenizer.encode_chat(messages)


@pytest.mark.parametrize("field", ["temperature", "repetition_penalty", "top_p"])
def test_non_finite_sampling_values_are_rejected(field):
    from mistralrs_cli.engine import SamplingParams
    from mistralrs_cli.errors import RequestError

    with pytest.raises(RequestError, match="finite"):
        SamplingParams(**{field: float("nan")})
