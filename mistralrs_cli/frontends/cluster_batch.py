"""`mistralrs batch IN.jsonl --ray [ADDRESS] --workers N`: the same batch, answered by N engines on a Ray cluster.

The input is read and checked exactly as on one machine (frontends/batch.py: bad lines and
repeated custom_ids become error records, answered custom_ids are skipped), and this process,
the driver, writes every record with the same one-line-write-plus-fsync writer, so resuming
and `kill -9` hold as they do on one machine. The workers (cluster_batch_pool.py) only answer:
the driver keeps up to --max-concurrency lines in flight on each, least busy first, so each
engine batches continuously. A line whose worker dies goes to another (at most
MAX_ATTEMPTS tries); since only an answer that arrives is written, none is written twice.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any

from rich.markup import escape
from rich.progress import (
    BarColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from mistralrs_cli.engine import Engine, SamplingParams
from mistralrs_cli.frontends.batch import (
    BatchPlan,
    Recorder,
    err,
    plan_batch,
    runnable,
    summary_line,
)
from mistralrs_cli.frontends.batch_io import BatchRequest, error_record
from mistralrs_cli.frontends.cluster_batch_options import BatchCluster
from mistralrs_cli.frontends.cluster_batch_pool import SlotStats, WorkerLost, WorkerPool
from mistralrs_cli.frontends.cluster_connect import (
    ClusterError,
    connect,
    first_line,
    require_ray,
    wait_for_room,
)
from mistralrs_cli.frontends.options import BatchOptions

MAX_ATTEMPTS = 3  # tries of one line whose workers keep dying; then it is an error record (a re-run retries it)


def run_cluster_batch(options: BatchOptions, open_engine: Callable[[], Engine]) -> int:
    """Batch on Ray: 0 when every line has an answer, 1 with error records, ClusterError/RequestError (exit 2)."""
    cluster = options.cluster
    assert cluster is not None, "run_cluster_batch needs BatchOptions.cluster"
    plan = plan_batch(options)  # bad input fails before Ray starts
    require_ray()
    connection = connect(cluster)
    try:
        wait_for_room(cluster)
        err.print(f"batch on {connection.describe()}: {cluster.workers} worker{'' if cluster.workers == 1 else 's'} "
                  f"of {cluster.describe()} each, loading the model...", highlight=False, soft_wrap=True)
        return asyncio.run(_run(options, cluster, plan, open_engine))
    finally:
        connection.close()


async def _run(options: BatchOptions, cluster: BatchCluster, plan: BatchPlan,
               open_engine: Callable[[], Engine]) -> int:
    pool = WorkerPool(cluster, open_engine, options.max_concurrency, _notify)
    try:
        await pool.start()
        recorder = Recorder(plan, options.log_file)
        start = time.perf_counter()
        try:
            with ClusterProgress(plan.total, pool.slots) as progress:
                recorder.on_record = lambda: progress.advance(recorder.totals.completion_tokens)
                lines = runnable(plan, recorder, lambda: progress.advance(recorder.totals.completion_tokens))
                await _drive(pool, lines, recorder, options.sampling, progress)
            recorder.complete()
        finally:
            recorder.close()
    finally:
        pool.stop()
    elapsed = time.perf_counter() - start
    err.print(summary_line(recorder.totals, plan, elapsed) + "; " + per_worker(pool.slots, elapsed), soft_wrap=True)
    return 1 if recorder.totals.errors else 0


async def _drive(pool: WorkerPool, lines: Iterator[BatchRequest], recorder: Recorder, defaults: SamplingParams,
                 progress: ClusterProgress) -> None:
    """Keep every live worker full until each line is written; lines of a lost worker are sent again."""
    retry: deque[tuple[BatchRequest, int]] = deque()  # (line, tries so far)
    running: dict[asyncio.Task, tuple[BatchRequest, int]] = {}
    exhausted = False
    while True:
        while (worker := pool.pick()) is not None and (retry or not exhausted):
            if retry:
                item, tries = retry.popleft()
            else:
                next_item = next(lines, None)
                if next_item is None:
                    exhausted = True
                    break
                item, tries = next_item, 0
            running[pool.send(worker, item, defaults)] = (item, tries)
        if exhausted and not retry and not running:
            return
        if not running and not pool.starting:
            retired = "; ".join(f"{s.label()}: {s.retired}" for s in pool.slots if s.retired)
            raise ClusterError(f"every worker is gone ({retired}); {len(retry)} or more lines are unanswered "
                               "(a re-run resumes)")
        done, _ = await asyncio.wait(set(running) | pool.starting, return_when=asyncio.FIRST_COMPLETED)
        for task in done:
            if task not in running:
                continue  # a replacement came up (or gave up): the next round sees it
            item, tries = running.pop(task)
            try:
                record, usage = task.result()
            except WorkerLost as lost:
                pool.lost(lost.worker, lost.reason)
                if tries + 1 < MAX_ATTEMPTS:
                    retry.append((item, tries + 1))
                else:
                    recorder.finished(error_record(item.custom_id, item.line, "server_error",
                                                   f"line {item.line}: {MAX_ATTEMPTS} workers died answering it "
                                                   f"(the last: {lost.worker.stats.label()})"), None, item)
                continue
            except Exception as e:  # the worker raised (not a line's own error, which is a record): say so
                record, usage = error_record(item.custom_id, item.line, "server_error",
                                             f"line {item.line}: {first_line(e)}"), None
            recorder.finished(record, usage, item)
        progress.show_workers()


def per_worker(slots: list[SlotStats], elapsed: float) -> str:
    """`served per worker: worker 1 on node ... 21 (48.0 tok/s), ...` for the summary line."""
    parts = []
    for s in slots:
        rate = s.completion_tokens / elapsed if elapsed else 0.0
        notes = [f"{rate:.1f} tok/s"]
        if s.restarts:
            notes.append(f"replaced {s.restarts}x")
        if s.retired:
            notes.append(f"gone: {s.retired}")
        parts.append(f"{s.label()} {s.served} ({', '.join(notes)})")
    return "served per worker: " + ", ".join(parts)


def _notify(line: str) -> None:
    err.print(f"[dim]{escape(line)}[/]", highlight=False, soft_wrap=True)


class ClusterProgress:
    """The batch bar (done/total, tokens/s, ETA) and a row per worker (requests served, its tokens/s)."""

    def __init__(self, total: int, slots: list[SlotStats]) -> None:
        columns = (TextColumn("[progress.description]{task.description}"), BarColumn(),
                   TextColumn("{task.fields[count]}"), TextColumn("{task.fields[rate]}"), TimeElapsedColumn(),
                   TimeRemainingColumn())
        self.progress = Progress(*columns, console=err, transient=False, disable=not err.is_terminal)
        self.total, self.slots, self.done = total, slots, 0
        self.bar = self.progress.add_task("batch", total=total, count=f"0/{total}", rate="")
        self.rows: dict[int, TaskID] = {
            s.slot: self.progress.add_task(f"  worker {s.slot}", total=None, count="", rate="") for s in slots}
        self.start = time.perf_counter()

    def __enter__(self) -> ClusterProgress:
        self.progress.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.show_workers()
        self.progress.__exit__(*exc)

    def advance(self, completion_tokens: int) -> None:
        """One more line written (or skipped)."""
        self.done += 1
        rate = completion_tokens / max(time.perf_counter() - self.start, 1e-9)
        self.progress.update(self.bar, advance=1, count=f"{self.done}/{self.total}", rate=f"{rate:.1f} tok/s")

    def show_workers(self) -> None:
        """Each worker's row: where it runs, how many lines it served, its tokens/s."""
        elapsed = max(time.perf_counter() - self.start, 1e-9)
        for s in self.slots:
            where = f" {s.place.node_ip}" if s.place else ""
            state = " (gone)" if s.retired else ""
            self.progress.update(self.rows[s.slot], description=f"  worker {s.slot}{where}{state}",
                                 count=f"{s.served} served", rate=f"{s.completion_tokens / elapsed:.1f} tok/s")
