"""The compiled decode step (opt-in: `EngineConfig.compile`, `mistralrs --compile`).

A decode group (every row Q = 1) runs as one torch.compile'd graph (inductor's C++/OpenMP code on
CPU) instead of ~40 eager ops per layer. Shapes are static inside a batch bucket:
- rows are padded up to a bucket (1, 2, 4, 8, 16, 32, 64, ...); a padded row has position -1,
  writes the scratch slot 0 and attends only to it (its logits are dropped);
- the context is padded up to a multiple of CTX_BLOCK keys (slot 0, position -1: masked out), and
  that width is a dynamic dimension of the graph (`torch._dynamo.maybe_mark_dynamic`), so one graph
  serves every context length and every mix of sequences of a bucket.
The graph runs the model's own modules, whatever `select_backend` chose (fused int4 on CPU),
through `MistralForCausalLM.decoder_stack`; only the embedding, the rotary lookup (the tables are
graph inputs: `layers.lookup_cos_sin`) and the head are called from here. The paged KV pool is
passed as tensors and written in place (`index_copy_`); its size is dynamic too. Prefill stays eager.

NOTE: each (runner, bucket) compiles its own copy of `_decode_step`'s code object, so its dynamo
cache holds exactly one graph: buckets and engines never count against each other's recompile
limit, and a recompile inside a bucket shows in dynamo's counters (the tests assert there is none).
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import types
import warnings
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path

import torch
import torch.fx.experimental._config
import torch.nn.functional as F

from mistralrs_cli.loading.default_model import cache_dir
from mistralrs_cli.models.attention import AttentionBatch, KVLayer
from mistralrs_cli.models.contract import CausalLM
from mistralrs_cli.models.layers import lookup_cos_sin
from mistralrs_cli.models.mistral import MistralForCausalLM

log = logging.getLogger(__name__)

CTX_BLOCK = 64  # the context width is padded up to a multiple of this


def batch_bucket(rows: int) -> int:
    """Rows of the graph that runs `rows` decoding sequences: the next power of two."""
    return 1 << max(rows - 1, 0).bit_length()


def ctx_bucket(keys: int) -> int:
    """Context width of the graph input for `keys` keys: the next multiple of CTX_BLOCK."""
    return max(1, -(-keys // CTX_BLOCK)) * CTX_BLOCK


def _user_inductor_dir() -> str | None:
    """$TORCHINDUCTOR_CACHE_DIR unless it is the temporary default torch itself wrote there
    (importing torch._inductor.config does that)."""
    env = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    if env and "torch._inductor.config" in sys.modules:
        from torch._inductor.runtime.cache_dir_utils import default_cache_dir

        if os.path.abspath(env) == os.path.abspath(default_cache_dir()):
            return None
    return env or None


def inductor_cache_dir() -> Path:
    """Where inductor keeps compiled graphs: the user's $TORCHINDUCTOR_CACHE_DIR, else
    mistralrs' cache folder / inductor (~/.cache/mistralrs/inductor or $MISTRALRS_CACHE/inductor)."""
    env = _user_inductor_dir()
    return Path(env) if env else cache_dir() / "inductor"


def use_inductor_cache_dir() -> Path:
    """Point inductor's on-disk caches (FX graph, AOT autograd, C++ builds) at `inductor_cache_dir()`;
    call before the first compile."""
    path = inductor_cache_dir()
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(path)
    return path


def cxx_compiler() -> str | None:
    """The C++ compiler inductor will call (its `cpp.cxx` setting: $CXX or g++), or None if absent."""
    import torch._inductor.config as inductor_config

    names = inductor_config.cpp.cxx
    for name in names if isinstance(names, (list, tuple)) else (names,):
        if name and shutil.which(name):
            return name
    return None


def unsupported(model: CausalLM, device: torch.device) -> str | None:
    """Why the compiled step cannot run `model` on `device` (one phrase), or None when it can."""
    if device.type != "cpu":
        return f"the compiled decode step runs on CPU only, not {device.type}"
    if not isinstance(model, MistralForCausalLM):
        return f"the compiled decode step does not run {type(model).__name__} (only the plain model, LoRA included)"
    if cxx_compiler() is None:
        return "no C++ compiler (g++, or $CXX) found for torch.compile"
    return None


class _PaddedDecodeBatch(AttentionBatch):
    """The compiled step's AttentionBatch: the additive mask is always built.

    AttentionBatch.additive_mask drops an all-true mask (one decoding sequence) after looking at
    the data (`bool(mask.all())`), a branch a graph cannot take; here padding keys always exist.
    """

    def additive_mask(self, dtype: torch.dtype) -> torch.Tensor:
        if dtype not in self._additive:
            additive = torch.zeros(self.mask.shape, dtype=dtype, device=self.mask.device)
            self._additive[dtype] = additive.masked_fill_(~self.mask, float("-inf"))
        return self._additive[dtype]


