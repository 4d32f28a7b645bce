"""`load_gguf(source, options, name)`: a GGUF Mistral/Llama model (local file, folder or Hub repo) -> LoadedModel.

Weights: with `--dtype auto` on CPU, linears stay 4-bit (torch's int4 kernel, bf16 compute,
f32 activations) and the embedding stays in its GGUF encoding: fast and small. An explicit
`--dtype f32|bf16|f16`, or a GPU, dequantizes everything to that dtype; `--dtype f32` is the
exact path (bit-identical to gguf's reference dequantization).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

from mistralrs_cli.errors import GGUFError, ModelSourceError
from mistralrs_cli.loading.devices import pick_device, pick_dtype
from mistralrs_cli.loading.gguf_config import config_from_gguf
from mistralrs_cli.loading.gguf_file import GGUFFile
from mistralrs_cli.loading.gguf_tokenizer import gguf_tokenizer
from mistralrs_cli.loading.gguf_weights import load_dense, load_quantized
from mistralrs_cli.loading.hf_tokenizer import load_hf_tokenizer
from mistralrs_cli.loading.loaded import LoadedModel
from mistralrs_cli.loading.source import ModelSource
from mistralrs_cli.loading.spec import GgufSource, LoadOptions
from mistralrs_cli.loading.tokenizer import TextTokenizer
from mistralrs_cli.models.config import ModelConfig

log = logging.getLogger(__name__)


def resolve_gguf_path(source: GgufSource, options: LoadOptions) -> Path:
    """The local .gguf file for `-m/--quantized-model-id` and `-f/--quantized-filename`.

    `-f` may be a path to a file (then `-m` may be empty); otherwise it names a file inside the
    local folder or Hub repo given by `-m` (downloaded into the HF cache when needed).
    """
    filename = source.quantized_filename
    if not filename:
        raise ModelSourceError("gguf-mistral: -f/--quantized-filename is required (a .gguf file name or path)")
    direct = Path(filename).expanduser()
    if direct.is_file() and (not source.quantized_model_id or direct.is_absolute()):
        return direct
    if not source.quantized_model_id:
        raise ModelSourceError(f"gguf-mistral: {filename}: no such file (or pass -m/--quantized-model-id)")
    return ModelSource(source.quantized_model_id, options.revision, options.token_source).get(filename)


def load_gguf(source: GgufSource, options: LoadOptions, name: str) -> LoadedModel:
    """Load the GGUF model of `source`; `name` is the model's display name."""
    return load_gguf_file(resolve_gguf_path(source, options), options, name, source.tok_model_id)


def load_gguf_file(
    path: Path, options: LoadOptions, name: str | None = None, tok_model_id: str | None = None
) -> LoadedModel:
    """Load a local GGUF file (named `name`, default its file name) with the given options.

    The tokenizer is the GGUF's own, or that of the HF folder/Hub id `tok_model_id`.
    """
    start = time.perf_counter()
    g = GGUFFile(path)
    cfg = config_from_gguf(g)
    device = pick_device(options.device)
    quantized = options.dtype == "auto" and device.type == "cpu"
    if quantized:
        with _single_thread():
            model, kinds = load_quantized(g, cfg)
        dtype = torch.float32  # activations; the int4 matmuls compute in bf16 internally
        weights = "int4 from GGUF (torch CPU int4 matmul)"
    else:
        dtype = pick_dtype(options.dtype, device)
        model = load_dense(g, cfg, dtype, device)
        kinds = {}
        weights = f"dequantized to {str(dtype).removeprefix('torch.')}"
    tokenizer = _tokenizer(g, options, tok_model_id)
    tokenizer.add_eos_ids(cfg.eos_token_ids)
    _check_vocab(g, cfg, tokenizer)
    types: dict[str, int] = {}
    for info in g.tensors.values():
        types[info.type_name] = types.get(info.type_name, 0) + 1
    info = {
        "format": "gguf",
        "file": str(path),
        "tensor_types": types,
        "weights": weights,
        "storage": kinds,
        "load_seconds": round(time.perf_counter() - start, 3),
    }
    log.info("loaded %s in %.2fs (%s)", path, info["load_seconds"], weights)
    return LoadedModel(model, cfg, tokenizer, name or path.name, device, dtype, info)


@contextmanager
def _single_thread() -> Iterator[None]:
    """Run the load's many small tensor ops on one thread: with the other core busy, OpenMP's
    fork/join waits made them 2-3x slower (measured), and one thread loses nothing when idle."""
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(saved)


def _tokenizer(g: GGUFFile, options: LoadOptions, tok_model_id: str | None) -> TextTokenizer:
    if tok_model_id:
        source = ModelSource(tok_model_id, options.revision, options.token_source)
        return load_hf_tokenizer(source, None, options.chat_template)
    return gguf_tokenizer(g, options.chat_template)


def _check_vocab(g: GGUFFile, cfg: ModelConfig, tokenizer: TextTokenizer) -> None:
    embd = g.tensors.get("token_embd.weight")
    rows = embd.shape[0] if embd is not None else cfg.vocab_size
    if rows != cfg.vocab_size:
        raise GGUFError(f"{g.path}: token_embd.weight has {rows} rows but the metadata says vocab_size {cfg.vocab_size}")
    if tokenizer.vocab_size > rows:
        raise GGUFError(
            f"{g.path}: vocab size mismatch: the tokenizer has {tokenizer.vocab_size} tokens, "
            f"the embeddings only {rows} rows"
        )
