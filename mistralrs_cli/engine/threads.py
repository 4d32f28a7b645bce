"""CPU threads: torch's OpenMP worker pool should belong to the engine thread alone.

libgomp gives every thread that runs parallel torch ops a pool of its own. If the main
thread built one while loading the model, the engine thread's pool makes more workers
than cores; libgomp then stops spinning between parallel regions and every one of the
~450 small ops of a decode step pays a wake-up. Measured on 2 cores with the default
model: 15.6 ms per batch-1 decode step from the engine thread, 8.8 ms when the main thread
runs its torch ops serially. Call `keep_main_thread_serial()` at startup, before loading.
"""

from __future__ import annotations

import torch

_engine_threads: int | None = None


def keep_main_thread_serial() -> None:
    """Run the calling (main) thread's torch ops on one thread and keep the rest for the engine.

    Must run before the first parallel torch op in this thread (i.e. before loading a model);
    later calls do nothing.
    """
    global _engine_threads
    if _engine_threads is None:
        _engine_threads = torch.get_num_threads()
        torch.set_num_threads(1)


def engine_threads(configured: int | None) -> int:
    """Threads for the engine thread's torch ops: configured, else what the process had."""
    return configured or _engine_threads or torch.get_num_threads()