def _decode_step(
    model: MistralForCausalLM,
    ids: torch.Tensor,
    positions: torch.Tensor,
    write_slots: torch.Tensor,
    ctx_slots: torch.Tensor,
    key_positions: torch.Tensor,
    kv: list[KVLayer],
    cos_table: torch.Tensor,
    sin_table: torch.Tensor,
) -> torch.Tensor:
    """f32 logits (B, vocab) of one decode step: ids/positions (B, 1), write_slots (B,),
    ctx_slots/key_positions (B, L). What `model(...)` computes, without a data-dependent step."""
    batch = _PaddedDecodeBatch.build(positions, key_positions, model.config.sliding_window, write_slots, ctx_slots)
    x = model.model.embed_tokens(ids)
    cos, sin = lookup_cos_sin(cos_table, sin_table, positions.clamp(min=0), x.dtype)
    h = model.decoder_stack(x, cos, sin, batch, kv)
    return model.lm_head(h[:, 0]).float()


def _fresh_copy(fn: types.FunctionType) -> types.FunctionType:
    """`fn` with its own code object (so its own dynamo cache)."""
    return types.FunctionType(fn.__code__.replace(), fn.__globals__, fn.__name__, fn.__defaults__, fn.__closure__)


class CompiledDecode:
    """Runs decode groups of one model and KV pool through one compiled graph per batch bucket."""

    def __init__(self, model: MistralForCausalLM, kv: list[KVLayer], device: torch.device, cache_dir: Path) -> None:
        self.model, self.kv, self.device = model, kv, device
        self.steps: dict[int, Callable[..., torch.Tensor]] = {}  # batch bucket -> its compiled step
        self.failed: str | None = None  # why the compiled path stopped (then every group runs eagerly)
        self.cache_dir = cache_dir  # inductor's on-disk caches
        # The pool's size depends on the memory budget (and the available RAM): a dynamic dimension,
        # so inductor's cached graphs serve every budget.
        for pool in (t for layer in kv for t in layer):
            torch._dynamo.maybe_mark_dynamic(pool, 0)

    @classmethod
    def create(cls, model: CausalLM, kv: list[KVLayer], device: torch.device) -> CompiledDecode | None:
        """The compiled step for `model`, or None (with one warning line) where it cannot run."""
        cache = use_inductor_cache_dir()  # before torch._inductor is imported (it sets a default)
        why = unsupported(model, device)
        if why is not None:
            log.warning("--compile: %s; decoding eagerly", why)
            return None
        assert isinstance(model, MistralForCausalLM)
        # Inductor's C++ codegen says so for every GGUF model (f16 block scales beside bf16 activations).
        warnings.filterwarnings("ignore", message="bf16 and fp16 are mixed in the scheduler node", category=UserWarning)
        return cls(model, kv, device, cache)

    def _step_for(self, bucket: int) -> Callable[..., torch.Tensor]:
        step = self.steps.get(bucket)
        if step is None:
            step = torch.compile(_fresh_copy(_decode_step), fullgraph=True, dynamic=False)
            self.steps[bucket] = step
        return step

    def __call__(
        self,
        ids: torch.Tensor,
        positions: torch.Tensor,
        write_slots: torch.Tensor,
        ctx_slots: torch.Tensor,
        key_positions: torch.Tensor,
    ) -> torch.Tensor | None:
        """f32 logits (B, vocab) for a decode group's CPU index tensors (ids/positions/write_slots (B, 1),
        ctx_slots/key_positions (B, L), as the eager path builds them), or None: run it eagerly."""
        if self.failed is not None:
            return None
        rows, keys = ctx_slots.shape
        pad_rows, pad_keys = batch_bucket(rows) - rows, ctx_bucket(keys) - keys
        ids = F.pad(ids, (0, 0, 0, pad_rows))
        positions = F.pad(positions, (0, 0, 0, pad_rows), value=-1)
        write_slots = F.pad(write_slots.reshape(rows), (0, pad_rows))
        ctx_slots = F.pad(ctx_slots, (0, pad_keys, 0, pad_rows))
        key_positions = F.pad(key_positions, (0, pad_keys, 0, pad_rows), value=-1)
        dev = self.device
        cos, sin = self.model.model.rotary.tables(int(positions.max()) + 1, dev)
        ctx_slots, key_positions = ctx_slots.to(dev), key_positions.to(dev)
        # One graph for every context width of the bucket, and for every size of the rope tables.
        for tensor, dim in ((ctx_slots, 1), (key_positions, 1), (cos, 0), (sin, 0)):
            torch._dynamo.maybe_mark_dynamic(tensor, dim)
        first = len(ids) not in self.steps
        step = self._step_for(len(ids))
        try:
            # NOTE: the first call compiles. Without "duck shapes", dimensions that happen to be equal
            # then (a context width and the rope tables' length) are not assumed equal for ever.
            with torch.fx.experimental._config.patch(use_duck_shape=False) if first else nullcontext():
                logits = step(self.model, ids.to(dev), positions.to(dev), write_slots.to(dev), ctx_slots,
                              key_positions, self.kv, cos, sin)
        except Exception as e:  # noqa: BLE001 - a compiler error, a graph break, an inductor bug: stay eager
            self.failed = f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"
            log.warning("compiled decode step failed (%s); decoding eagerly from now on", self.failed)
            log.debug("the compiled decode step's failure", exc_info=True)
            return None
        return logits[:rows]
