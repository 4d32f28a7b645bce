"""X-LoRA scalings of finished choices, kept for the frontends that asked (`xlora_scalings`)."""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass

import torch

MAX_REQUESTS = 256  # bounded: old entries are dropped first


@dataclass(frozen=True)
class ChoiceScalings:
    """Per generated token, the layer-mean scaling of every adapter."""

    token_ids: tuple[int, ...]
    scalings: torch.Tensor  # (T, n_adapters) f32 CPU
    adapters: tuple[str, ...]

    def as_json(self) -> dict:
        """`{"adapters": [...], "tokens": [...], "scalings": [[...], ...]}`."""
        return {"adapters": list(self.adapters), "tokens": list(self.token_ids),
                "scalings": [[round(float(v), 6) for v in row] for row in self.scalings]}


class ScalingsStore:
    """request id -> choice index -> ChoiceScalings; written by the engine thread, read by frontends."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._data: OrderedDict[str, dict[int, ChoiceScalings]] = OrderedDict()

    def put(self, request_id: str, index: int, token_ids: list[int], scalings: torch.Tensor,
            adapters: tuple[str, ...]) -> None:
        """Record one finished choice (scalings rows beyond the tokens are dropped)."""
        n = min(len(token_ids), scalings.shape[0])
        with self._lock:
            self._data.setdefault(request_id, {})[index] = ChoiceScalings(tuple(token_ids[:n]), scalings[:n], adapters)
            self._data.move_to_end(request_id)
            while len(self._data) > MAX_REQUESTS:
                self._data.popitem(last=False)

    def get(self, request_id: str) -> dict[int, ChoiceScalings]:
        """Every recorded choice of a request (empty when none)."""
        with self._lock:
            return dict(self._data.get(request_id, {}))
