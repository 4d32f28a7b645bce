"""Batch lines too long for the context by their length alone: an error record, without tokenizing."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from mistralrs_cli.cli import app
from mistralrs_cli.loading.tokenizer import TextTokenizer

runner = CliRunner(env={"COLUMNS": "200"})


def test_oversized_lines_are_refused_before_tokenizing(tiny_mistral_dir, tmp_path, monkeypatch):
    seen: list[int] = []
    real = TextTokenizer.encode
    monkeypatch.setattr(TextTokenizer, "encode", lambda self, text, *a, **k: seen.append(len(text)) or real(self, text, *a, **k))
    big = "hello world " * 200_000  # 2.4 MB: the tiny model's context is 256 tokens
    rows = [{"id": "chat", "messages": [{"role": "user", "content": big}]},
            {"id": "text", "prompt": big},
            {"id": "ok", "prompt": "Hello", "max_tokens": 2}]
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "out.jsonl"
    res = runner.invoke(app, ["batch", str(src), "-o", str(out), "mistral", "-m", str(tiny_mistral_dir)])
    assert res.exit_code == 1, res.output
    errors = {json.loads(line)["custom_id"]: json.loads(line)["error"]
              for line in (tmp_path / "out.errors.jsonl").read_text().splitlines()}
    assert sorted(errors) == ["chat", "text"]
    for error in errors.values():
        assert error["message"].startswith(f"line {error['line']}: the prompt has at least "), error
    assert [json.loads(line)["custom_id"] for line in out.read_text().splitlines()] == ["ok"]
    assert seen and max(seen) < 1000  # only the short line was tokenized
