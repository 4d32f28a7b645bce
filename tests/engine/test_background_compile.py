"""The compiled decode step's background compile (engine/compiled_step.py), without a compiler:
torch.compile is replaced by the identity, so the "compiled" graph is `_decode_step` run eagerly
on the padded inputs. What is tested is the machinery: a bucket whose graph is not ready decodes
eagerly while a thread compiles it (the first answer never waits), the bucket switches once it is
ready, and a failed compile leaves that bucket eager with one warning line. The real compiles are
in test_compiled_step.py (slow)."""

from __future__ import annotations

import logging
import threading
from dataclasses import replace

import pytest
import torch

from mistralrs_cli.engine import Engine, EngineConfig, SamplingParams, compiled_step
from tests.engine.helpers import prompts, run_core

TOL = 1e-5


def _greedy(max_tokens: int) -> SamplingParams:
    return SamplingParams(temperature=0, max_tokens=max_tokens, ignore_eos=True, logprobs=True)


@pytest.fixture
def no_compiler(monkeypatch):
    monkeypatch.setattr(torch, "compile", lambda fn, **kwargs: fn)
    monkeypatch.setattr(compiled_step, "cxx_compiler", lambda: "c++")


def _same(got, want) -> None:
    assert got.choices[0].token_ids == want.choices[0].token_ids
    for a, b in zip(got.choices[0].logprobs, want.choices[0].logprobs, strict=True):
        assert abs(a.logprob - b.logprob) < TOL


def test_the_first_answer_does_not_wait_for_the_compile(tiny_mistral, no_compiler):
    config = EngineConfig(max_seqs=2, block_size=4, kv_blocks=128)
    with Engine(tiny_mistral, config) as engine:
        want = [engine.generate(t, params=_greedy(6)) for t in ("Hello world", "this is")]
        assert engine.compile_status() is None and engine.wait_compiled(0) is True  # not compiling
    with Engine(tiny_mistral, replace(config, compile=True)) as engine:
        compiled = engine.core.runner.compiled
        compiled.hold = threading.Event()  # the compile thread waits until the first answer is out
        first = engine.generate("Hello world", params=_greedy(6))
        assert compiled.calls == 0 and not compiled.ready[1].is_set()
        assert engine.compile_status() == {1: "compiling"} and engine.wait_compiled(0.01) is False
        compiled.hold.set()
        assert engine.wait_compiled(60)
        assert engine.compile_status() == {1: "ready"}
        assert compiled.failed == {} and list(compiled.steps) == [1]
        second = engine.generate("this is", params=_greedy(6))
        assert compiled.calls == 5  # every decode step of the second request (the first token is prefill's)
    _same(first, want[0])
    _same(second, want[1])


def test_a_failing_compile_leaves_its_bucket_eager(tiny_mistral, no_compiler, monkeypatch, caplog):
    arrivals = [(0, p, _greedy(4)) for p in prompts(2)]
    config = EngineConfig(max_seqs=2, kv_blocks=64)
    want = run_core(tiny_mistral, config, arrivals)

    def broken(*args, **kwargs):
        raise RuntimeError("C++ compile failed\nlots of compiler output")

    monkeypatch.setattr(compiled_step, "_decode_step", broken)
    with Engine(tiny_mistral, replace(config, compile=True)) as engine, caplog.at_level(logging.WARNING):
        compiled = engine.core.runner.compiled
        got = [s.result() for s in [engine.submit(p, params=sp) for _, p, sp in arrivals]]
        assert compiled.wait(60)
        again = [s.result() for s in [engine.submit(p, params=sp) for _, p, sp in arrivals]]
    assert compiled.failed == {2: "RuntimeError: C++ compile failed"} and compiled.calls == 0
    assert engine.compile_status() == {2: "eager (RuntimeError: C++ compile failed)"}
    assert [r.getMessage() for r in caplog.records] == [
        "compiling the decode step for batch bucket 2 failed (RuntimeError: C++ compile failed); it stays eager"]
    for outs in (got, again):
        assert [o.choices[0].token_ids for o in outs] == [o.choices[0].token_ids for o in want]


def test_a_bucket_compiles_once_while_its_groups_decode_eagerly(tiny_mistral, no_compiler, monkeypatch):
    compiles = []
    compile_bucket = compiled_step.CompiledDecode.compile_bucket

    def counted(self, bucket):
        compiles.append(bucket)
        return compile_bucket(self, bucket)

    monkeypatch.setattr(compiled_step.CompiledDecode, "compile_bucket", counted)
    config = EngineConfig(max_seqs=3, block_size=4, kv_blocks=256)
    arrivals = [(0, p, _greedy(6)) for p in prompts(3)]
    want = run_core(tiny_mistral, config, arrivals)
    with Engine(tiny_mistral, replace(config, compile=True)) as engine:
        compiled = engine.core.runner.compiled
        compiled.hold = threading.Event()
        got = [s.result() for s in [engine.submit(p, params=sp) for _, p, sp in arrivals]]
        compiled.hold.set()
        assert compiled.wait(60)
    assert compiles == [4] and compiled.calls == 0  # asked for on every step, started once
    for g, w in zip(got, want, strict=True):
        _same(g, w)


def test_compile_where_it_can_is_quiet_where_it_cannot(tiny_mistral, monkeypatch, caplog):
    # compile=None (the command line's default): no compiler means eager, with no warning.
    from mistralrs_cli.engine.core import EngineCore

    monkeypatch.setattr(compiled_step, "cxx_compiler", lambda: None)
    with caplog.at_level(logging.WARNING):
        core = EngineCore(tiny_mistral, EngineConfig(max_seqs=2, kv_blocks=64, compile=None))
        assert core.runner.compiled is None
        core = EngineCore(tiny_mistral, EngineConfig(max_seqs=2, kv_blocks=64, compile=True))
        assert core.runner.compiled is None
    assert [r.getMessage() for r in caplog.records] == [
        "--compile: no C++ compiler (g++, or $CXX) found for torch.compile; decoding eagerly"]


def test_grown_rope_tables_stay_plain_tensors(tiny_mistral):
    # Grown inside the engine's inference mode, they must not become inference tensors: that would
    # change the compiled graphs' guards (a blocking recompile of every bucket).
    rotary = tiny_mistral.model.model.rotary
    with torch.inference_mode():
        cos, sin = rotary.tables(rotary.tables(1, torch.device("cpu"))[0].shape[0] + 1, torch.device("cpu"))
    assert not cos.is_inference() and not sin.is_inference()


def test_the_compile_waits_for_an_idle_engine(tiny_mistral, no_compiler, monkeypatch):
    # Tracing holds the GIL: started mid-answer it would slow that answer, so it waits until the
    # engine has nothing to run (or IDLE_WAIT passes).
    monkeypatch.setattr(compiled_step, "IDLE_WAIT", 60.0)
    started = []
    compile_bucket = compiled_step.CompiledDecode.compile_bucket

    def counted(self, bucket):
        started.append((bucket, self.idle.is_set(), engine.core.has_work()))
        return compile_bucket(self, bucket)

    monkeypatch.setattr(compiled_step.CompiledDecode, "compile_bucket", counted)
    with Engine(tiny_mistral, EngineConfig(max_seqs=2, block_size=4, kv_blocks=128, compile=True)) as engine:
        out = engine.generate("Hello world", params=_greedy(24))
        assert engine.wait_compiled(60)
    assert len(out.choices[0].token_ids) == 24
    assert started == [(1, True, False)]  # once, after the answer, with nothing left to run
