"""`mistralrs bench` on a random SmolLM2-135M-shaped model: engine speed without downloading weights.

    python benchmarks/bench_random.py [concurrency tokens prompt_len]
"""

from __future__ import annotations

import sys

from mistralrs_cli.engine import Engine, EngineConfig
from mistralrs_cli.engine.threads import keep_main_thread_serial
from mistralrs_cli.frontends.bench import run_bench
from mistralrs_cli.frontends.options import BenchOptions
from mistralrs_cli.loading.random_model import random_model


def main() -> None:
    """Run the bench on the random model and print its table and JSON."""
    keep_main_thread_serial()
    names = ("concurrency", "tokens", "prompt_len")
    options = BenchOptions(json_out=True, **dict(zip(names, (int(a) for a in sys.argv[1:4]), strict=False)))
    run_bench(options, lambda: Engine(random_model(), EngineConfig(max_seqs=max(options.concurrency, 1))))


if __name__ == "__main__":
    main()
