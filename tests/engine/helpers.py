"""Driving EngineCore step by step, so tests choose the step at which each request arrives."""

from __future__ import annotations

from mistralrs_cli.engine import EngineConfig, RequestOutput, SamplingParams
from mistralrs_cli.engine.core import EngineCore


def run_core(
    loaded,
    config: EngineConfig,
    arrivals: list[tuple[int, list[int] | str, SamplingParams]],
    core: EngineCore | None = None,
) -> list[RequestOutput]:
    """Add each (step, prompt, params) at its step, step until idle; outputs in arrival order."""
    core = core or EngineCore(loaded, config)
    todo = sorted(enumerate(arrivals), key=lambda item: item[1][0])
    streams = {}
    step = 0
    while todo or core.has_work():
        while todo and todo[0][1][0] <= step:
            i, (_, prompt, params) = todo.pop(0)
            request = core.new_request(f"r{i}", prompt, None, params, None, core.abort)
            core.add(request)
            streams[i] = request.stream
        core.step()
        step += 1
        assert step < 10_000, "engine did not finish"
    assert core.blocks.num_used == 0, "finished requests must free every block"
    return [streams[i].result() for i in range(len(arrivals))]


def run_alone(loaded, prompt: list[int] | str, params: SamplingParams) -> RequestOutput:
    """One request in its own engine: the reference the batched runs must match."""
    return run_core(loaded, EngineConfig(max_seqs=1), [(0, prompt, params)])[0]


def prompts(count: int, vocab: int = 320, seed: int = 0) -> list[list[int]]:
    """Deterministic prompts of lengths 3, 5, 7, ... (some longer than a prefill chunk)."""
    import random

    rng = random.Random(seed)
    return [[rng.randrange(3, vocab) for _ in range(3 + 2 * (i % 20))] for i in range(count)]
