"""The typed model contract: what the engine needs from a model, declared rather than probed.

`CausalLM` is what every LoadedModel holds and the engine runs: MistralForCausalLM, or a
wrapper around it (X-LoRA). A model that keeps state per engine sequence (X-LoRA's frozen
scalings and scalings history) exposes it through `sequence_hooks`; a stateless model says
None. Both are runtime-checkable Protocols (isinstance checks attribute presence only).
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch

from mistralrs_cli.models.attention import AttentionBatch, KVLayer
from mistralrs_cli.models.config import ModelConfig


@runtime_checkable
class SequenceHooks(Protocol):
    """Per-sequence state of a stateful model, kept in step with the engine's sequences."""

    @property
    def adapter_names(self) -> tuple[str, ...]:
        """Names of the columns of `scalings_history` (one per adapter)."""
        ...

    def fork(self, parent_seq_id: int, child_seq_id: int) -> None:
        """A choice forked after the prompt (n > 1) inherits its parent's state."""
        ...

    def forget(self, seq_id: int) -> None:
        """The sequence finished (or was aborted): drop its state; unknown ids are fine."""
        ...

    def scalings_history(self, seq_id: int) -> torch.Tensor | None:
        """(T, n_adapters) f32 CPU: per generated token, the mixture that produced it; None if unknown."""
        ...


@runtime_checkable
class CausalLM(Protocol):
    """A causal LM the engine can run over a padded batch and a paged KV pool."""

    @property
    def config(self) -> ModelConfig:
        """Shapes the engine sizes its KV pool and limits from."""
        ...

    @property
    def num_kv_layers(self) -> int:
        """How many (k, v) pool layers to allocate; all are addressed by the same slots."""
        ...

    @property
    def prefix_cache_safe(self) -> bool:
        """Whether a token's KV depends only on the tokens before it (else no prefix sharing)."""
        ...

    @property
    def sequence_hooks(self) -> SequenceHooks | None:
        """Per-sequence state the engine must fork and forget; None for a stateless model."""
        ...

    def __call__(
        self,
        input_ids: torch.Tensor,
        positions: torch.Tensor,
        batch: AttentionBatch | None = None,
        kv: list[KVLayer] | None = None,
        last_index: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """f32 logits (B, Q, vocab) for ids/positions (B, Q), or (B, vocab) at `last_index` (B,)."""
        ...
