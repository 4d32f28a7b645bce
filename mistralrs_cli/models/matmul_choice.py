"""Which candidate matmul (models/matmul_candidates.py) each quantized linear uses on this CPU.

Per weight shape (K in, N out) and per batch bucket ("small": M < LARGE_M rows, decode of a few
sequences; "large": M >= LARGE_M, batched decode and prefill) the fastest *eligible* candidate
wins, where timings come from, first hit wins:
  1. `MISTRALRS_MATMUL=<candidate>` forces one candidate everywhere (for measuring);
  2. `MEASURED`, tables checked in below, keyed by the machine (torch's CPU capability + the
     CPU flags that change which kernel is fast);
  3. a cache file written by `calibrate()` (a micro-benchmark, never run at load):
     `$MISTRALRS_CACHE/matmul/<capability>-<flags hash>.json` (default ~/.cache/mistralrs);
  4. otherwise int4 everywhere (today's path: exact to the GGUF, no second copy).
A candidate other than int4 costs a second copy of the weight, so it must beat int4 by `MARGIN`.
Eligibility is the accuracy gate: a candidate's relative error on the default model's real
weights (`REL_ERROR`, measured) must stay within `MAX_REL_ERROR`, the largest error among
formats whose teacher-forced check on the real model passed (top-1 >= 95%, mean |dlogit| < 0.12).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from mistralrs_cli.models.matmul_candidates import CANDIDATES, Candidate

DEFAULT = "int4"
LARGE_M = 8  # rows from which the "large" bucket applies
PROBE_M = {"small": 1, "large": 32}  # rows timed for each bucket
MARGIN = 1.3  # a second weight copy must be at least this much faster than int4
ENV = "MISTRALRS_MATMUL"
# Flags that change which kernel torch/oneDNN/fbgemm run (a machine key is capability + these).
FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "avx_vnni", "amx_tile", "amx_int8", "amx_bf16")

# Relative error ||y - y_exact|| / ||y_exact|| of each candidate over the default model's 211
# quantized linears with real activations (benchmarks/bench_kernels.py --cpu-matmul --errors).
# The gate sits between the formats whose teacher-forced check on the real model passed and
# those that failed (tests/models/test_matmul_choice.py, slow; max / mean |dlogit| / top-1):
#   int4 0.51 / 0.060 / 98.4% and bf16 0.61 / 0.069 / 95.3% pass;
#   numba-q4q8 1.04 / 0.158 / 98.4% (llama.cpp's own figures on this model: 0.97 / 0.158 / 95.3%),
#   int8 1.32 / 0.202 / 93.8% and dyn-int8 17.9 / 3.99 / 68.8% fail.
# Relative error alone does not order them (numba's 3.4e-3 fails where bf16's 2.3e-3 passes), so
# the threshold is set from the real-model check, not from first principles.
REL_ERROR: dict[str, float] = {
    "int4": 2.3e-3,
    "bf16": 2.3e-3,
    "numba-q4q8": 3.4e-3,
    "int8": 8.1e-3,
    "dyn-int8-fbgemm": 3.8e-2,
    "dyn-int8-onednn": 3.8e-2,
}
MAX_REL_ERROR = 3e-3

Timings = dict[str, dict[str, dict[str, float]]]  # "KxN" -> bucket -> candidate -> microseconds

# Measured tables (µs, 2 threads, weights cycled out of cache, best of N): see docs/performance.md,
# "Matmul per shape on this CPU". Keyed by `Machine.key()`.
MEASURED: dict[str, Timings] = {
    # AMD EPYC (Zen 4 class: avx512f/bw/vl/vnni/bf16, no AMX), 2 threads, 2026-12, bench_kernels.py.
    "AVX512-avx2+avx512_bf16+avx512_vnni+avx512f": {
        "576x576": {
            "small": {"int4": 22, "int8": 33, "dyn-int8-fbgemm": 28, "dyn-int8-onednn": 50, "bf16": 74, "numba-q4q8": 93},
            "large": {"int4": 142, "int8": 180, "dyn-int8-fbgemm": 55, "dyn-int8-onednn": 95, "bf16": 125, "numba-q4q8": 2585},
        },
        "576x1536": {
            "small": {"int4": 42, "int8": 72, "dyn-int8-fbgemm": 44, "dyn-int8-onednn": 77, "bf16": 167, "numba-q4q8": 235},
            "large": {"int4": 358, "int8": 473, "dyn-int8-fbgemm": 113, "dyn-int8-onednn": 149, "bf16": 259, "numba-q4q8": 6902},
        },
        "1536x576": {
            "small": {"int4": 45, "int8": 60, "dyn-int8-fbgemm": 41, "dyn-int8-onednn": 76, "bf16": 136, "numba-q4q8": 235},
            "large": {"int4": 359, "int8": 416, "dyn-int8-fbgemm": 110, "dyn-int8-onednn": 199, "bf16": 291, "numba-q4q8": 15375},
        },
        "576x960": {
            "small": {"int4": 29, "int8": 48, "dyn-int8-fbgemm": 37, "dyn-int8-onednn": 60, "bf16": 107, "numba-q4q8": 150},
            "large": {"int4": 233, "int8": 298, "dyn-int8-fbgemm": 80, "dyn-int8-onednn": 119, "bf16": 189, "numba-q4q8": 4380},
        },
        "576x3072": {
            "small": {"int4": 79, "int8": 150, "dyn-int8-fbgemm": 80, "dyn-int8-onednn": 132, "bf16": 338, "numba-q4q8": 563},
            "large": {"int4": 778, "int8": 1039, "dyn-int8-fbgemm": 203, "dyn-int8-onednn": 274, "bf16": 500, "numba-q4q8": 20464},
        },
        "576x49152": {
            "small": {"int4": 2402, "int8": 2632, "dyn-int8-fbgemm": 910, "dyn-int8-onednn": 1338, "bf16": 4993, "numba-q4q8": 22262},
            "large": {"int4": 24278, "int8": 22980, "dyn-int8-fbgemm": 3790, "dyn-int8-onednn": 4023, "bf16": 8134, "numba-q4q8": 493524},
        },
    },
}


@dataclass(frozen=True)
class Machine:
    """What decides kernel speed: torch's dispatch capability and a few CPU flags."""

    capability: str
    flags: frozenset[str]

    def key(self) -> str:
        return f"{self.capability}-{'+'.join(sorted(self.flags)) or 'none'}"

    def file_name(self) -> str:
        digest = hashlib.sha256(",".join(sorted(self.flags)).encode()).hexdigest()[:12]
        return f"{self.capability}-{digest}.json"


