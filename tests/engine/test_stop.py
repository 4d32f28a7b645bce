"""Stop strings: matched across token boundaries, never emitted, and nothing else held back."""

from __future__ import annotations

from mistralrs_cli.engine import EngineConfig, SamplingParams
from mistralrs_cli.engine.stop import StopStringMatcher
from tests.engine.helpers import run_core


def test_matcher_holds_back_only_possible_prefixes():
    m = StopStringMatcher(("lo Wo", "XYZ"))
    assert m.feed("Hel") == ("He", None)  # "l" could start "lo Wo"
    assert m.feed("lo W") == ("l", None)  # "lo W" still could
    assert m.feed("ax") == ("lo Wax", None)  # it did not: released at once
    assert m.feed("abX") == ("ab", None)
    assert m.feed("Y") == ("", None)
    assert m.feed("Zrest") == ("", "XYZ")


def test_matcher_finds_the_earliest_stop_and_drops_the_rest():
    m = StopStringMatcher(("cd", "b"))
    assert m.feed("abcd") == ("a", "b")
    m = StopStringMatcher(("end",))
    assert m.feed("the e") == ("the ", None)
    assert m.flush() == "e"


def _run(loaded, **params):
    config = EngineConfig(max_seqs=4, block_size=4, kv_blocks=128)
    base = dict(temperature=0, max_tokens=40, ignore_eos=True)
    return run_core(loaded, config, [(0, "Hello world", SamplingParams(**{**base, **params}))])[0]


def test_stop_string_spanning_tokens_stops_and_is_not_emitted(tiny_mistral):
    free = _run(tiny_mistral)
    tok = tiny_mistral.tokenizer
    pieces = [tok.decode(free.choices[0].token_ids[: i + 1]) for i in range(len(free.choices[0].token_ids))]
    text = free.text
    # A stop string made of the last char of one token's text and the first of the next one's.
    cut = next(
        len(pieces[i])
        for i in range(3, len(pieces) - 1)
        if 0 < len(pieces[i]) < len(pieces[i + 1]) and pieces[i][-1].isprintable() and pieces[i + 1][len(pieces[i])].isprintable()
    )
    stop = text[cut - 1 : cut + 1]
    got = _run(tiny_mistral, stop=[stop, "never-seen"])
    choice = got.choices[0]
    assert choice.text == text[: text.index(stop)]
    assert choice.finish_reason == "stop" and choice.stop_reason == stop
    assert stop not in choice.text


def test_stop_token_ids_end_without_emitting_the_token(tiny_mistral):
    free = _run(tiny_mistral)
    ids = free.choices[0].token_ids
    stop_id = ids[5]
    got = _run(tiny_mistral, stop_token_ids=[stop_id])
    first = ids.index(stop_id)
    assert got.choices[0].token_ids == ids[:first]
    assert got.choices[0].finish_reason == "stop" and got.choices[0].stop_reason == stop_id
    assert got.usage.completion_tokens == first + 1  # the stop token is counted, not emitted


def test_max_tokens_finishes_with_length(tiny_mistral):
    got = _run(tiny_mistral, max_tokens=7)
    assert len(got.choices[0].token_ids) == 7 and got.choices[0].finish_reason == "length"
    assert got.usage.prompt_tokens == 3 and got.usage.completion_tokens == 7
