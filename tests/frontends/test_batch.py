"""`mistralrs batch`: both input forms, error records in the errors file, duplicates, and a SIGKILL followed by a resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

from typer.testing import CliRunner

from mistralrs_cli.cli import app

runner = CliRunner(env={"COLUMNS": "200"})


def _lines(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def _write(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def _answers(records):
    """custom_id -> generated text, for successful records."""
    out = {}
    for r in records:
        if r["error"] is None:
            body = r["response"]["body"]
            choice = body["choices"][0]
            out[r["custom_id"]] = choice["message"]["content"] if "message" in choice else choice["text"]
    return out


def test_both_input_forms(tiny_mistral_dir, tmp_path):
    src = _write(tmp_path / "in.jsonl", [
        {"custom_id": "openai-chat", "method": "POST", "url": "/v1/chat/completions",
         "body": {"model": "x", "messages": [{"role": "user", "content": "Hello"}], "max_tokens": 5}},
        {"custom_id": "openai-cmpl", "method": "POST", "url": "/v1/completions", "body": {"prompt": "Once", "max_tokens": 4}},
        {"id": "short-prompt", "prompt": "Hello world", "max_tokens": 3},
        {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 3, "temperature": 0.5, "seed": 1},
    ])
    out = tmp_path / "out.jsonl"
    res = runner.invoke(app, ["batch", str(src), "-o", str(out), "mistral", "-m", str(tiny_mistral_dir)])
    assert res.exit_code == 0, res.output
    records = _lines(out)
    assert sorted(r["custom_id"] for r in records) == ["line-4", "openai-chat", "openai-cmpl", "short-prompt"]
    by_id = {r["custom_id"]: r for r in records}
    chat = by_id["openai-chat"]["response"]
    assert chat["status_code"] == 200 and chat["body"]["object"] == "chat.completion"
    assert chat["body"]["usage"]["completion_tokens"] == 5
    assert by_id["openai-cmpl"]["response"]["body"]["object"] == "text_completion"
    assert all(r["id"].startswith("batch_req_") and r["error"] is None for r in records)


def test_bad_lines_become_error_records(tiny_mistral_dir, tmp_path):
    src = _write(tmp_path / "in.jsonl", [
        {"id": "ok", "prompt": "Hello", "max_tokens": 3},
        "{not json",
        {"id": "neg-temp", "prompt": "x", "temperature": -1},
        {"id": "top-p", "prompt": "x", "top_p": 2},
        {"id": "wrong-type", "prompt": "x", "max_tokens": "many"},
        {"custom_id": "bad-url", "method": "POST", "url": "/v1/embeddings", "body": {}},
        {"id": "ok", "prompt": "duplicate"},
        {"id": "empty"},
    ])
    out = tmp_path / "out.jsonl"
    res = runner.invoke(app, ["batch", str(src), "-o", str(out), "mistral", "-m", str(tiny_mistral_dir)])
    assert res.exit_code == 1, res.output
    records = _lines(out)
    errors = {r["error"]["line"]: r for r in _lines(tmp_path / "out.errors.jsonl")}
    assert all(r["response"] is None and r["id"].startswith("batch_req_") for r in errors.values())
    assert sorted(errors) == [2, 3, 4, 5, 6, 7, 8]
    assert errors[2]["error"]["code"] == "invalid_json" and errors[2]["custom_id"] == "line-2"
    assert "temperature" in errors[3]["error"]["message"]
    assert "top_p" in errors[4]["error"]["message"]
    assert "max_tokens" in errors[5]["error"]["message"]
    assert errors[7]["error"]["code"] == "duplicate_custom_id" and "line 1" in errors[7]["error"]["message"]
    assert [r["custom_id"] for r in records] == ["ok"] and records[0]["error"] is None
    assert f"7 errors -> {tmp_path / 'out.errors.jsonl'}" in res.output


def _batch_cmd(src, out, model_dir, concurrency):
    return [sys.executable, "-m", "mistralrs_cli", "batch", str(src), "-o", str(out),
            "--max-concurrency", str(concurrency), "mistral", "-m", str(model_dir)]


def test_sigkill_then_resume_answers_each_id_once(tiny_mistral_dir, tmp_path):
    rows = [{"id": f"r{i}", "prompt": f"Prompt number {i} " + "word " * (i % 7), "max_tokens": 48} for i in range(40)]
    src = _write(tmp_path / "in.jsonl", rows)
    reference = tmp_path / "ref.jsonl"
    subprocess.run(_batch_cmd(src, reference, tiny_mistral_dir, 8), check=False, capture_output=True, timeout=300)
    expected = _answers(_lines(reference))
    assert len(expected) == 40

    out = tmp_path / "out.jsonl"
    proc = subprocess.Popen(_batch_cmd(src, out, tiny_mistral_dir, 1), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and (not out.exists() or out.read_text().count("\n") < 3):
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    partial = out.read_text().count("\n")
    assert 3 <= partial < 40, "the run must be killed mid-way"
    with out.open("a") as f:  # simulate a line torn by the kill
        f.write('{"id": "batch_req_x", "custom_id": "r3')
    res = subprocess.run(_batch_cmd(src, out, tiny_mistral_dir, 8), capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    records = _lines(out)
    ids = [r["custom_id"] for r in records]
    assert sorted(ids) == sorted(expected) and len(ids) == len(set(ids))
    assert _answers(records) == expected
