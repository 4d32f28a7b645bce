"""SamplingParams: one request's sampling and stopping settings, validated when built."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from mistralrs_cli.engine.guided import Guide
from mistralrs_cli.errors import RequestError

MAX_TOP_LOGPROBS = 20  # OpenAI's limit; each extra id costs a decode per token


@dataclass(frozen=True)
class SamplingParams:
    """How to pick tokens and when to stop; invalid values raise RequestError on construction.

    temperature 0 means greedy. top_k 0 and top_p 1 disable those filters. repeat_last_n
    None takes the engine's default (the model subcommand's --repeat-last-n, 64).
    """

    max_tokens: int | None = None  # None: up to the context length
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    repeat_last_n: int | None = None
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    logit_bias: Mapping[int, float] | None = None
    seed: int | None = None
    stop: tuple[str, ...] = ()
    stop_token_ids: tuple[int, ...] = ()
    ignore_eos: bool = False
    n: int = 1
    logprobs: bool = False
    top_logprobs: int = 0
    guide: Guide | None = None  # constrained decoding: JSON Schema, regex, grammar or choice
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        # Normalise the forms users send (a single stop string, OpenAI's string-keyed bias).
        set_ = object.__setattr__
        set_(self, "stop", _stop_strings(self.stop))
        set_(self, "stop_token_ids", _int_tuple(self.stop_token_ids, "stop_token_ids"))
        set_(self, "logit_bias", _logit_bias(self.logit_bias))
        self._validate()

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> SamplingParams:
        """Build from a JSON-like dict (None values mean "default"); unknown keys are an error."""
        known = {f.name for f in fields(cls)} - {"extra", "guide"}
        unknown = sorted(set(values) - known)
        if unknown:
            raise RequestError(f"unknown sampling parameter {unknown[0]!r}")
        return cls(**{k: v for k, v in values.items() if v is not None})

    @property
    def greedy(self) -> bool:
        """True when the argmax is taken (temperature 0)."""
        return self.temperature == 0.0

    def _validate(self) -> None:
        _check_type(self, "temperature", (int, float))
        _check_type(self, "top_p", (int, float))
        _check_type(self, "min_p", (int, float))
        for name in ("top_k", "n", "top_logprobs"):
            _check_type(self, name, int)
        for name in ("temperature", "top_p", "min_p", "repetition_penalty", "frequency_penalty", "presence_penalty"):
            if not math.isfinite(getattr(self, name)):
                raise RequestError(f"{name} must be a finite number, got {getattr(self, name)}")
        if self.max_tokens is not None:
            _check_type(self, "max_tokens", int)
            if self.max_tokens < 1:
                raise RequestError(f"max_tokens must be at least 1, got {self.max_tokens}")
        if self.temperature < 0:
            raise RequestError(f"temperature must be >= 0, got {self.temperature}")
        if not 0.0 < self.top_p <= 1.0:
            raise RequestError(f"top_p must be in (0, 1], got {self.top_p}")
        if not 0.0 <= self.min_p <= 1.0:
            raise RequestError(f"min_p must be in [0, 1], got {self.min_p}")
        if self.top_k < 0:
            raise RequestError(f"top_k must be >= 0 (0 disables it), got {self.top_k}")
        if self.repetition_penalty <= 0:
            raise RequestError(f"repetition_penalty must be > 0, got {self.repetition_penalty}")
        if self.repeat_last_n is not None and (not isinstance(self.repeat_last_n, int) or self.repeat_last_n < 0):
            raise RequestError(f"repeat_last_n must be an integer >= 0, got {self.repeat_last_n!r}")
        for name in ("frequency_penalty", "presence_penalty"):
            if not -2.0 <= getattr(self, name) <= 2.0:
                raise RequestError(f"{name} must be in [-2, 2], got {getattr(self, name)}")
        if not 1 <= self.n <= 128:
            raise RequestError(f"n must be between 1 and 128, got {self.n}")
        if not 0 <= self.top_logprobs <= MAX_TOP_LOGPROBS:
            raise RequestError(f"top_logprobs must be between 0 and {MAX_TOP_LOGPROBS}, got {self.top_logprobs}")
        if self.guide is not None and not isinstance(self.guide, Guide):
            raise RequestError(f"guide must be a Guide, got {type(self.guide).__name__}")
        if self.seed is not None and not isinstance(self.seed, int):
            raise RequestError(f"seed must be an integer, got {self.seed!r}")


def _check_type(params: SamplingParams, name: str, types: type | tuple[type, ...]) -> None:
    value = getattr(params, name)
    # bool is an int subclass; `"temperature": true` is a client bug, not 1.0.
    if isinstance(value, bool) or not isinstance(value, types):
        raise RequestError(f"{name} must be a number, got {value!r}")


def _stop_strings(stop: Any) -> tuple[str, ...]:
    if stop is None:
        return ()
    if isinstance(stop, str):
        stop = (stop,)
    if not isinstance(stop, (list, tuple)) or not all(isinstance(s, str) for s in stop):
        raise RequestError(f"stop must be a string or a list of strings, got {type(stop).__name__}")
    if any(s == "" for s in stop):
        raise RequestError("stop strings must not be empty")
    return tuple(stop)


def _int_tuple(values: Any, name: str) -> tuple[int, ...]:
    if values is None:
        return ()
    if isinstance(values, int) and not isinstance(values, bool):
        return (values,)
    if not isinstance(values, (list, tuple)) or not all(
        isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in values
    ):
        raise RequestError(f"{name} must be a list of token ids (integers >= 0)")
    return tuple(values)


def _logit_bias(bias: Any) -> dict[int, float] | None:
    if not bias:
        return None
    if not isinstance(bias, Mapping):
        raise RequestError("logit_bias must map token ids to numbers")
    out: dict[int, float] = {}
    for key, value in bias.items():
        try:
            token = int(key)  # OpenAI sends ids as JSON object keys, i.e. strings
        except (TypeError, ValueError):
            raise RequestError(f"logit_bias key {key!r} is not a token id") from None
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not -100 <= value <= 100:
            raise RequestError(f"logit_bias value for token {token} must be a number in [-100, 100]")
        if token < 0:
            raise RequestError(f"logit_bias key {token} is not a token id")
        out[token] = float(value)
    return out
