"""Constrained decoding in the engine: the guide, its matcher, the bitmask, and outputs on a tiny model."""

from __future__ import annotations

import json
import re

import pytest
import torch

from mistralrs_cli.engine import EngineConfig, SamplingParams
from mistralrs_cli.engine.core import EngineCore
from mistralrs_cli.engine.guided import Guide, MaskBuilder, apply_bitmask, one_line
from mistralrs_cli.errors import RequestError
from tests.engine.helpers import prompts, run_alone, run_core

PHONE = r"[0-9]{3}-[a-c]{2,4}"


@pytest.fixture(scope="module")
def core(tiny_mistral):
    return EngineCore(tiny_mistral, EngineConfig())


def _text(loaded, out) -> str:
    return loaded.tokenizer.decode(out.choices[0].token_ids)


@pytest.mark.parametrize(("kind", "value", "message"), [
    ("yaml", None, "unknown constraint kind"),
    ("json_schema", "[]", "must be a JSON object"),
    ("regex", "", "non-empty string"),
    ("grammar", 3, "non-empty string"),
    ("choice", [], "non-empty list"),
    ("choice", ["a", ""], "non-empty list"),
])
def test_guide_rejects_malformed_values(kind, value, message):
    with pytest.raises(RequestError, match=message):
        Guide(kind, value)


@pytest.mark.parametrize(("guide", "reason"), [
    (Guide("regex", "[a-"), "unclosed character class"),
    (Guide("json_schema", {"type": "nonsense"}), "nonsense"),
    (Guide("grammar", "start: foo"), 'unknown name: "foo"'),
    (Guide("grammar", "root ::= [0-9"), "invalid grammar"),
])
def test_invalid_constraints_are_one_line_request_errors(core, guide, reason):
    with pytest.raises(RequestError) as info:
        core.guides.matcher(guide)
    assert reason in str(info.value)
    assert "\n" not in str(info.value)


def test_a_grammar_too_big_for_the_parser_limits_is_refused_not_hung(core):
    # llguidance bounds the work of building a grammar; this enum is past its limit.
    with pytest.raises(RequestError, match="too big"):
        core.guides.matcher(Guide("json_schema", {"enum": [f"v{i}" for i in range(200_000)]}))


def test_one_line_drops_the_source_excerpt():
    raw = 'at 1(8): invalid regex "[a-" (in regex): regex parse error:\n    [a-\n    ^\nerror: unclosed\n   1 | x\n     ^\n'
    assert one_line(raw) == 'at 1(8): invalid regex "[a-" (in regex): regex parse error: unclosed'
    assert one_line("Invalid type: nonsense") == "Invalid type: nonsense"


