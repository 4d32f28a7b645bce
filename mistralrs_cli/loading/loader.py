"""`load_base(source, options, name)`: from a typed base source to a LoadedModel; `smoke_forward` checks it."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

import torch

from mistralrs_cli.errors import MistralrsError, WeightError
from mistralrs_cli.loading.loaded import LoadedModel
from mistralrs_cli.loading.spec import BaseSource, GgufSource, HfSource, LoadOptions

log = logging.getLogger(__name__)

SMOKE_TOKENS = 2


def load_base(source: BaseSource, options: LoadOptions, name: str) -> LoadedModel:
    """Load the base model of `source` (HF safetensors, GGUF or the default model), named `name`.

    The backend is chosen and the smoke forward run by the caller, once any adapters are in place.
    """
    if isinstance(source, HfSource):
        from mistralrs_cli.loading.hf import load_hf

        return load_hf(source, options, name)
    if isinstance(source, GgufSource):
        from mistralrs_cli.loading.gguf import load_gguf

        return load_gguf(source, options, name)
    from mistralrs_cli.loading.default_model import load_default  # DefaultSource: named by its file

    return load_default(options)


def smoke_forward(loaded: LoadedModel) -> None:
    """Run two tokens (positions 0 and 1) through the model; the logits must be finite (WeightError if not).

    Two, not one: with a single key, attention weights are 1 whatever q and k hold, so NaN in
    q_proj/k_proj (or a rotary table broken past position 0) only shows from the second token.
    """
    where = loaded.info.get("file") or loaded.name
    cfg = loaded.config
    token = cfg.bos_token_id if cfg.bos_token_id is not None and cfg.bos_token_id < cfg.vocab_size else 0
    ids = torch.full((1, SMOKE_TOKENS), token, device=loaded.device)
    positions = torch.arange(SMOKE_TOKENS, device=loaded.device)[None]
    try:
        # no_grad rather than inference_mode: caches built here (the rotary table) must stay
        # usable by callers that run the model outside inference mode.
        with torch.no_grad(), _one_cpu_thread(loaded.device):
            logits = loaded.model(ids, positions)
    except MistralrsError:
        raise
    except Exception as e:  # the model cannot run at all: say so in one line, keep the details in the log
        log.debug("smoke forward of %s failed", where, exc_info=True)
        first = str(e).splitlines()[0] if str(e) else ""
        raise WeightError(f"{where}: the model fails on a two-token test input ({type(e).__name__}: {first:.200})") from None
    if not bool(torch.isfinite(logits).all()):
        bad = "NaN" if bool(logits.isnan().any()) else "infinite"
        raise WeightError(
            f"{where}: {bad} logits for a two-token test input: the weights or config values "
            "(rms_norm_eps, rope theta/scaling, adapter weights) cannot produce text"
        )


@contextmanager
def _one_cpu_thread(device: torch.device) -> Iterator[None]:
    """Two tokens are too few to share: with another core busy, OpenMP's waits made this
    forward 50-100x slower on two threads than on one (measured on the tiny test models)."""
    saved = torch.get_num_threads()
    if device.type == "cpu":
        torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(saved)
