"""`mistralrs bench` on a tiny model: every figure present and consistent, table on stderr, JSON on stdout."""

from __future__ import annotations

import json

from mistralrs_cli.bench import SMOLLM2_135M, run_bench


def test_bench_reports_every_figure(tiny_llama, capsys):
    result = run_bench(tiny_llama, concurrency=4, tokens=5, prompt_len=8, json_out=True)
    out, err = capsys.readouterr()
    assert json.loads(out) == json.loads(json.dumps(result))
    assert "TTFT" in err and "throughput" in err  # the rich table goes to stderr
    b1, cc = result["batch1"], result["concurrent"]
    assert b1["ttft_s"] > 0 and b1["prefill_tok_s"] > 0 and b1["decode_tok_s"] > 0
    assert cc["generated_tokens"] == 4 * 5 and cc["throughput_tok_s"] > 0
    assert result["speedup_vs_batch1_decode"] == cc["throughput_tok_s"] / b1["decode_tok_s"]


def test_stand_in_shapes_are_smollm2_135m():
    c = SMOLLM2_135M
    shapes = (c.num_hidden_layers, c.hidden_size, c.intermediate_size, c.num_attention_heads)
    assert shapes == (30, 576, 1536, 9)
    assert (c.num_key_value_heads, c.vocab_size, c.tie_word_embeddings) == (3, 49152, True)
