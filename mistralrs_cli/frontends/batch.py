"""`mistralrs batch`: every JSONL line through the engine at once; answers and errors in two files, resumable."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
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


def default_output(input_file: Path) -> Path:
    """INPUT.jsonl -> INPUT.out.jsonl beside it."""
    return input_file.with_name(input_file.stem + ".out.jsonl")


def run_batch(options: BatchOptions, open_engine: Callable[[], Engine]) -> int:
    """Batch mode entry: 0 when all lines succeeded, 1 with error records; RequestError (exit 2) for unusable input."""
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
    engine = open_engine()
    writer, error_log = OutputWriter(output), ErrorLog(errors)
    log = RequestLog(options.log_file) if options.log_file is not None else None
    totals = BatchTotals()
    start = time.perf_counter()
    try:
        asyncio.run(_run(engine, input_file, writer, error_log, done_ids, duplicates, options.sampling,
                         options.max_concurrency, total, totals, log))
        error_log.finish()
    finally:
        writer.close()
        error_log.close()
        engine.shutdown()
        if log is not None:
            log.close()
    elapsed = time.perf_counter() - start
    rate = totals.completion_tokens / elapsed if elapsed else 0.0
    earlier = f" + {totals.skipped} from an earlier run" if totals.skipped else ""
    n_err = f"{totals.errors} error{'' if totals.errors == 1 else 's'}"
    failed = f"{n_err} -> {errors} (a re-run retries them)" if totals.errors else n_err
    err.print(
        f"[bold]batch done[/]: {totals.done} answered{earlier} -> {output}; {failed}; "
        f"{totals.prompt_tokens} prompt + {totals.completion_tokens} completion tokens in {elapsed:.1f} s "
        f"({rate:.1f} tok/s)",
        soft_wrap=True,
    )
    return 1 if totals.errors else 0


async def _run(engine: Engine, input_file: Path, writer: OutputWriter, error_log: ErrorLog, done_ids: set[str],
               duplicates: dict[int, str], defaults: SamplingParams, max_concurrency: int, total: int,
               totals: BatchTotals, log: RequestLog | None = None) -> None:
    sem = asyncio.Semaphore(max_concurrency)
    tasks: set[asyncio.Task] = set()
    start = time.perf_counter()
    columns = (TextColumn("[progress.description]{task.description}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("{task.fields[rate]}"), TimeElapsedColumn(), TimeRemainingColumn())
    with Progress(*columns, console=err, transient=False, disable=not err.is_terminal) as progress:
        bar = progress.add_task("batch", total=total, rate="")

        def finished(record: dict[str, Any], usage: dict[str, int] | None, item: Any = None) -> None:
            if log is not None:
                log.write({"time": now_iso(), "mode": "batch", "line": getattr(item, "line", None),
                           "request": getattr(item, "body", None), "response": record})
            if record["error"] is None:
                writer.write(record)
                totals.done += 1
            else:
                error_log.write(record)
                totals.errors += 1
            if usage:
                totals.prompt_tokens += usage.get("prompt_tokens", 0)
                totals.completion_tokens += usage.get("completion_tokens", 0)
            rate = totals.completion_tokens / max(time.perf_counter() - start, 1e-9)
            progress.update(bar, advance=1, rate=f"{rate:.1f} tok/s")

        for item in iter_input(input_file):
            if item.line in duplicates:
                finished(error_record(item.custom_id, item.line, DUPLICATE, duplicates[item.line]), None, item)
                continue
            if item.custom_id in done_ids:
                totals.skipped += 1
                progress.update(bar, advance=1)
                continue
            if isinstance(item, BatchLineError):
                finished(error_record(item.custom_id, item.line, item.code, item.message), None, item)
                continue
            await sem.acquire()
            task = asyncio.create_task(_answer(engine, item, defaults))
            task.add_done_callback(lambda t, item=item: (sem.release(), finished(*t.result(), item)))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        while tasks:
            await asyncio.gather(*list(tasks))


async def _answer(engine: Engine, item: BatchRequest, defaults: SamplingParams) -> tuple[dict[str, Any], dict | None]:
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
