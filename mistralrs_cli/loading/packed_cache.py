"""A cache of a GGUF file's int4 weights already in torch's packed layout, so a warm load skips re-packing.

Re-packing the default model's 211 quantized tensors takes ~0.4 s of a ~0.6 s load (measured);
reading the packed tensors back from a safetensors file takes a few tens of milliseconds. The
cache file lives under `$MISTRALRS_CACHE/packed/` (default ~/.cache/mistralrs/packed/) and its
name holds everything the packed bytes depend on: the GGUF's resolved path, size and mtime,
torch's version and the CPU's int4 row-block layout (`quant_linear.block_n()`), and FORMAT. A
changed file, torch or CPU simply gets a new entry. A cache that cannot be read or written is
ignored (the weights are re-packed as without it): it only ever saves time.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from mistralrs_cli.loading.cache_dir import cache_dir
from mistralrs_cli.models.quant_linear import block_n

log = logging.getLogger(__name__)

FORMAT = 1  # bump when the packed layout or the keys change
MIN_BYTES = 8 << 20  # smaller files re-pack faster than a cache file is read (and tests stay out of it)
ENV_OFF = "MISTRALRS_NO_PACKED_CACHE"  # set to 1: never read or write the cache

Terms = list[tuple[torch.Tensor, torch.Tensor]]


def cache_file(gguf: Path) -> Path | None:
    """The cache file for `gguf`, or None when this file is not cached (small, or caching is off)."""
    if os.environ.get(ENV_OFF) == "1":
        return None
    try:
        stat = gguf.stat()
    except OSError:
        return None
    if stat.st_size < MIN_BYTES:
        return None
    key = f"{gguf.resolve()}|{stat.st_size}|{stat.st_mtime_ns}|torch {torch.__version__}|block {block_n()}|v{FORMAT}"
    digest = hashlib.sha256(key.encode()).hexdigest()[:20]
    return cache_dir() / "packed" / f"{gguf.stem}-{digest}.safetensors"


def read(path: Path | None) -> dict[str, Terms] | None:
    """Tensor name -> its packed int4 terms, from the cache file; None when absent or unreadable."""
    if path is None or not path.is_file():
        return None
    try:
        flat = load_file(str(path))
    except Exception as e:  # noqa: BLE001 - a truncated or foreign file: re-pack instead
        log.warning("ignoring the packed-weights cache %s (%s); re-packing", path, e)
        return None
    terms: dict[str, Terms] = {}
    for key in sorted(k for k in flat if ".packed" in k):
        name, i = key.rsplit(".packed", 1)
        terms.setdefault(name, []).append((flat[key], flat[f"{name}.scale_zero{i}"]))
    return terms


def write(path: Path | None, terms: dict[str, Terms]) -> None:
    """Store `terms` atomically (a temporary file renamed into place); failures are only logged."""
    if path is None or not terms:
        return
    flat = {}
    for name, pairs in terms.items():
        for i, (packed, scale_zero) in enumerate(pairs):
            flat[f"{name}.packed{i}"] = packed.contiguous()
            flat[f"{name}.scale_zero{i}"] = scale_zero.contiguous()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
        os.close(fd)
        try:
            save_file(flat, tmp)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    except OSError as e:
        log.info("could not write the packed-weights cache %s (%s)", path, e)
