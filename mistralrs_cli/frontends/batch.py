"""`mistralrs batch`: every JSONL line through the engine at once; answers and errors in two files, resumable.

The reading, checking and writing parts (`plan_batch`, `runnable`, `Recorder`, `answer_request`,
`summary_line`) are shared with `batch --ray` (frontends/cluster_batch.py), so both modes write the
same records the same way.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from mistralrs_cli.engine import Engine, SamplingParams
from mistralrs_cli.errors import MistralrsError, RequestError
from mistralrs_cli.frontends.batch_io import (
    DUPLICATE,
    BatchLineError,
    BatchRequest,
    error_record,
    find_duplicates,
    iter_input,
    success_record,
)
from mistralrs_cli.frontends.batch_store import ErrorLog, OutputWriter, errors_path, load_answered
from mistralrs_cli.frontends.openai_convert import (
    chat_response,
    completion_response,
    submit_chat,
    submit_completions,
    xlora_field,
)
from mistralrs_cli.frontends.openai_types import (
    ChatCompletionRequest,
    CompletionRequest,
    validation_message,
)
from mistralrs_cli.frontends.options import BatchOptions
from mistralrs_cli.frontends.request_log import RequestLog, now_iso

err = Console(stderr=True, highlight=False)


@dataclass
class BatchTotals:
    """What the summary line reports."""

    done: int = 0
    errors: int = 0
    skipped: int = 0  # answered by an earlier run
    prompt_tokens: int = 0
    completion_tokens: int = 0


@dataclass(frozen=True)
class BatchPlan:
    """What the checks before the run found: the files, the lines answered earlier, the repeated custom_ids."""

    input_file: Path
    output: Path
    errors: Path
    done_ids: set[str]
    duplicates: dict[int, str]
    total: int


def default_output(input_file: Path) -> Path:
    """INPUT.jsonl -> INPUT.out.jsonl beside it."""
    return input_file.with_name(input_file.stem + ".out.jsonl")


def plan_batch(options: BatchOptions) -> BatchPlan:
    """Check the input and output files and read what an earlier run answered; RequestError (exit 2) for unusable input."""
    input_file = options.input_file
    if not input_file.is_file():
        raise RequestError(f"batch input {input_file}: no such file")
    output = options.output or default_output(input_file)
    errors = errors_path(output)
    if input_file.resolve() in (output.resolve(), errors.resolve()):
        raise RequestError(f"the output files ({output}, {errors}) must differ from the input file")
    done_ids = load_answered(output)
    duplicates = find_duplicates(input_file)
    total = sum(1 for _ in iter_input(input_file))
    return BatchPlan(input_file, output, errors, done_ids, duplicates, total)


class Recorder:
    """Writes each finished line (answers, errors, the --log line) and counts it; `on_record` sees every line."""

    def __init__(self, plan: BatchPlan, log_file: Path | None) -> None:
        self.writer, self.error_log = OutputWriter(plan.output), ErrorLog(plan.errors)
        self.log = RequestLog(log_file) if log_file is not None else None
        self.totals = BatchTotals()
        self.on_record: Callable[[], None] = lambda: None

    def finished(self, record: dict[str, Any], usage: dict[str, int] | None, item: Any = None) -> None:
        """Write one record: an answer to OUTPUT (fsync'd), an error to the errors file."""
        totals = self.totals
        if self.log is not None:
            self.log.write({"time": now_iso(), "mode": "batch", "line": getattr(item, "line", None),
                            "request": getattr(item, "body", None), "response": record})
        if record["error"] is None:
            self.writer.write(record)
            totals.done += 1
        else:
            self.error_log.write(record)
            totals.errors += 1
        if usage:
            totals.prompt_tokens += usage.get("prompt_tokens", 0)
            totals.completion_tokens += usage.get("completion_tokens", 0)
        self.on_record()

    def complete(self) -> None:
        """The run completed: the errors file keeps only the errors that still stand."""
        self.error_log.finish()

    def close(self) -> None:
        """Close the files (after `complete`, or after an interruption, keeping what was written)."""
        self.writer.close()
        self.error_log.close()
        if self.log is not None:
            self.log.close()


def runnable(plan: BatchPlan, recorder: Recorder, skipped: Callable[[], None]) -> Iterator[BatchRequest]:
    """Stream the input: repeated custom_ids and bad lines become error records, lines answered earlier are
    skipped (`skipped` is told); the requests left to run are yielded in input order."""
    for item in iter_input(plan.input_file):
        if item.line in plan.duplicates:
            recorder.finished(error_record(item.custom_id, item.line, DUPLICATE, plan.duplicates[item.line]), None, item)
            continue
        if item.custom_id in plan.done_ids:
            recorder.totals.skipped += 1
            skipped()
            continue
        if isinstance(item, BatchLineError):
            recorder.finished(error_record(item.custom_id, item.line, item.code, item.message), None, item)
            continue
        yield item


def summary_line(totals: BatchTotals, plan: BatchPlan, elapsed: float) -> str:
    """`batch done: ...`: answered, earlier, errors, tokens and throughput."""
    rate = totals.completion_tokens / elapsed if elapsed else 0.0
    earlier = f" + {totals.skipped} from an earlier run" if totals.skipped else ""
    n_err = f"{totals.errors} error{'' if totals.errors == 1 else 's'}"
    failed = f"{n_err} -> {plan.errors} (a re-run retries them)" if totals.errors else n_err
    return (f"[bold]batch done[/]: {totals.done} answered{earlier} -> {plan.output}; {failed}; "
            f"{totals.prompt_tokens} prompt + {totals.completion_tokens} completion tokens in {elapsed:.1f} s "
            f"({rate:.1f} tok/s)")


def run_batch(options: BatchOptions, open_engine: Callable[[], Engine]) -> int:
    """Batch mode entry: 0 when all lines succeeded, 1 with error records; RequestError (exit 2) for unusable input."""
    plan = plan_batch(options)
    engine = open_engine()
    recorder = Recorder(plan, options.log_file)
    start = time.perf_counter()
    try:
        asyncio.run(_run(engine, plan, recorder, options.sampling, options.max_concurrency))
        recorder.complete()
    finally:
        recorder.close()
        engine.shutdown()
    elapsed = time.perf_counter() - start
    err.print(summary_line(recorder.totals, plan, elapsed), soft_wrap=True)
    return 1 if recorder.totals.errors else 0


async def _run(engine: Engine, plan: BatchPlan, recorder: Recorder, defaults: SamplingParams,
               max_concurrency: int) -> None:
    sem = asyncio.Semaphore(max_concurrency)
    tasks: set[asyncio.Task] = set()
    start = time.perf_counter()
    totals = recorder.totals
    columns = (TextColumn("[progress.description]{task.description}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("{task.fields[rate]}"), TimeElapsedColumn(), TimeRemainingColumn())
    with Progress(*columns, console=err, transient=False, disable=not err.is_terminal) as progress:
        bar = progress.add_task("batch", total=plan.total, rate="")

        def advance() -> None:
            rate = totals.completion_tokens / max(time.perf_counter() - start, 1e-9)
            progress.update(bar, advance=1, rate=f"{rate:.1f} tok/s")

        recorder.on_record = advance
        for item in runnable(plan, recorder, lambda: progress.update(bar, advance=1)):
            await sem.acquire()
            task = asyncio.create_task(answer_request(engine, item, defaults))
            task.add_done_callback(lambda t, item=item: (sem.release(), recorder.finished(*t.result(), item)))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        while tasks:
            await asyncio.gather(*list(tasks))


async def answer_request(engine: Engine, item: BatchRequest, defaults: SamplingParams) -> tuple[dict[str, Any], dict | None]:
    """Run one request (its fields over the command line's `defaults`); every failure becomes an error record."""
    model = engine.loaded.name
    try:
        if item.url == "/v1/chat/completions":
            req = ChatCompletionRequest.model_validate({**item.body, "stream": False})
            job = submit_chat(engine, req, defaults)
            out = await job.stream.aresult()
            outs = [out]
            body = chat_response(out, model, xlora_field(engine, [out]) if req.xlora_scalings else None, job.tools)
        else:
            creq = CompletionRequest.model_validate({**item.body, "stream": False})
            outs = [await s.aresult() for s in submit_completions(engine, creq, defaults)]
            body = completion_response(outs, model)
            if creq.xlora_scalings:
                body.update(xlora_field(engine, outs))
    except ValidationError as e:
        message, _ = validation_message(e)
        return error_record(item.custom_id, item.line, "invalid_request", f"line {item.line}: {message}"), None
    except MistralrsError as e:
        return error_record(item.custom_id, item.line, "invalid_request", f"line {item.line}: {e.message}"), None
    failed = [c.error for o in outs for c in o.choices if c.finish_reason == "error"]
    if failed:  # the model produced non-finite logits: an error record, never a garbage answer
        return error_record(item.custom_id, item.line, "server_error", f"line {item.line}: {failed[0]}"), None
    return success_record(item.custom_id, body), body.get("usage")


_answer = answer_request  # the name tests/engine/test_nan_guard.py imports
