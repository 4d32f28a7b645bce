"""`mistralrs bench` on a tiny model: every figure present and consistent, table on stderr, JSON on stdout."""

from __future__ import annotations

import json

from mistralrs_cli.engine import Engine, EngineConfig
from mistralrs_cli.frontends.bench import _all_decoding_rate, _Timing, run_bench
from mistralrs_cli.frontends.options import BenchOptions
from mistralrs_cli.loading.random_model import SMOLLM2_135M


def test_bench_reports_every_figure(tiny_llama, capsys):
    options = BenchOptions(concurrency=4, tokens=5, prompt_len=8, json_out=True)
    result = run_bench(options, lambda: Engine(tiny_llama, EngineConfig(max_seqs=4)))
    out, err = capsys.readouterr()
    assert json.loads(out) == json.loads(json.dumps(result))
    assert "TTFT" in err and "throughput" in err  # the rich table goes to stderr
    assert result["kv_cache"].startswith("KV cache ") and "4 sequences x" in result["kv_cache"]
    assert "KV cache" in err
    b1, cc = result["batch1"], result["concurrent"]
    assert b1["ttft_s"] > 0 and b1["prefill_tok_s"] > 0 and b1["decode_tok_s"] > 0
    assert cc["generated_tokens"] == 4 * 5 and cc["throughput_tok_s"] > 0
    assert result["speedup_vs_batch1_decode"] == cc["throughput_tok_s"] / b1["decode_tok_s"]


def test_stand_in_shapes_are_smollm2_135m():
    c = SMOLLM2_135M
    shapes = (c.num_hidden_layers, c.hidden_size, c.intermediate_size, c.num_attention_heads)
    assert shapes == (30, 576, 1536, 9)
    assert (c.num_key_value_heads, c.vocab_size, c.tie_word_embeddings) == (3, 49152, True)


def test_decode_window_counts_only_tokens_while_all_decode():
    a = _Timing(0.0, first=1.0, last=5.0, times=[1.0, 2.0, 3.0, 4.0, 5.0])
    b = _Timing(0.0, first=2.0, last=4.0, times=[2.0, 3.0, 4.0])
    # Window (2, 4]: a's tokens at 3 and 4, b's at 3 and 4 -> 4 tokens in 2 s.
    assert _all_decoding_rate([a, b]) == 2.0
    late = _Timing(0.0, first=6.0, last=7.0, times=[6.0, 7.0])
    assert _all_decoding_rate([a, late]) is None  # a finished before `late` started


def test_bench_measures_the_base_model_alone_in_the_same_run(tiny_llama, capsys):
    loads = []
    config = EngineConfig(max_seqs=2)
    result = run_bench(BenchOptions(concurrency=2, tokens=4, prompt_len=4), lambda: Engine(tiny_llama, config),
                       open_baseline=lambda: loads.append(1) or Engine(tiny_llama, config))
    assert loads == [1] and "base model alone" in capsys.readouterr().err
    base = result["base_model"]
    assert base["decode_tok_s"] > 0 and base["slowdown"] == base["decode_tok_s"] / result["batch1"]["decode_tok_s"]



def test_bench_measures_the_compiled_step_after_its_compile(tiny_llama, capsys, monkeypatch):
    # torch.compile as the identity (the real compiles are in test_compiled_step.py, slow): what is
    # tested is that bench meets every batch size first and waits for their graphs before measuring.
    import torch

    from mistralrs_cli.engine import compiled_step

    monkeypatch.setattr(torch, "compile", lambda fn, **kwargs: fn)
    monkeypatch.setattr(compiled_step, "cxx_compiler", lambda: "c++")
    options = BenchOptions(concurrency=3, tokens=5, prompt_len=4, json_out=True)
    eager = run_bench(options, lambda: Engine(tiny_llama, EngineConfig(max_seqs=3)))
    assert eager["compiled_step"] is None and "eager" in capsys.readouterr().err
    with Engine(tiny_llama, EngineConfig(max_seqs=3, compile=True)) as engine:
        result = run_bench(options, lambda: engine)
        assert engine.core.runner.compiled.calls > 0 and engine.core.runner.compiled.failed == {}
    compiled = result["compiled_step"]
    assert compiled["warmup_s"] > 0 and compiled["buckets"] and set(compiled["buckets"].values()) == {"ready"}
    assert {"1", "4"} <= set(compiled["buckets"])
    assert "compiled, batch 1: ready" in capsys.readouterr().err
