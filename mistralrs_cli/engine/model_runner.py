"""ModelRunner: owns the KV pool and turns a step's chunks into model forwards.

The pool is one flat tensor of token slots per layer (k and v), shared by every sequence:
slot 0 is scratch (padding writes there), block b holds slots 1 + b*block_size onwards.
A step runs at most two forwards: all decoding sequences together (B, 1), and all prompt
chunks together (B, Q) padded to the longest chunk. Each row attends to its own sequence's
slots, gathered in position order; padding keys are masked out.

The model is anything satisfying models.contract.CausalLM. A wrapper that needs its own
cache (X-LoRA's scaling pass) declares more `num_kv_layers` than it has decoder layers and
receives them all; every layer is addressed by the same slots, so the extra caches stay in
step with the main one for free. Each batch names its rows' sequences (`seq_ids`,
`prompt_lens`) for models that keep per-sequence state; EngineCore tells them about forks
and finished sequences through the model's declared `sequence_hooks`.

With `compile`, decode groups run through one compiled graph per batch bucket
(engine/compiled_step.py) where the model and device allow it, once that graph is ready
(it compiles in the background; eager meanwhile); prefill stays eager.
"""

from __future__ import annotations

import torch

from mistralrs_cli.engine.compiled_step import CompiledDecode
from mistralrs_cli.engine.scheduler import Chunk
from mistralrs_cli.models.attention import AttentionBatch, KVLayer
from mistralrs_cli.models.contract import CausalLM


def block_bytes(model: CausalLM, block_size: int, dtype: torch.dtype) -> int:
    """Bytes of KV cache one block takes across all of the model's KV layers."""
    cfg = model.config
    per_slot = 2 * cfg.num_key_value_heads * cfg.head_dim * torch.empty((), dtype=dtype).element_size()
    return model.num_kv_layers * per_slot * block_size


class ModelRunner:
    """Runs the model over packed chunks of many sequences against one KV pool."""

    def __init__(
        self,
        model: CausalLM,
        num_blocks: int,
        block_size: int,
        dtype: torch.dtype,
        device: torch.device,
        compile: bool | None = False,
    ) -> None:
        cfg = model.config
        self.model, self.cfg = model, cfg
        self.block_size, self.device = block_size, device
        slots = 1 + num_blocks * block_size
        shape = (slots, cfg.num_key_value_heads, cfg.head_dim)
        self.kv: list[KVLayer] = [
            (torch.zeros(shape, dtype=dtype, device=device), torch.zeros(shape, dtype=dtype, device=device))
            for _ in range(model.num_kv_layers)
        ]
        self.compiled = CompiledDecode.create(model, self.kv, device, quiet=compile is None) if compile is not False else None

    def _block_slots(self, blocks: list[int]) -> torch.Tensor:
        """Slot ids of whole blocks, (len(blocks) * block_size,)."""
        b = torch.tensor(blocks, dtype=torch.long)[:, None]
        return (1 + b * self.block_size + torch.arange(self.block_size)).reshape(-1).to(self.device)

    @torch.inference_mode()
    def copy_blocks(self, copies: list[tuple[int, int]]) -> None:
        """Copy-on-write: duplicate block src into dst in every layer."""
        if not copies:
            return
        src = self._block_slots([s for s, _ in copies])
        dst = self._block_slots([d for _, d in copies])
        for k, v in self.kv:
            k[dst] = k[src]
            v[dst] = v[src]

    @torch.inference_mode()
    def run(self, chunks: list[Chunk]) -> torch.Tensor:
        """Compute every chunk; return f32 logits (R, vocab) of the chunks that need them, in order."""
        decode = [c for c in chunks if c.length == 1]
        prefill = [c for c in chunks if c.length > 1]
        rows: dict[int, torch.Tensor] = {}
        for group in (decode, prefill):
            if group:
                logits = self._forward(group)  # (B, vocab)
                for row, chunk in enumerate(group):
                    rows[id(chunk)] = logits[row]
        wanted = [rows[id(c)] for c in chunks if c.needs_logits]
        if not wanted:
            return torch.empty(0, self.cfg.vocab_size, device=self.device)
        return torch.stack(wanted)

    def _forward(self, group: list[Chunk]) -> torch.Tensor:
        bs = self.block_size
        q_len = max(c.length for c in group)
        ids = torch.tensor([c.seq.token_ids[c.start : c.start + c.length] + [0] * (q_len - c.length) for c in group])
        start = torch.tensor([c.start for c in group])
        length = torch.tensor([c.length for c in group])
        kv_start = torch.tensor([c.seq.kv_start for c in group])
        width = max(len(c.seq.block_table) for c in group)
        tables = torch.tensor([c.seq.block_table + [0] * (width - len(c.seq.block_table)) for c in group])
        tables.clamp_(min=0)  # released (-1) blocks are never addressed; keep gather in range

        def slots(pos: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
            block = tables.gather(1, (pos.clamp(min=0) // bs).clamp(max=width - 1))
            return torch.where(valid, 1 + block * bs + pos % bs, 0)

        cols = torch.arange(q_len)
        q_valid = cols < length[:, None]  # (B, Q)
        q_pos = torch.where(q_valid, start[:, None] + cols, -1)
        k_len = start + length - kv_start  # keys each row attends: its held window up to the chunk end
        k_cols = torch.arange(int(k_len.max()))
        k_valid = k_cols < k_len[:, None]  # (B, L)
        k_pos = torch.where(k_valid, kv_start[:, None] + k_cols, -1)
        # Index tensors are built on the CPU (cheap, no syncs) and moved once.
        write, ctx = slots(q_pos, q_valid), slots(k_pos, k_valid)
        if self.compiled is not None and q_len == 1:
            logits = self.compiled(ids, q_pos, write, ctx, k_pos)
            if logits is not None:
                return logits
        dev = self.device
        write, ctx = write.to(dev), ctx.to(dev)
        q_pos = q_pos.to(dev)
        batch = AttentionBatch.build(q_pos, k_pos.to(dev), self.cfg.sliding_window, write, ctx)
        batch.seq_ids = tuple(c.seq.seq_id for c in group)
        batch.prompt_lens = tuple(c.seq.num_prompt for c in group)
        return self.model(ids.to(dev), q_pos, batch, self.kv, (length - 1).to(dev))
