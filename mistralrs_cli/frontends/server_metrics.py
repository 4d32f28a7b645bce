"""Server counters and latency histograms, rendered as Prometheus text for GET /metrics.

Written by hand (no client library): a few counters, gauges taken from EngineStats at
scrape time, and fixed-bucket histograms. Updated only from the event loop's thread.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict

from mistralrs_cli.engine import EngineStats

PREFIX = "mistralrs"
# Seconds: from a few milliseconds (a cached tiny request) to minutes (long generations).
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)


class Histogram:
    """Cumulative-bucket histogram per label value (Prometheus semantics)."""

    def __init__(self, buckets: tuple[float, ...] = BUCKETS) -> None:
        self.buckets = buckets
        self.counts: dict[str, list[int]] = defaultdict(lambda: [0] * len(self.buckets))
        self.sums: dict[str, float] = defaultdict(float)
        self.totals: Counter[str] = Counter()

    def observe(self, label: str, value: float) -> None:
        """Record one observation (seconds) under `label`."""
        counts = self.counts[label]
        for i, bound in enumerate(self.buckets):
            if value <= bound:
                counts[i] += 1
        self.sums[label] += value
        self.totals[label] += 1

    def render(self, name: str, help_: str, label_name: str) -> list[str]:
        """The exposition lines: _bucket{le=...}, _sum and _count per label value."""
        lines = [f"# HELP {name} {help_}", f"# TYPE {name} histogram"]
        for label in sorted(self.totals):
            lv = f'{label_name}="{label}"'
            for bound, count in zip(self.buckets, self.counts[label], strict=True):
                lines.append(f'{name}_bucket{{{lv},le="{_num(bound)}"}} {count}')
            lines.append(f'{name}_bucket{{{lv},le="+Inf"}} {self.totals[label]}')
            lines.append(f"{name}_sum{{{lv}}} {_num(self.sums[label])}")
            lines.append(f"{name}_count{{{lv}}} {self.totals[label]}")
        return lines


class Metrics:
    """What the server counts on its own; engine gauges come from EngineStats at render time."""

    def __init__(self) -> None:
        self.requests: Counter[tuple[str, int]] = Counter()  # (endpoint, status) -> count
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.aborted = 0  # engine requests stopped early: client gone or server shutting down
        self.latency = Histogram()
        self.ttft = Histogram()

    def request_done(self, endpoint: str, status: int, seconds: float) -> None:
        """Count one HTTP request and its latency (generation endpoints only in the histogram)."""
        self.requests[(endpoint, status)] += 1
        if endpoint.startswith("/v1/") and endpoint != "/v1/models":
            self.latency.observe(endpoint, seconds)

    def tokens(self, prompt: int, completion: int) -> None:
        """Add a finished request's usage."""
        self.prompt_tokens += prompt
        self.completion_tokens += completion

    def render(self, stats: EngineStats | None, in_flight: int, loaded: bool) -> str:
        """The whole /metrics page."""
        p = PREFIX
        out = [f"# HELP {p}_requests_total HTTP requests by endpoint and status code.",
               f"# TYPE {p}_requests_total counter"]
        for (endpoint, status), n in sorted(self.requests.items()):
            out.append(f'{p}_requests_total{{endpoint="{endpoint}",status="{status}"}} {n}')
        out += _scalar(f"{p}_prompt_tokens_total", "counter", "Prompt tokens of finished requests.", self.prompt_tokens)
        out += _scalar(f"{p}_completion_tokens_total", "counter", "Generated tokens of finished requests.",
                       self.completion_tokens)
        out += _scalar(f"{p}_requests_aborted_total", "counter",
                       "Engine requests stopped early (client disconnected or server shutting down).", self.aborted)
        out += _scalar(f"{p}_requests_in_flight", "gauge", "Engine requests admitted by the server and not finished.",
                       in_flight)
        out += _scalar(f"{p}_model_loaded", "gauge", "1 once the model is loaded and serving.", int(loaded))
        s = stats or EngineStats()
        out += _scalar(f"{p}_running_sequences", "gauge", "Sequences in the running batch.", s.running)
        out += _scalar(f"{p}_waiting_sequences", "gauge", "Sequences waiting for a slot or cache.", s.waiting)
        out += _scalar(f"{p}_kv_cache_blocks_used", "gauge", "KV cache blocks held by live sequences.", s.kv_blocks_used)
        out += _scalar(f"{p}_kv_cache_blocks_total", "gauge", "KV cache blocks in the pool.", s.kv_blocks_total)
        usage = s.kv_blocks_used / s.kv_blocks_total if s.kv_blocks_total else 0.0
        out += _scalar(f"{p}_kv_cache_usage_ratio", "gauge", "Fraction of the KV cache in use (0..1).", usage)
        out += _scalar(f"{p}_kv_cache_used_bytes", "gauge", "Bytes of KV cache in use.", s.kv_bytes_used)
        out += _scalar(f"{p}_engine_steps_total", "counter", "Engine steps run.", s.steps)
        out += _scalar(f"{p}_preemptions_total", "counter", "Sequences preempted for lack of cache.", s.preemptions)
        out += _scalar(f"{p}_engine_generated_tokens_total", "counter", "Tokens sampled by the engine.",
                       s.generated_tokens)
        out += _scalar(f"{p}_engine_prompt_tokens_computed_total", "counter",
                       "Prompt tokens run through the model (recomputation included).", s.prompt_tokens_computed)
        out += _scalar(f"{p}_prefix_cache_hit_tokens_total", "counter", "Prompt tokens served from the prefix cache.",
                       s.prefix_cache_hit_tokens)
        out += self.latency.render(f"{p}_request_duration_seconds",
                                   "Time from request arrival to the end of its response.", "endpoint")
        out += self.ttft.render(f"{p}_time_to_first_token_seconds",
                                "Time from request arrival to its first generated token.", "endpoint")
        return "\n".join(out) + "\n"


def _scalar(name: str, kind: str, help_: str, value: float) -> list[str]:
    return [f"# HELP {name} {help_}", f"# TYPE {name} {kind}", f"{name} {_num(value)}"]


def _num(value: float) -> str:
    if isinstance(value, int):
        return str(value)
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value))
