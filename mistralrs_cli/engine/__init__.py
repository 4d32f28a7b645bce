"""The shared generation engine: continuous batching, paged KV cache, sampling, streaming."""

from mistralrs_cli.engine.config import EngineConfig
from mistralrs_cli.engine.engine import Engine
from mistralrs_cli.engine.guided import GUIDE_KINDS, Guide
from mistralrs_cli.engine.outputs import (
    Choice,
    Delta,
    EngineError,
    EngineStats,
    RequestOutput,
    TokenLogprob,
    Usage,
)
from mistralrs_cli.engine.params import SamplingParams
from mistralrs_cli.engine.stream import RequestStream

__all__ = [
    "Choice",
    "Delta",
    "Engine",
    "GUIDE_KINDS",
    "Guide",
    "EngineConfig",
    "EngineError",
    "EngineStats",
    "RequestOutput",
    "RequestStream",
    "SamplingParams",
    "TokenLogprob",
    "Usage",
]
