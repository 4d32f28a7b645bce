"""benchmarks/load_test.py checks what it prints: a clean server passes, a server that keeps generating fails."""

from __future__ import annotations

import asyncio
import importlib.util
import sys
from pathlib import Path

import pytest

from mistralrs_cli.engine import EngineConfig
from tests.frontends.server.conftest import slow_down

_spec = importlib.util.spec_from_file_location("load_test", Path(__file__).parents[3] / "benchmarks" / "load_test.py")
load_test = importlib.util.module_from_spec(_spec)
sys.modules.setdefault("load_test", load_test)  # dataclasses look their module up there
_spec.loader.exec_module(load_test)

IDLE = {"mistralrs_kv_cache_blocks_used": 0, "mistralrs_running_sequences": 0, "mistralrs_waiting_sequences": 0,
        "mistralrs_requests_in_flight": 0, "mistralrs_requests_aborted_total": 1,
        "mistralrs_engine_generated_tokens_total": 40, "mistralrs_completion_tokens_total": 38}
RESULTS = [load_test.Result("plain", 200, complete=True, finished=True),
           load_test.Result("drop", 200, finished=False)]


@pytest.mark.parametrize(("after", "worst", "failure"), [
    ({}, 0.1, None),
    ({"mistralrs_running_sequences": 1}, 0.1, "running_sequences is 1"),
    ({"mistralrs_requests_in_flight": 2}, 0.1, "requests_in_flight is 2"),
    ({"mistralrs_requests_aborted_total": 0}, 0.1, "0 requests aborted, expected 1"),
    ({"mistralrs_requests_aborted_total": 2}, 0.1, "2 requests aborted, expected 1"),
    ({"mistralrs_engine_generated_tokens_total": 100}, 0.1, "kept generating for departed clients"),
    ({}, 3.0, "/health took 3.00 s"),
])
def test_check_names_each_broken_promise(after, worst, failure):
    probe = load_test.HealthProbe(worst=worst)
    failed = load_test.check(RESULTS, probe, {}, {**IDLE, **after}, health_bound=1.0)
    if failure is None:
        assert failed == []
    else:
        assert len(failed) == 1 and failure in failed[0]


def _run(live) -> list[str]:
    before = load_test._metrics(live.url, {})
    results, _, probe = asyncio.run(load_test.run_load(live.url, 8, 8, 2, 64, {}, seed=0))
    after = load_test.wait_drained(live.url, {})
    # The /health bound is the script's; here it only has to answer (no wall-clock bound in tests).
    return load_test.check(results, probe, before, after, health_bound=60.0)


def test_load_test_passes_on_the_server(fresh_server):
    live = fresh_server(engine_config=EngineConfig(max_seqs=8))
    slow_down(live, 0.05)
    assert _run(live) == []


def test_load_test_catches_a_server_that_keeps_generating(fresh_server):
    live = fresh_server(engine_config=EngineConfig(max_seqs=8))
    slow_down(live, 0.05)
    live.state.engine.abort = lambda request_id: None  # a server that ignores departed clients
    failed = _run(live)
    assert any("kept generating for departed clients" in f for f in failed), failed
