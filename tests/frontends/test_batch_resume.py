"""Batch resume: errors go to OUT.errors.jsonl and are retried; custom_ids in OUT.jsonl stay unique."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from mistralrs_cli.cli import app
from mistralrs_cli.frontends.batch_io import error_record, success_record
from mistralrs_cli.frontends.batch_store import ErrorLog, errors_path, load_answered
from tests.frontends.test_batch import _lines, _write

runner = CliRunner(env={"COLUMNS": "200"})


def _batch(src, out, model_dir):
    return runner.invoke(app, ["batch", str(src), "-o", str(out), "mistral", "-m", str(model_dir)])


def _text(record):
    return record["response"]["body"]["choices"][0]["text"]


def test_fixed_bad_line_runs_on_rerun_and_replaces_its_error(tiny_mistral_dir, tmp_path):
    good = {"id": "ok", "prompt": "Hello", "max_tokens": 4}
    fixed = {"id": "bad", "prompt": "Once upon", "max_tokens": 6}
    src = _write(tmp_path / "in.jsonl", [good, {**fixed, "temperature": -1}, '{"id": "torn", "prompt": '])
    out, errors = tmp_path / "out.jsonl", tmp_path / "out.errors.jsonl"

    first = _batch(src, out, tiny_mistral_dir)
    assert first.exit_code == 1, first.output
    assert [r["custom_id"] for r in _lines(out)] == ["ok"]
    assert sorted((r["error"]["line"], r["custom_id"]) for r in _lines(errors)) == [(2, "bad"), (3, "line-3")]
    assert f"1 answered -> {out}; 2 errors -> {errors}" in first.output
    ok_record = _lines(out)[0]

    _write(src, [good, fixed, '{"id": "torn", "prompt": '])  # fix line 2 only
    second = _batch(src, out, tiny_mistral_dir)
    assert second.exit_code == 1, second.output
    assert f"1 answered + 1 from an earlier run -> {out}; 1 error -> {errors}" in second.output
    records = _lines(out)
    assert [r["custom_id"] for r in records] == ["ok", "bad"]
    assert records[0] == ok_record, "an answered line is not run again"
    assert [(r["error"]["line"], r["custom_id"]) for r in _lines(errors)] == [(3, "line-3")]

    _write(src, [good, fixed, {"id": "torn", "prompt": "The end", "max_tokens": 3}])  # fix line 3
    third = _batch(src, out, tiny_mistral_dir)
    assert third.exit_code == 0, third.output
    assert not errors.exists(), "no error stands, so no errors file"
    records = _lines(out)
    assert [r["custom_id"] for r in records] == ["ok", "bad", "torn"]
    assert all(r["error"] is None for r in records)

    fresh = tmp_path / "fresh.jsonl"  # the retried lines answer as a first run on the fixed input does
    assert _batch(src, fresh, tiny_mistral_dir).exit_code == 0
    assert {r["custom_id"]: _text(r) for r in records} == {r["custom_id"]: _text(r) for r in _lines(fresh)}


def test_duplicate_custom_id_goes_to_errors_file_keyed_by_line(tiny_mistral_dir, tmp_path):
    rows = [{"id": "q", "prompt": "Hello", "max_tokens": 3}, {"id": "q", "prompt": "Other", "max_tokens": 3},
            {"id": "r", "prompt": "More", "max_tokens": 3}]
    src = _write(tmp_path / "in.jsonl", rows)
    out, errors = tmp_path / "out.jsonl", tmp_path / "out.errors.jsonl"
    for _ in range(2):  # a re-run rewrites the errors file instead of appending to it
        res = _batch(src, out, tiny_mistral_dir)
        assert res.exit_code == 1, res.output
        assert sorted(r["custom_id"] for r in _lines(out)) == ["q", "r"]
        [dup] = _lines(errors)
        assert dup["custom_id"] == "q" and dup["error"]["code"] == "duplicate_custom_id"
        assert dup["error"]["line"] == 2 and "first on line 1" in dup["error"]["message"]

    rows[1]["id"] = "q2"
    _write(src, rows)
    res = _batch(src, out, tiny_mistral_dir)
    assert res.exit_code == 0, res.output
    ids = [r["custom_id"] for r in _lines(out)]
    assert sorted(ids) == ["q", "q2", "r"] and len(ids) == len(set(ids))
    assert not errors.exists()


def test_load_answered_counts_successes_only_and_cleans_old_outputs(tmp_path):
    out = tmp_path / "out.jsonl"
    ok = success_record("a", {"choices": []})
    old_error = error_record("b", 2, "invalid_request", "line 2: bad")  # written to OUT by older versions
    out.write_text("\n".join(json.dumps(r) for r in [ok, old_error, success_record("a", {})]) + '\n{"id": "torn')
    assert load_answered(out) == {"a"}
    assert _lines(out) == [ok], "errors, repeats and a torn tail are dropped; the first answer stays"
    assert load_answered(tmp_path / "missing.jsonl") == set()


def test_error_log_keeps_old_errors_until_a_run_completes(tmp_path):
    path = errors_path(tmp_path / "out.jsonl")
    assert path.name == "out.errors.jsonl" and errors_path(tmp_path / "out").name == "out.errors.jsonl"
    old = error_record("x", 1, "invalid_json", "line 1: old")
    path.write_text(json.dumps(old) + "\n" + '{"torn')
    killed = ErrorLog(path)  # a run killed before it completes: nothing written is lost
    killed.write(error_record("y", 2, "invalid_json", "line 2: new"))
    killed.close()
    assert [r["custom_id"] for r in _lines(path)] == ["x", "y"]

    done = ErrorLog(path)
    done.write(error_record("y", 2, "invalid_json", "line 2: newer"))
    done.finish()
    assert [r["error"]["message"] for r in _lines(path)] == ["line 2: newer"]

    clean = ErrorLog(path)
    clean.finish()
    assert not path.exists()
