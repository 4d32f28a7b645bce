"""The threaded Engine: many producers, sync and async streams, abort from anywhere, failures."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from mistralrs_cli.engine import Engine, EngineConfig, EngineError, SamplingParams
from mistralrs_cli.errors import RequestError

LONG = SamplingParams(temperature=0, max_tokens=200, ignore_eos=True)


@pytest.fixture
def engine(tiny_llama):
    with Engine(tiny_llama, EngineConfig(max_seqs=3, block_size=4, kv_blocks=256)) as eng:
        yield eng


def _wait_idle(engine: Engine) -> None:
    deadline = time.monotonic() + 10
    while engine.stats().running or engine.stats().waiting:
        assert time.monotonic() < deadline
        time.sleep(0.01)


def _lockstep(engine: Engine, streams: list, gate: threading.Event) -> None:
    """Hold steps until `gate` is set, then run each only once every consumer has read what it was sent.

    So the engine cannot run 200 tokens ahead of a starved reader on a busy machine: the
    "< 200 tokens" checks below depend on counts, not on thread timing.
    """
    run = engine.core.runner.run

    def run_when_read(*args, **kwargs):
        gate.wait(30)
        deadline = time.monotonic() + 10
        while any(not s._queue.empty() for s in streams) and time.monotonic() < deadline:
            time.sleep(0.001)
        return run(*args, **kwargs)

    engine.core.runner.run = run_when_read


def test_abort_mid_stream_from_other_threads_frees_the_cache(engine):
    streams: list = []
    gate = threading.Event()
    _lockstep(engine, streams, gate)
    streams += [engine.submit([5 + i, 6, 7, 8], params=LONG) for i in range(6)]  # 3 run, 3 wait
    results: dict[int, list] = {}

    def consume(i):
        deltas = []
        for delta in streams[i]:
            deltas.append(delta)
            if len(deltas) == 3 and i % 2 == 0:
                streams[i].abort()  # the consumer itself aborts (keeps reading to the end)
        results[i] = deltas

    readers = [threading.Thread(target=consume, args=(i,)) for i in range(6)]
    for t in readers:
        t.start()
    for i in (1, 3, 5):  # another thread aborts by id, running or still waiting
        engine.abort(streams[i].request_id)
    gate.set()
    for t in readers:
        t.join(10)
    for i in range(6):
        last = results[i][-1]
        assert last.finish_reason == "abort" and last.usage is not None
        assert sum(len(d.token_ids) for d in results[i]) < 200
    stats = engine.stats()
    assert stats.kv_blocks_used == 0 and stats.kv_bytes_used == 0
    assert stats.running == stats.waiting == 0


def test_breaking_out_of_the_iterator_aborts(engine):
    stream = engine.submit("Hello", params=LONG)
    for n, _ in enumerate(stream):
        if n == 2:
            break
    _wait_idle(engine)
    assert engine.stats().kv_blocks_used == 0


def test_async_stream_matches_sync(engine):
    params = SamplingParams(temperature=0, max_tokens=12, ignore_eos=True)
    want = engine.generate("Hello world", params=params)

    async def main():
        outs = await asyncio.gather(*(engine.submit("Hello world", params=params).aresult() for _ in range(4)))
        return outs

    for out in asyncio.run(main()):
        assert out.choices[0].token_ids == want.choices[0].token_ids
        assert out.text == want.text


def test_async_consumer_that_leaves_early_aborts(engine):
    async def main():
        stream = engine.submit("Hello", params=LONG)
        agen = stream.__aiter__()
        await agen.__anext__()
        await agen.aclose()

    asyncio.run(main())
    _wait_idle(engine)
    assert engine.stats().kv_blocks_used == 0


def test_many_producer_threads(engine):
    params = SamplingParams(temperature=0, max_tokens=6, ignore_eos=True)
    outs: list = []
    lock = threading.Lock()

    def produce(i):
        out = engine.generate([10 + i, 11, 12], params=params)
        with lock:
            outs.append(out)

    threads = [threading.Thread(target=produce, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert len(outs) == 8 and all(len(o.choices[0].token_ids) == 6 for o in outs)


def test_model_failure_ends_requests_with_engine_error_and_engine_recovers(engine):
    runner = engine.core.runner
    real = runner.model

    def broken(*args, **kwargs):
        raise RuntimeError("boom")

    runner.model = broken
    try:
        with pytest.raises(EngineError, match="boom"):
            engine.generate("Hello", params=LONG)
    finally:
        runner.model = real
    assert engine.stats().kv_blocks_used == 0
    assert len(engine.generate("Hello", params=SamplingParams(max_tokens=3)).choices[0].token_ids) <= 3


def test_duplicate_running_request_id_is_refused(engine):
    first = engine.submit("Hello", params=LONG, request_id="same")
    second = engine.submit("Hello", params=LONG, request_id="same")
    with pytest.raises(RequestError, match="already running"):
        second.result()
    first.abort()
    assert first.result().choices[0].finish_reason == "abort"


def test_submit_after_shutdown_fails(tiny_llama):
    eng = Engine(tiny_llama, EngineConfig(kv_blocks=64))
    running = eng.submit("Hello", params=LONG)
    eng.shutdown()
    assert running.result().choices[0].finish_reason == "abort"
    with pytest.raises(EngineError):
        eng.submit("Hello")
