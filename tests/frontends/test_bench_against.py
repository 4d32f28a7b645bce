"""`mistralrs bench --against llama.cpp`: round interleaving, best-of-N and ratio maths, and the whole run.

The whole run needs llama_cpp and the default model (skipped without llama_cpp, see
tests/peers/llama_python.py); the rest runs everywhere.
"""

from __future__ import annotations

import json

import pytest

from mistralrs_cli.frontends.bench_against import (
    OURS,
    PEER,
    Turn,
    best,
    interleave,
    ratios,
    run_bench_against,
    same_prefix,
)
from mistralrs_cli.frontends.options import BenchOptions
from tests.peers.llama_python import llama_python


def test_each_prompt_goes_to_every_engine_and_the_order_alternates():
    calls: list[tuple[str, list[int]]] = []

    def runner(name: str):
        return lambda prompt: calls.append((name, prompt)) or f"{name}:{prompt[0]}"

    prompts = [[1, 9], [2, 9], [3, 9]]
    rounds = interleave({"a": runner("a"), "b": runner("b")}, prompts, pause=0)
    assert calls == [("a", [1, 9]), ("b", [1, 9]), ("b", [2, 9]), ("a", [2, 9]), ("a", [3, 9]), ("b", [3, 9])]
    assert rounds == [{"a": "a:1", "b": "b:1"}, {"a": "a:2", "b": "b:2"}, {"a": "a:3", "b": "b:3"}]
    assert [list(r) for r in rounds] == [["a", "b"]] * 3  # results keyed in the runners' order, not the turn order


def test_best_of_rounds_takes_each_figure_at_its_best():
    turns = [Turn(0.20, 90.0, (1,)), Turn(0.10, 80.0, (1,)), Turn(0.40, 120.0, (1,))]
    assert best(turns, prompt_len=64) == {"ttft_s": 0.10, "prefill_tok_s": 640.0, "decode_tok_s": 120.0}


def test_ratios_are_ours_over_theirs_for_figures_both_have():
    ours = {"ttft_s": 0.05, "prefill_tok_s": 1280.0, "decode_tok_s": 120.0, "load_s": 0.4, "peak_rss_mib": 400.0}
    peer = {"ttft_s": 0.10, "prefill_tok_s": 640.0, "decode_tok_s": 150.0, "load_s": None, "peak_rss_mib": 200.0,
            "version": "0.3.36"}
    assert ratios(ours, peer) == {"ttft_s": 0.5, "prefill_tok_s": 2.0, "decode_tok_s": 0.8, "peak_rss_mib": 2.0}


def test_same_prefix_counts_leading_equal_tokens():
    assert same_prefix((1, 2, 3, 4), (1, 2, 9, 4)) == 2
    assert same_prefix((1, 2), (1, 2, 3)) == 2
    assert same_prefix((5,), (1,)) == 0


@pytest.mark.slow
def test_both_engines_run_interleaved_on_the_default_model(default_gguf, capsys):
    from mistralrs_cli.cli.compose import engine_config, engine_factory
    from mistralrs_cli.cli.global_options import GlobalOptions
    from mistralrs_cli.cli.spec import model_spec

    spec = model_spec("default")
    options = BenchOptions(tokens=6, prompt_len=12, json_out=True, against="llama.cpp", llama_python=llama_python(),
                           rounds=2, gguf_path=default_gguf)
    result = run_bench_against(options, engine_factory(spec, engine_config(GlobalOptions(), spec), spinner=False))
    out, err = capsys.readouterr()
    assert json.loads(out) == json.loads(json.dumps(result))
    assert "mistralrs / llama.cpp" in err and "decode" in err and "best of 2" in err and "avx" in err
    ours, peer = result[OURS], result[PEER]
    for figure in ("ttft_s", "prefill_tok_s", "decode_tok_s", "load_s", "peak_rss_mib"):
        assert ours[figure] > 0 and peer[figure] > 0
        assert result["ratios"][figure] == pytest.approx(ours[figure] / peer[figure])
    assert len(result["per_round"]) == 2
    for r in result["per_round"]:
        assert r[OURS]["tokens"] == r[PEER]["tokens"] == 6
    assert ours["ttft_s"] == min(r[OURS]["ttft_s"] for r in result["per_round"])
    assert peer["decode_tok_s"] == max(r[PEER]["decode_tok_s"] for r in result["per_round"])
    # Same model, same prompt ids, both greedy: the answers start alike.
    assert max(r["same_greedy_prefix"] for r in result["per_round"]) >= 1
