"""`batch --ray` scaling on this machine: the same batch by one process, 1 Ray worker and 2 Ray workers.

Every run is `mistralrs batch` on the same chat lines (default: the embedded SmolLM2 Q4_1), each
on a local Ray instance of its own (`--ray`), the CPUs split between the workers so that every
run has the whole machine: 1 worker x all CPUs, 2 workers x half. It prints the summary's
throughput (answering only: Ray's start and the model loads are not in it), the wall time of
the whole command, when its first record was on disk, each worker's share, how many answers
equal a one-process run's (greedy), and the machine (CPU count, lscpu model and SIMD flags).
The decode step is eager unless --compile: compiling in the background of every process blurs
short runs on few cores.

With --ray-data it also runs the same lines through Ray Data's `map_batches` over an actor
pool (needs pyarrow and pandas, which the cluster extra does not install), the other way
docs/cluster.md weighs, timed the same way from its process's start.

    python benchmarks/bench_cluster.py --lines 128 --max-tokens 32 --rounds 2 [--ray-data]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench_batch import write_input

SIMD = ("avx", "avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "fma", "f16c", "neon", "sve")


def machine() -> str:
    """CPU count, model name and SIMD flags (lscpu)."""
    info = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
    fields = dict(line.split(":", 1) for line in info.splitlines() if ":" in line)
    model = fields.get("Model name", "?").strip()
    flags = set(fields.get("Flags", "").split())
    return f"{os.cpu_count()} CPUs, {model}, flags: {' '.join(f for f in SIMD if f in flags) or '-'}"


def timed(cmd: list[str], out: Path, what: str) -> tuple[float, float, str]:
    """Run `cmd` to the end: wall seconds, seconds until `out` held its first record, its stderr."""
    start = time.perf_counter()
    with tempfile.TemporaryFile("w+") as stderr:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=stderr, text=True)
        first = None
        while proc.poll() is None:
            if first is None and out.exists() and out.stat().st_size:
                first = time.perf_counter() - start
            time.sleep(0.05)
        wall = time.perf_counter() - start
        stderr.seek(0)
        said = stderr.read()
    if proc.returncode != 0:
        sys.exit(f"{what}: failed ({proc.returncode}): {said.strip()[-800:]}")
    return wall, first or wall, said


def run(src: Path, out: Path, max_tokens: int, flags: list[str], model: list[str], engine: list[str]) -> dict:
    """One `mistralrs batch`: wall seconds, the summary's tok/s and seconds, each worker's share."""
    cmd = [sys.executable, "-m", "mistralrs_cli", *engine, "batch", str(src), "-o", str(out), "--max-tokens",
           str(max_tokens), *flags, *model]
    wall, first, said = timed(cmd, out, " ".join(flags) or "one process")
    summary = re.search(r"tokens in ([\d.]+) s \(([\d.]+) tok/s\)", said)
    served = re.findall(r"worker (\d+) on node \S+ \(id \w+\) (\d+) \(", said)
    return {"wall": wall, "first": first, "seconds": float(summary.group(1)), "rate": float(summary.group(2)),
            "served": [int(n) for _, n in served]}


def same(got: dict[str, str], reference: dict[str, str]) -> str:
    """"61/64": how many lines got the reference's answer."""
    return f"{sum(got.get(k) == v for k, v in reference.items())}/{len(reference)}"


def answers(path: Path) -> dict[str, str]:
    """custom_id -> answer text."""
    out = {}
    for line in path.read_text().splitlines():
        record = json.loads(line)
        choice = record["response"]["body"]["choices"][0]
        out[record["custom_id"]] = choice["message"]["content"] if "message" in choice else choice["text"]
    return out


def ray_data_run(src: Path, out: Path, max_tokens: int, workers: int, cpus: float, batch_size: int,
                 compile_step: bool) -> dict:
    """`ray_data_batch` in a process of its own, timed as the CLI runs are (from the command's start)."""
    cmd = [sys.executable, __file__, "--child-ray-data", str(src), str(out), str(max_tokens), str(workers), str(cpus),
           str(batch_size), "1" if compile_step else "0"]
    wall, first, _ = timed(cmd, out, f"Ray Data, {workers} actor(s)")
    tokens = sum(json.loads(line)["response"]["body"]["usage"]["completion_tokens"]
                 for line in out.read_text().splitlines())
    return {"wall": wall, "first": first, "tokens": tokens}