def test_apply_bitmask_matches_a_bit_by_bit_reference():
    gen = torch.Generator().manual_seed(0)
    vocab = 70  # not a multiple of 32: the last word is partly padding
    mask = torch.randint(-(2**31), 2**31 - 1, (3, 3), dtype=torch.int32, generator=gen)
    logits = torch.randn(3, vocab, generator=gen)
    out = apply_bitmask(logits, mask)
    for r in range(3):
        for t in range(vocab):
            allowed = (int(mask[r, t // 32]) >> (t % 32)) & 1
            assert (out[r, t] == logits[r, t]) if allowed else out[r, t] == float("-inf")


def test_mask_rows_without_a_matcher_allow_everything_and_rows_match_single_masks(core):
    vocab = core.limits.vocab_size
    builder = MaskBuilder()
    assert builder.bitmask([None, None], vocab) is None
    a, b = core.guides.matcher(Guide("regex", PHONE)), core.guides.matcher(Guide("choice", ["abc", "cab"]))
    both = builder.bitmask([a, None, b], vocab)
    assert both is not None and (both[1] == -1).all()
    assert torch.equal(both[0], builder.bitmask([a], vocab)[0])
    assert torch.equal(both[2], builder.bitmask([b], vocab)[0])
    assert not torch.equal(both[0], both[2])


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_outputs_match_the_regex_greedy_and_sampled(tiny_mistral, temperature):
    params = SamplingParams(max_tokens=40, temperature=temperature, seed=3, n=3, guide=Guide("regex", PHONE))
    out = run_core(tiny_mistral, EngineConfig(max_seqs=3), [(0, prompts(1)[0], params)])[0]
    for choice in out.choices:  # n > 1: every fork walks its own copy of the constraint
        text = tiny_mistral.tokenizer.decode(choice.token_ids)
        assert re.fullmatch(PHONE, text), text
        assert choice.finish_reason == "stop"


def test_choice_and_json_object(tiny_mistral):
    out = run_alone(tiny_mistral, prompts(1)[0], SamplingParams(max_tokens=8, temperature=0,
                                                                 guide=Guide("choice", ["left", "right"])))
    assert _text(tiny_mistral, out) in ("left", "right")
    schema = {"type": "object", "properties": {"k": {"enum": ["x", "y"]}, "n": {"type": "integer"}},
              "required": ["k", "n"], "additionalProperties": False}
    out = run_alone(tiny_mistral, prompts(2)[1], SamplingParams(max_tokens=60, temperature=0.7, seed=1,
                                                                 guide=Guide("json_schema", schema)))
    value = json.loads(_text(tiny_mistral, out))
    assert value["k"] in ("x", "y") and isinstance(value["n"], int)


def test_a_constraint_cut_by_max_tokens_ends_with_length_and_a_valid_prefix(tiny_mistral):
    out = run_alone(tiny_mistral, prompts(1)[0], SamplingParams(max_tokens=2, temperature=0,
                                                                 guide=Guide("regex", "[a-c]{30}")))
    choice = out.choices[0]
    assert choice.finish_reason == "length"
    text = tiny_mistral.tokenizer.decode(choice.token_ids)
    assert 0 < len(text) < 30 and re.fullmatch("[a-c]*", text)


def test_a_constrained_request_gives_the_same_tokens_alone_and_batched_with_15_unconstrained(tiny_mistral):
    guided = SamplingParams(max_tokens=24, temperature=0.8, seed=7, guide=Guide("regex", PHONE))
    free = SamplingParams(max_tokens=24, temperature=0.8, seed=11)
    ps = prompts(16, seed=5)
    alone = run_alone(tiny_mistral, ps[0], guided)
    arrivals = [(0, ps[0], guided)] + [(i % 3, p, free) for i, p in enumerate(ps[1:])]
    batched = run_core(tiny_mistral, EngineConfig(max_seqs=16), arrivals)
    assert batched[0].choices[0].token_ids == alone.choices[0].token_ids
    for i, out in enumerate(batched[1:], start=1):  # and the unconstrained ones are untouched by the mask
        assert out.choices[0].token_ids == run_alone(tiny_mistral, ps[i], free).choices[0].token_ids


def test_sampling_filters_apply_within_the_allowed_tokens(tiny_mistral):
    # top_k 1 among the allowed tokens is the constrained greedy answer.
    guide = Guide("regex", PHONE)
    greedy = run_alone(tiny_mistral, prompts(1)[0], SamplingParams(max_tokens=20, temperature=0, guide=guide))
    top1 = run_alone(tiny_mistral, prompts(1)[0], SamplingParams(max_tokens=20, temperature=1.5, top_k=1, seed=2,
                                                                  guide=guide))
    assert top1.choices[0].token_ids == greedy.choices[0].token_ids


def test_closed_objects_closes_listed_properties_but_not_allof_branches_or_explicit_choices():
    from mistralrs_cli.engine.guided import closed_objects

    schema = {
        "type": "object",
        "properties": {"properties": {"type": "object", "properties": {"x": {"type": "integer"}}},
                       "list": {"type": "array", "items": {"properties": {"y": {}}}}},
        "$defs": {"d": {"properties": {"z": {}}, "additionalProperties": True}},
        "allOf": [{"properties": {"a": {}}}],
    }
    closed = closed_objects(schema)
    assert closed["additionalProperties"] is False
    assert closed["properties"]["properties"]["additionalProperties"] is False  # a property named "properties"
    assert "additionalProperties" not in closed["properties"]["properties"]["properties"]  # its names stay names
    assert closed["properties"]["list"]["items"]["additionalProperties"] is False
    assert closed["$defs"]["d"]["additionalProperties"] is True
    assert "additionalProperties" not in closed["allOf"][0]
    assert "additionalProperties" not in schema  # the request's own schema is not changed
