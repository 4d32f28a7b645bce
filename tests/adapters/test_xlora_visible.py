"""The mixture made visible: `xlora_scalings` in batch output and the chat `/scalings` view."""

from __future__ import annotations

import json

from rich.console import Console
from typer.testing import CliRunner

from mistralrs_cli.cli import app
from mistralrs_cli.cli.compose import build_model
from mistralrs_cli.cli.spec import model_spec
from mistralrs_cli.engine import Engine, EngineConfig, SamplingParams
from mistralrs_cli.frontends.scalings_view import render_last_scalings
from tests.adapters.test_xlora_oracle import build

runner = CliRunner(env={"COLUMNS": "200", "NO_COLOR": "1"})


def test_batch_returns_per_token_scalings(tmp_path, adapter_dirs, tiny_mistral_dir):
    xdir, ordering, *_ = build(tmp_path, adapter_dirs, "depth1-global-2ad")
    src = tmp_path / "in.jsonl"
    src.write_text(json.dumps({"id": "a", "prompt": "Hello", "max_tokens": 5, "xlora_scalings": True}) + "\n"
                   + json.dumps({"id": "b", "prompt": "Hello", "max_tokens": 5}) + "\n")
    out = tmp_path / "out.jsonl"
    res = runner.invoke(app, ["batch", str(src), "-o", str(out), "x-lora-mistral", "-m", str(tiny_mistral_dir),
                              "-x", str(xdir), "-o", str(ordering)])
    assert res.exit_code == 0, res.output
    records = {r["custom_id"]: r["response"]["body"] for r in map(json.loads, out.read_text().splitlines())}
    (choice,) = records["a"]["xlora_scalings"]
    assert choice["adapters"] == ["expert_0", "expert_1"]
    assert len(choice["tokens"]) == len(choice["scalings"]) == records["a"]["usage"]["completion_tokens"]
    # softmax over adapters: each token's scalings sum to 1
    assert all(abs(sum(row) - 1) < 1e-4 for row in choice["scalings"])
    assert "xlora_scalings" not in records["b"]


def test_chat_scalings_view_colours_each_token(tmp_path, adapter_dirs, tiny_mistral_dir):
    xdir, ordering, *_ = build(tmp_path, adapter_dirs, "depth1-global-2ad")
    loaded = build_model(model_spec("x-lora-mistral", model_id=str(tiny_mistral_dir), xlora_model_id=str(xdir),
                                    order=ordering, dtype="f32", device="cpu"))
    with Engine(loaded, EngineConfig(max_seqs=4)) as engine:
        stream = engine.submit("Hello", params=SamplingParams(temperature=0, max_tokens=6),
                               extensions={"xlora_scalings": True})
        stream.result()
        view = render_last_scalings(engine, stream.request_id)
    console = Console(record=True, width=120)
    console.print(view)
    text = console.export_text()
    assert "Dominant adapter per token" in text and "expert_0" in text and "of tokens" in text