def ray_data_batch(src: Path, out: Path, max_tokens: int, workers: int, cpus: float, batch_size: int,
                   compile_step: bool) -> None:
    """The same lines through Ray Data map_batches over `workers` engine actors (the embedded model only)."""
    import ray

    from mistralrs_cli.cli.compose import engine_config, engine_factory
    from mistralrs_cli.cli.global_options import GlobalOptions
    from mistralrs_cli.cli.spec import model_spec
    from mistralrs_cli.frontends.batch_io import BatchRequest, iter_input
    from mistralrs_cli.frontends.batch_store import OutputWriter
    from mistralrs_cli.frontends.options import cli_sampling

    spec = model_spec("default")
    config = engine_config(GlobalOptions(compile=None if compile_step else False), spec)
    open_engine = engine_factory(spec, config, spinner=False)
    defaults = cli_sampling(max_tokens=max_tokens)

    class Answer:
        """One engine per actor; each block of lines goes to the engine at once."""

        def __init__(self) -> None:
            from mistralrs_cli.engine.threads import keep_main_thread_serial

            keep_main_thread_serial()
            self.engine = open_engine()

        def __call__(self, block: dict) -> dict:
            from mistralrs_cli.frontends.batch import answer_request

            items = [BatchRequest(int(line), cid, url, json.loads(body))
                     for line, cid, url, body in zip(block["line"], block["custom_id"], block["url"], block["body"], strict=True)]

            async def answer_all() -> list:
                return await asyncio.gather(*(answer_request(self.engine, item, defaults) for item in items))

            return {"record": [json.dumps(record) for record, _ in asyncio.run(answer_all())]}

    ray.init(address="local", include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    try:
        rows = [{"line": i.line, "custom_id": i.custom_id, "url": i.url, "body": json.dumps(i.body)}
                for i in iter_input(src) if isinstance(i, BatchRequest)]
        ray.data.DataContext.get_current().enable_progress_bars = False
        dataset = ray.data.from_items(rows).map_batches(Answer, compute=ray.data.ActorPoolStrategy(size=workers),
                                                        num_cpus=cpus, batch_size=batch_size)
        writer = OutputWriter(out)
        for row in dataset.iter_rows():
            writer.write(json.loads(row["record"]))
        writer.close()
    finally:
        ray.shutdown()


def main() -> None:
    """Run the three configurations (and Ray Data with --ray-data) and print the table."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lines", type=int, default=64)
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--ray-data", action="store_true", help="also Ray Data map_batches (needs pyarrow, pandas)")
    ap.add_argument("--block", type=int, default=16, help="--ray-data: lines per map_batches block")
    ap.add_argument("--rounds", type=int, default=1, help="interleaved rounds; each configuration's best is shown")
    ap.add_argument("--compile", action="store_true", help="the compiled decode step, as the CLI's default (it "
                    "compiles in the background of every process, which blurs short runs on few cores)")
    ap.add_argument("model", nargs="*", help="model subcommand and options (default: the embedded model)")
    ap.add_argument("--child-ray-data", nargs=7, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child_ray_data:
        src, out, max_tokens, workers, per, block, compile_step = args.child_ray_data
        ray_data_batch(Path(src), Path(out), int(max_tokens), int(workers), float(per), int(block), compile_step == "1")
        return
    cpus = os.cpu_count() or 1
    half = max(cpus // 2, 1)
    configs = [("one process (no Ray)", []),
               (f"--ray --workers 1 --cpus-per-worker {cpus}", ["--ray", "--workers", "1", "--cpus-per-worker", str(cpus)]),
               (f"--ray --workers 2 --cpus-per-worker {half}", ["--ray", "--workers", "2", "--cpus-per-worker", str(half)])]
    print(machine())
    print(f"{args.lines} chat lines x up to {args.max_tokens} tokens, {' '.join(args.model) or 'the embedded model'}, "
          f"{'compiled' if args.compile else 'eager'} decode step")
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "in.jsonl"
        write_input(src, args.lines)
        engine = [] if args.compile else ["--no-compile"]
        run(src, Path(tmp) / "warm.jsonl", args.max_tokens, [], args.model, engine)  # the page cache; compiled steps
        reference = answers(Path(tmp) / "warm.jsonl")
        best: dict[str, dict] = {}
        for round_ in range(args.rounds):  # interleaved: a busy moment of a shared machine hits every run alike
            for i, (name, flags) in enumerate(configs):
                out = Path(tmp) / f"out{round_}-{i}.jsonl"
                r = run(src, out, args.max_tokens, flags, args.model, engine)
                r["same"] = same(answers(out), reference)
                if name not in best or r["rate"] > best[name]["rate"]:
                    best[name] = r
            if args.ray_data:
                for workers, per in ((1, cpus), (2, half)):
                    name = f"Ray Data {workers} actor(s) x {per} CPUs, block {args.block}"
                    out = Path(tmp) / f"data{round_}-{workers}.jsonl"
                    r = ray_data_run(src, out, args.max_tokens, workers, per, args.block, args.compile)
                    r["same"] = same(answers(out), reference)
                    if name not in best or r["wall"] < best[name]["wall"]:
                        best[name] = r
    print(f"best of {args.rounds} round(s); same: answers equal to a one-process warm-up run's (greedy)")
    for name, r in best.items():
        rate = f"{r['rate']:7.1f} tok/s over {r['seconds']:5.1f} s" if "rate" in r else f"{r['tokens']:5d} tokens{'':15s}"
        share = f"  served {'/'.join(map(str, r['served']))}" if r.get("served") else ""
        print(f"{name:42s} {rate}  wall {r['wall']:5.1f} s  first answer on disk after {r['first']:5.1f} s  "
              f"same: {r['same']}{share}")


if __name__ == "__main__":
    main()