def this_machine() -> Machine:
    """The machine this process runs on (reads /proc/cpuinfo where it exists)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        text = ""
    line = next((ln for ln in text.splitlines() if ln.startswith("flags")), "")
    present = set(line.partition(":")[2].split())
    return Machine(torch.backends.cpu.get_cpu_capability(), frozenset(f for f in FLAGS if f in present))


def eligible(name: str) -> bool:
    """Whether candidate `name` passes the accuracy gate."""
    return REL_ERROR.get(name, float("inf")) <= MAX_REL_ERROR


def fastest(timings: dict[str, float], margin: float = MARGIN) -> str:
    """The fastest eligible candidate of one (shape, bucket), int4 unless another wins by `margin`."""
    ok = {name: t for name, t in timings.items() if eligible(name) and name in CANDIDATES}
    if not ok:
        return DEFAULT
    best = min(ok, key=ok.__getitem__)
    if DEFAULT in ok and ok[best] * margin > ok[DEFAULT]:
        return DEFAULT
    return best


def shape_key(k: int, n: int) -> str:
    return f"{k}x{n}"


@dataclass
class Choice:
    """The candidate per shape and bucket, and where the timings came from."""

    machine: Machine
    source: str  # "forced" | "table" | "cache" | "default"
    timings: Timings = field(default_factory=dict)
    forced: str | None = None

    def pick(self, k: int, n: int, bucket: str) -> str:
        """The candidate for a (K, N) weight at `bucket`; int4 for shapes never timed."""
        if self.forced:
            return self.forced
        per_bucket = self.timings.get(shape_key(k, n), {})
        return fastest(per_bucket[bucket]) if bucket in per_bucket else DEFAULT

    def describe(self, shapes: Iterable[tuple[int, int]] = ()) -> str:
        """One line for `bench` and logs, e.g. "int4 everywhere (table AVX512-...)"."""
        picks = {
            f"{shape_key(k, n)} M{'<' if b == 'small' else '>='}{LARGE_M}": self.pick(k, n, b)
            for k, n in shapes
            for b in PROBE_M
        }
        others = {where: name for where, name in picks.items() if name != DEFAULT}
        what = (
            f"{self.forced} everywhere"
            if self.forced
            else ", ".join(f"{name} at {where}" for where, name in others.items()) + ", int4 elsewhere"
            if others
            else "int4 everywhere"
        )
        return f"{what} ({self.source} {self.machine.key()})"


def cache_path(machine: Machine) -> Path:
    """Where `calibrate` stores its timings for this machine."""
    env = os.environ.get("MISTRALRS_CACHE")
    root = Path(env).expanduser() if env else Path.home() / ".cache" / "mistralrs"
    return root / "matmul" / machine.file_name()


def _read_cache(path: Path, machine: Machine) -> Timings | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    same = data.get("machine") == machine.key() and data.get("torch") == torch.__version__
    timings = data.get("timings")
    return timings if same and isinstance(timings, dict) else None


def choose(
    machine: Machine | None = None,
    table: dict[str, Timings] | None = None,
    cache: Path | None = None,
    env: dict[str, str] | None = None,
) -> Choice:
    """The choice for this machine, from the forced name, the checked-in table or the cache (cheap:
    reads /proc/cpuinfo and at most one small JSON file; never benchmarks)."""
    machine = machine or this_machine()
    forced = (os.environ if env is None else env).get(ENV, "").strip()
    if forced:
        if forced not in CANDIDATES:
            raise ValueError(f"{ENV}={forced}: not a matmul candidate (one of {', '.join(CANDIDATES)})")
        return Choice(machine, "forced", forced=forced)
    table = MEASURED if table is None else table
    if machine.key() in table:
        return Choice(machine, "table", table[machine.key()])
    cached = _read_cache(cache or cache_path(machine), machine)
    if cached is not None:
        return Choice(machine, "cache", cached)
    return Choice(machine, "default")


def time_calls(calls: dict[str, list[Callable[[], object]]], rounds: int) -> dict[str, float]:
    """Microseconds per call of each named function list: the fastest single call over `rounds`
    passes, names interleaved pass by pass.

    Each list holds calls on distinct copies of the weights (enough to overflow the caches), so
    every timed call reads its weights from memory, as in a real step. The minimum per call, not
    the mean of a pass, because on a shared machine a pass of hundreds of calls is always
    preempted somewhere.
    """
    best = {name: float("inf") for name in calls}
    for fns in calls.values():
        fns[0]()  # warm-up: first-call allocations, numba compile
    for _ in range(rounds):
        for name, fns in calls.items():
            for fn in fns:
                start = time.perf_counter()
                fn()
                best[name] = min(best[name], time.perf_counter() - start)
    return {name: t * 1e6 for name, t in best.items()}


def copies_for(nbytes: int, cycle_bytes: int = 64 << 20, most: int = 256) -> int:
    """How many copies of a weight of `nbytes` make a cycle larger than the caches."""
    return max(2, min(most, -(-cycle_bytes // max(nbytes, 1))))


def measure_shape(
    k: int,
    n: int,
    names: Iterable[str],
    rounds: int = 5,
    terms: int = 1,
    rows: dict[str, int] | None = None,
    cycle_bytes: int = 64 << 20,
) -> dict[str, dict[str, float]]:
    """Time each candidate on a (K, N) weight of `terms` int4 terms at each bucket's probe M
    (`rows`, default `PROBE_M`): bucket -> name -> µs per call."""
    from mistralrs_cli.models.matmul_candidates import prepare

    per_copy = {DEFAULT: terms * (k * n // 2 + 4 * k * n // 32), "bf16": 2 * k * n}
    prepared: dict[str, list[Candidate]] = {}
    for name in names:
        count = copies_for(per_copy.get(name, k * n), cycle_bytes)
        prepared[name] = [prepare(name, random_int4_layer(k, n, seed, terms)) for seed in range(count)]
    out: dict[str, dict[str, float]] = {}
    for bucket, m in (rows or PROBE_M).items():
        x = torch.randn(m, k)
        calls = {name: [lambda c=c, x=x: c.matmul(x) for c in cands] for name, cands in prepared.items()}
        out[bucket] = time_calls(calls, rounds)
    return out


def random_int4_layer(k: int, n: int, seed: int, terms: int = 1):
    """An Int4Linear of random 4-bit codes (timing does not depend on the values)."""
    from mistralrs_cli.models.quant_linear import GROUP, Int4Linear

    g = torch.Generator().manual_seed(seed)
    codes = []
    for _ in range(terms):
        u = torch.randint(0, 16, (n, k), dtype=torch.uint8, generator=g)
        scale = torch.rand(n, k // GROUP, generator=g) * 0.01 + 1e-3
        codes.append((u, scale, -8 * scale))
    return Int4Linear.from_codes(codes)


def calibrate(shapes: Iterable[tuple[int, int, int]], rounds: int = 5, machine: Machine | None = None) -> Choice:
    """Time every eligible candidate on `shapes` ((K, N, int4 terms) each) here and cache the
    result for `choose` (seconds to a minute: run by hand or by a warm-up command, never at load)."""
    machine = machine or this_machine()
    names = [name for name in CANDIDATES if eligible(name)]
    timings = {shape_key(k, n): measure_shape(k, n, names, rounds, terms) for k, n, terms in dict.fromkeys(shapes)}
    path = cache_path(machine)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"machine": machine.key(), "torch": torch.__version__, "timings": timings}
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(payload, indent=1))
    tmp.replace(path)
    return Choice(machine, "cache", timings)


def compute_layers(model: torch.nn.Module) -> list:
    """The Int4Linears that run matmuls: fused q/k/v and gate/up layers, and every Int4Linear that
    is not a source of one (a fused source only runs when an adapter wrapper forces it, and a
    second copy for it would double the memory for nothing)."""
    from mistralrs_cli.models.fused import FusedProjection
    from mistralrs_cli.models.quant_linear import Int4Linear

    fused = [p for m in model.modules() for p in vars(m).values() if isinstance(p, FusedProjection)]
    sources = {id(s) for f in fused for s in f.sources}
    plain = [m for m in model.modules() if isinstance(m, Int4Linear) and id(m) not in sources]
    return [f.layer for f in fused] + plain


class LazyCandidate:
    """A candidate whose weight copy is built on its first call (or by `materialize`): loading stays
    fast, and a model that never multiplies LARGE_M rows at once (prompts and batches both count)
    never pays its memory or its build time."""

    def __init__(self, name: str, layer: torch.nn.Module) -> None:
        self.name, self.compilable = name, CANDIDATES[name].compilable
        self.layer = layer
        self.built: Candidate | None = None

    @property
    def ready(self) -> bool:
        """Whether the copy exists (a compiled graph may only use a built candidate)."""
        return self.built is not None

    def build(self) -> Candidate:
        if self.built is None:
            from mistralrs_cli.models.matmul_candidates import prepare

            self.built = prepare(self.name, self.layer)
        return self.built

    def matmul(self, x: torch.Tensor) -> torch.Tensor:
        return self.build().matmul(x)

    def nbytes(self) -> int:
        return self.built.nbytes() if self.built is not None else 0


def apply(model: torch.nn.Module, choice: Choice | None = None) -> str:
    """Give each int4 layer of `model` the kernels `choice` (default: `choose()`) picks for its
    shape; returns the choice in one line, with the memory its copies take once built (on first
    use: `LazyCandidate`)."""
    choice = choice or choose()
    layers = compute_layers(model)
    extra = 0
    for layer in layers:
        made: dict[str, LazyCandidate] = {}
        picked = []
        for bucket in PROBE_M:
            name = choice.pick(layer.in_features, layer.out_features, bucket)
            if name != DEFAULT and name not in made:
                made[name] = LazyCandidate(name, layer)
                extra += CANDIDATES[name].bytes_for(layer.in_features, layer.out_features)
            picked.append(made.get(name))
        layer.use_matmuls(picked[0], picked[1], LARGE_M)
    text = choice.describe(dict.fromkeys((m.in_features, m.out_features) for m in layers))
    return f"{text}, +{extra / 2**20:.0f} MiB of weight copies once a batch needs them" if extra else text


def materialize(model: torch.nn.Module, rows: int) -> None:
    """Build now every weight copy a batch of `rows` rows would use (before torch.compile traces
    one: a graph must not build weights, and one traced without them would keep int4)."""
    for layer in compute_layers(model):
        other = layer.large if rows >= layer.large_m else layer.small
        if isinstance(other, LazyCandidate):
            other.build()
