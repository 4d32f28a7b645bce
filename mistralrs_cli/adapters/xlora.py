"""XLoraModel: the one Mistral model run twice per step, a scaling pass and then the real pass.

1. Scaling pass: every LoRA wrapper at `scaling_pass_value`; the hidden states after the final
   norm go through the classifier -> scalings (B, Q, n_lora_layers, n_adapters).
2. Real pass: each wrapper weighs its adapters by its layer's (top-k selected) scalings.

It satisfies models.contract.CausalLM, and is its own SequenceHooks: the engine forks its
per-sequence state with n > 1 choices and makes it forget finished sequences (the state
itself lives in scaling_state.py). It asks the engine for twice the KV layers: the
first half holds the scaling pass's cache, the second half the real pass's. Both are addressed
by the same slots, so they stay in step whatever the batching (what the original's "catch-up"
scheduling tried to achieve). Scalings are per token, so rows of a batch never mix.

`tgt_non_granular_index` N: per sequence, scalings are computed for the prompt and the first
N generated tokens; later tokens reuse the last computed ones, and a step whose tokens are
all frozen skips the scaling pass. NOTE: frozen tokens write no scaling-pass KV; nothing reads
it again since a frozen sequence never runs the scaling pass, but it is why a prefix cache
must not share blocks of frozen tokens (`prefix_cache_safe` is False then).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch
from torch import nn

from mistralrs_cli.adapters.classifier import XLoraClassifier
from mistralrs_cli.adapters.lora import LoraLinear
from mistralrs_cli.adapters.scaling_state import ScalingState, SeqScalings
from mistralrs_cli.models.attention import AttentionBatch, KVLayer
from mistralrs_cli.models.config import ModelConfig
from mistralrs_cli.models.contract import SequenceHooks
from mistralrs_cli.models.mistral import MistralForCausalLM

log = logging.getLogger(__name__)
Row = tuple[SeqScalings, torch.Tensor, torch.Tensor]  # state, positions (Q,) on CPU, valid mask


class XLoraModel(nn.Module):
    """X-LoRA around one MistralForCausalLM whose targeted linears are LoraLinear wrappers."""

    def __init__(
        self,
        base: MistralForCausalLM,
        classifier: XLoraClassifier,
        lora_layers: Sequence[LoraLinear],
        adapter_names: Sequence[str],
        layer_names: Sequence[str],
        tgt_non_granular_index: int | None = None,
        max_tracked_seqs: int = 1024,
    ) -> None:
        super().__init__()
        self.base = base
        self.classifier = classifier
        # A tuple, not a ModuleList: the wrappers are already registered inside `base`.
        self.lora_layers = tuple(lora_layers)
        self.adapter_names = tuple(adapter_names)
        self.layer_names = tuple(layer_names)
        self.tgt_non_granular_index = tgt_non_granular_index
        self.state = ScalingState(max_tracked_seqs)
        self.latest: torch.Tensor | None = None  # (B, n_lora_layers, n_adapters) of the last call
        self._warned = False
        device = next(classifier.parameters()).device
        weight = classifier.settings.global_scaling_weight
        passing = classifier.pass_scalings(device) * weight  # (n_lora_layers, n_adapters)
        # 0.0 lets every wrapper skip its delta in the scaling pass (the default pass value).
        self._pass_mix: list[torch.Tensor | float] = (
            [0.0] * len(self.lora_layers) if not passing.any() else list(passing.unbind(0))
        )

    @property
    def config(self) -> ModelConfig:
        """The base model's config."""
        return self.base.config

    @property
    def num_kv_layers(self) -> int:
        """(k, v) pool pairs to allocate: the scaling pass's, then the real pass's."""
        return 2 * self.base.config.num_hidden_layers

    @property
    def prefix_cache_safe(self) -> bool:
        """Whether a token's KV depends only on the tokens before it (not with frozen scalings)."""
        return self.tgt_non_granular_index is None

    @property
    def sequence_hooks(self) -> SequenceHooks:
        """The model keeps its per-sequence state itself (`fork`, `forget`, `scalings_history`)."""
        return self

    def forward(
        self,
        input_ids: torch.Tensor,
        positions: torch.Tensor,
        batch: AttentionBatch | None = None,
        kv: list[KVLayer] | None = None,
        last_index: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Logits in f32: (B, Q, vocab), or (B, vocab) at `last_index` (B,) when given."""
        base = self.base
        if batch is None:
            batch = AttentionBatch.no_cache(positions, base.config.sliding_window)
        n = base.config.num_hidden_layers
        if kv is not None and len(kv) != 2 * n:
            raise ValueError(f"X-LoRA needs {2 * n} KV layers (num_kv_layers), got {len(kv)}")
        kv_pass, kv_real = (kv[:n], kv[n:]) if kv is not None else (None, None)
        rows = self._rows(positions, batch)
        frozen, values, sources = self._plan(rows, positions.device)
        try:
            if frozen is None or bool((positions.ge(0) & ~frozen).any()):
                self._set_mix(self._pass_mix)
                hidden = base.hidden_states(input_ids, positions, batch, kv_pass)  # (B, Q, hidden)
                scalings = self.classifier(hidden)  # (B, Q, n_lora_layers, n_adapters)
                if frozen is not None:
                    self._fill_values(values, sources, scalings, rows)
                    scalings = torch.where(frozen[..., None, None], values[:, None], scalings)
            else:  # every token of every row is frozen: no scaling pass at all
                scalings = values[:, None].expand(-1, input_ids.shape[1], -1, -1)
            mixes = self.classifier.select(scalings) * self.classifier.settings.global_scaling_weight
            self._set_mix(list(mixes.unbind(2)))  # wrapper k gets (B, Q, n_adapters)
            logits = base(input_ids, positions, batch, kv_real, last_index)
        finally:
            self._set_mix([None] * len(self.lora_layers))  # drop references to this step's tensors
        self._record(scalings, positions, rows, last_index)
        return logits

    def _set_mix(self, mixes: Sequence[torch.Tensor | float | None]) -> None:
        for wrapper, mix in zip(self.lora_layers, mixes, strict=True):
            wrapper.mix = mix

    def _rows(self, positions: torch.Tensor, batch: AttentionBatch) -> list[Row] | None:
        """Each row's sequence state (prompt length updated), positions and valid mask; None without ids."""
        if batch.seq_ids is None:
            if self.tgt_non_granular_index is not None and not self._warned:
                log.warning("tgt_non_granular_index needs sequence ids from the engine; scalings stay per token")
                self._warned = True
            return None
        prompt_lens = batch.prompt_lens
        pos = positions.detach().cpu()
        rows = []
        for b, sid in enumerate(batch.seq_ids):
            entry, row = self.state.get(sid), pos[b]
            valid = row >= 0
            if bool(valid.any()):
                entry.observe(row[valid], prompt_lens[b] if prompt_lens is not None else None)
            rows.append((entry, row, valid))
        return rows

    def _plan(self, rows: list[Row] | None, device: torch.device) -> tuple[torch.Tensor | None, torch.Tensor, list]:
        """Which tokens reuse frozen scalings: (frozen (B, Q) bool, stored values, per-row source).

        A row's source is "stored" (its frozen scalings are known), an int q (they are the
        scalings computed this call at column q), or None (nothing to freeze in this row).
        """
        tgt = self.tgt_non_granular_index
        shape = (len(rows or ()), len(self.lora_layers), len(self.adapter_names))
        values = torch.zeros(shape, device=device)
        if tgt is None or rows is None:
            return None, values, []
        frozen = torch.zeros((len(rows), rows[0][1].numel()), dtype=torch.bool)
        sources: list = []
        for b, (entry, row, valid) in enumerate(rows):
            source = None
            if bool(valid.any()):
                limit = entry.prompt_len + tgt
                late = valid & (row >= limit)  # tokens more than N past the prompt
                anchor = (row == limit - 1).nonzero()  # the last token whose scalings are computed
                if entry.frozen_pos != limit - 1:  # the prompt turned out longer than first guessed
                    entry.frozen = None
                if entry.frozen is None and anchor.numel():
                    source = int(anchor[0])  # remember its scalings now, whether or not late tokens follow
                elif bool(late.any()) and entry.frozen is not None:
                    source = "stored"
                    values[b] = entry.frozen
                elif bool(late.any()):
                    # No frozen value known (a forked sequence the engine did not `fork`):
                    # compute the first late token and freeze on it.
                    source = int(late.nonzero()[0])
                    late[source] = False
                frozen[b] = late
            sources.append(source)
        return frozen.to(device), values, sources

    def _fill_values(self, values: torch.Tensor, sources: list, scalings: torch.Tensor, rows: list[Row]) -> None:
        """Frozen values taken from this call's scalings, and remembered per sequence."""
        for b, source in enumerate(sources):
            if isinstance(source, int):
                entry = rows[b][0]
                values[b] = scalings[b, source]
                entry.frozen, entry.frozen_pos = scalings[b, source].clone(), int(rows[b][1][source])

    def _record(
        self, scalings: torch.Tensor, positions: torch.Tensor, rows: list[Row] | None, last_index: torch.Tensor | None
    ) -> None:
        """Keep each row's latest token scalings and, per generated token, their mean over layers."""
        if last_index is None:
            last_index = (positions.ge(0).sum(1) - 1).clamp(min=0)
        index = torch.arange(scalings.shape[0], device=scalings.device)
        self.latest = scalings[index, last_index].detach()  # (B, n_lora_layers, n_adapters)
        if rows is None:
            return
        means = self.latest.mean(1)  # (B, n_adapters)
        for b, (entry, row, valid) in enumerate(rows):
            if bool(valid.any()):
                entry.record(self.latest[b], means, b, int(row[valid].max()))

    def last_scalings(self, seq_id: int) -> torch.Tensor | None:
        """(n_lora_layers, n_adapters) f32 CPU scalings of the sequence's latest token, if known."""
        entry = self.state.peek(seq_id)
        return None if entry is None or entry.last is None else entry.last.float().cpu()

    def scalings_history(self, seq_id: int) -> torch.Tensor | None:
        """(T, n_adapters) f32 CPU: for each generated token, the layer-mean scalings that produced it."""
        entry = self.state.peek(seq_id)
        if entry is None or not entry.history:
            return None
        return torch.stack([means[row] for means, row in entry.history]).float().cpu()

    def forget(self, seq_id: int) -> None:
        """Drop a finished sequence's state (safe for unknown ids; memory is bounded regardless)."""
        self.state.forget(seq_id)

    def fork(self, parent_seq_id: int, child_seq_id: int) -> None:
        """A forked choice inherits its parent's prompt length, frozen scalings and history."""
        self.state.fork(parent_seq_id, child_seq_id)
