"""Cost of constrained decoding in the engine: 32 JSON-Schema-constrained requests vs 32 free ones.

    python benchmarks/bench_guided.py                 # the default model, compiled step, batch 32
    python benchmarks/bench_guided.py --eager --batch 1 --rounds 3

Both runs decode the same prompts for --tokens tokens at the same batch size (the free run
ignores end-of-sequence, the constrained one asks for an array too long to finish), so every
step has the same rows. It reports the decode step time of each, and inside the constrained
run the time spent filling the grammar bitmasks (llguidance) and applying them to the logits,
as a share of the step. Rounds alternate free and constrained; the best of each is kept.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from mistralrs_cli.cli.compose import build_model
from mistralrs_cli.cli.spec import model_spec
from mistralrs_cli.engine import Engine, EngineConfig, Guide, SamplingParams, sampling

PERSON = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 40},
                                           "age": {"type": "integer", "minimum": 0, "maximum": 120},
                                           "city": {"type": "string", "maxLength": 40}},
          "required": ["name", "age", "city"]}
LONG = {"type": "array", "items": PERSON, "minItems": 200}  # never finishes within --tokens


class MaskTimer:
    """Wraps the engine's mask fill and apply to add up their time (run in the engine thread)."""

    def __init__(self, engine: Engine) -> None:
        self.fill = self.apply = 0.0
        masks = engine.core.masks
        fill, apply = masks.bitmask, sampling.apply_bitmask

        def timed_fill(*args: Any) -> Any:
            t = time.perf_counter()
            out = fill(*args)
            self.fill += time.perf_counter() - t
            return out

        def timed_apply(*args: Any) -> Any:
            t = time.perf_counter()
            out = apply(*args)
            self.apply += time.perf_counter() - t
            return out

        masks.bitmask = timed_fill  # type: ignore[method-assign]
        sampling.apply_bitmask = timed_apply

    def reset(self) -> None:
        self.fill = self.apply = 0.0


def run(engine: Engine, batch: int, tokens: int, guided: bool) -> tuple[float, int]:
    """(seconds from the first token of every request to the last, decode steps in that span)."""
    ask = [{"role": "user", "content": "List people as JSON: name, age and city of each."}]
    guide = Guide("json_schema", LONG) if guided else None
    params = SamplingParams(max_tokens=tokens, temperature=0.0, ignore_eos=not guided, guide=guide)
    streams = [engine.submit(messages=ask, params=params) for _ in range(batch)]

    def watch(stream: Any) -> tuple[float, float]:
        first, count, finish = 0.0, 0, None
        for delta in stream:
            first = first or time.perf_counter()
            count += len(delta.token_ids)
            finish = delta.finish_reason or finish
        assert finish == "length" and count == tokens, (finish, count)  # every step had all rows
        return first, time.perf_counter()

    with ThreadPoolExecutor(len(streams)) as pool:
        spans = list(pool.map(watch, streams))
    firsts, lasts = [f for f, _ in spans], [last for _, last in spans]
    return max(lasts) - max(firsts), tokens - 1


def cpu_line() -> str:
    out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    name = next((x.split(":", 1)[1].strip() for x in out.splitlines() if x.startswith("Model name")), "?")
    flags = next((x.split(":", 1)[1].split() for x in out.splitlines() if x.startswith("Flags")), [])
    wide = sorted(f for f in flags if f.startswith(("avx512", "amx")) or f == "avx2")
    return f"{name}, {os.cpu_count()} cores, {' '.join(wide)}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--tokens", type=int, default=48)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--eager", action="store_true", help="the eager step instead of the compiled one")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    loaded = build_model(model_spec("default"))
    engine = Engine(loaded, EngineConfig(max_seqs=args.batch, compile=not args.eager))
    timer = MaskTimer(engine)
    for b in sorted({1, 2, 4, 8, 16, 32, args.batch} & set(range(1, args.batch + 1))):  # meet every bucket
        run(engine, b, 4, False)
    engine.wait_compiled()
    best: dict[str, float] = {}
    masks = []
    for _ in range(args.rounds):
        for guided in (False, True):
            timer.reset()
            seconds, steps = run(engine, args.batch, args.tokens, guided)
            key = "guided" if guided else "free"
            step = seconds / steps
            if step < best.get(key, float("inf")):
                best[key] = step
                if guided:
                    masks = [timer.fill / steps, timer.apply / steps]
    engine.shutdown()
    result = {
        "cpu": cpu_line(), "batch": args.batch, "tokens": args.tokens, "compiled": not args.eager,
        "free_step_ms": 1e3 * best["free"], "guided_step_ms": 1e3 * best["guided"],
        "mask_fill_ms": 1e3 * masks[0], "mask_apply_ms": 1e3 * masks[1],
    }
    result["mask_share_of_step"] = (masks[0] + masks[1]) / best["guided"]
    result["guided_over_free"] = best["guided"] / best["free"]
    if args.json:
        print(json.dumps(result))
        return
    print(f"cpu: {result['cpu']}; batch {args.batch}, {args.tokens} tokens, "
          f"{'compiled' if result['compiled'] else 'eager'} step, best of {args.rounds}")
    print(f"decode step: free {result['free_step_ms']:.1f} ms, constrained {result['guided_step_ms']:.1f} ms "
          f"({result['guided_over_free']:.3f}x)")
    print(f"mask per step: fill {result['mask_fill_ms']:.2f} ms + apply {result['mask_apply_ms']:.2f} ms "
          f"= {100 * result['mask_share_of_step']:.1f}% of the constrained step")


if __name__ == "__main__":
    main()
