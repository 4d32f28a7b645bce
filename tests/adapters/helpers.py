"""Building tiny LoRA adapters and X-LoRA folders on disk, and the PEFT oracles that read them."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import save_file

from mistralrs_cli.adapters.ordering import dump_ordering, generate_ordering
from mistralrs_cli.models.attention import AttentionBatch
from tests.oracles.tiny_models import tiny_config, tiny_hf_model

ALL = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
PARENT = {p: ("mlp" if p in ("gate_proj", "up_proj", "down_proj") else "self_attn") for p in ALL}


def projection_shape(proj: str) -> tuple[int, int]:
    """(in, out) of a projection of the tiny Mistral (hidden 64, 4 heads, 2 KV heads, mlp 128)."""
    cfg = tiny_config()
    h, i, hd = cfg.hidden_size, cfg.intermediate_size, cfg.hidden_size // cfg.num_attention_heads
    return {
        "q_proj": (h, 4 * hd), "k_proj": (h, 2 * hd), "v_proj": (h, 2 * hd), "o_proj": (4 * hd, h),
        "gate_proj": (h, i), "up_proj": (h, i), "down_proj": (i, h),
    }[proj]


def write_adapter(
    folder: Path, seed: int, r: int = 4, alpha: float = 8.0, targets: tuple[str, ...] = ALL,
    n_layers: int = 2, std: float = 0.1, layers: tuple[int, ...] | None = None, ranks: dict | None = None, **config,
) -> Path:
    """A PEFT adapter folder: adapter_config.json (written by peft) and random A/B under PEFT names.

    Tensors cover `targets` in `layers` (default all), rank `ranks.get(proj, r)`; `config`
    goes to LoraConfig (target_modules defaults to `targets`).
    """
    from peft import LoraConfig

    folder.mkdir(parents=True, exist_ok=True)
    config.setdefault("target_modules", list(targets))
    LoraConfig(r=r, lora_alpha=alpha, **config).save_pretrained(str(folder))
    g = torch.Generator().manual_seed(seed)
    tensors = {}
    for layer in layers if layers is not None else range(n_layers):
        for proj in targets:
            n_in, n_out = projection_shape(proj)
            rank = (ranks or {}).get(proj, r)
            key = f"base_model.model.model.layers.{layer}.{PARENT[proj]}.{proj}"
            tensors[f"{key}.lora_A.weight"] = torch.randn(rank, n_in, generator=g) * std
            tensors[f"{key}.lora_B.weight"] = torch.randn(n_out, rank, generator=g) * std
    save_file(tensors, str(folder / "adapter_model.safetensors"))
    return folder


def classifier_weights(
    n_adapters: int, n_layers: int, depth: int, size: int = 16, layerwise: bool = False, seed: int = 0,
    bias: bool = True,
) -> list[tuple[torch.Tensor, torch.Tensor | None]]:
    """Random (weight, bias) of each classifier linear, large enough that scalings differ per token."""
    g = torch.Generator().manual_seed(100 + seed)
    n_out = n_adapters * n_layers if layerwise else n_adapters
    dims = [64] + [size] * (depth - 1) + [n_out]
    return [
        (torch.randn(dims[j + 1], dims[j], generator=g) * 1.5, torch.randn(dims[j + 1], generator=g) * 0.5 if bias else None)
        for j in range(depth)
    ]


def write_xlora(
    root: Path, adapters: dict[str, Path], settings: dict, weights: list, layout: str = "canonical",
    names: str = "mistralrs", base_model_id: str | None = None,
) -> Path:
    """An X-LoRA model folder: xlora_config.json, the classifier, adapters in subfolders or flat."""
    root.mkdir(parents=True, exist_ok=True)
    config = {"hidden_size": 64, "adapters": {n: str(p) for n, p in adapters.items()}, **settings}
    if base_model_id:
        config["base_model_id"] = base_model_id
    (root / "xlora_config.json").write_text(json.dumps(config))
    tensors = {}
    for j, (w, b) in enumerate(weights):
        if names == "peft":  # Sequential indices: Linear, ReLU, (Dropout,) Linear...
            prefix = f"internal_xlora_classifier.layers.{j * 2}"
        else:
            prefix = "last" if j == len(weights) - 1 else f"inner.{j}"
        tensors[f"{prefix}.weight"] = w
        if b is not None:
            tensors[f"{prefix}.bias"] = b
    save_file(tensors, str(root / "xlora_classifier.safetensors"))
    for name, src in adapters.items():
        if layout == "canonical":
            shutil.copytree(src, root / name)
        else:
            for f in ("adapter_config.json", "adapter_model.safetensors"):
                shutil.copy(src / f, root / f"{name}_{f}")
    return root


def write_ordering(path: Path, order: list[str], targets: tuple[str, ...] = ALL, base: str | None = None, **edit) -> Path:
    """An ordering file for the tiny 2-layer model, optionally edited."""
    data = generate_ordering(2, targets, tuple(order), base)
    data.update(edit)
    path.write_text(dump_ordering(data))
    return path


def peft_xlora(adapter_dirs: list[Path], settings: dict, weights: list, freeze_at: int | None = None):
    """PEFT's XLoraModel on the tiny Mistral with our classifier weights (adapters named "0", "1"...).

    `freeze_at` emulates tgt_non_granular_index: scalings at positions >= freeze_at are replaced
    by those at freeze_at - 1.
    """
    from peft import XLoraConfig, get_peft_model

    base = tiny_hf_model("mistral")
    base.config.use_cache = False
    keys = ("xlora_depth", "xlora_size", "layerwise_scalings", "enable_softmax", "enable_softmax_topk",
            "softmax_temperature", "top_k_lora", "scaling_pass_value", "global_scaling_weight", "xlora_dropout_p")
    cfg = XLoraConfig(task_type="CAUSAL_LM", hidden_size=64, adapters={str(i): str(d) for i, d in enumerate(adapter_dirs)},
                      **{k: v for k, v in settings.items() if k in keys})
    model = get_peft_model(base, cfg).eval()
    clf = model.base_model.internal_xlora_classifier
    linears = [m for m in clf.layers if isinstance(m, torch.nn.Linear)]
    with torch.no_grad():
        for lin, (w, b) in zip(linears, weights, strict=True):
            lin.weight.copy_(w)
            lin.bias.copy_(b if b is not None else torch.zeros_like(lin.bias))
    if freeze_at is not None:
        forward = clf.forward

        def frozen(*args, **kwargs):
            s = forward(*args, **kwargs)  # (B, T, n_layers, n_adapters)
            if s.shape[1] > freeze_at:
                s = s.clone()
                s[:, freeze_at:] = s[:, freeze_at - 1 : freeze_at]
            return s

        clf.forward = frozen
    return model


@torch.no_grad()
def peft_greedy(model, prompt: list[int], steps: int) -> list[int]:
    """Greedy decoding by re-running PEFT on the whole sequence each step (X-LoRA has no cache there)."""
    ids = list(prompt)
    for _ in range(steps):
        ids.append(int(model(torch.tensor([ids])).logits[0, -1].argmax()))
    return ids[len(prompt) :]


def new_pool(model, slots: int = 256) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """A zeroed KV pool with the model's `num_kv_layers` layers."""
    cfg = model.config
    shape = (slots, cfg.num_key_value_heads, cfg.head_dim)
    return [(torch.zeros(shape), torch.zeros(shape)) for _ in range(model.num_kv_layers)]


def step_batch(positions: torch.Tensor, slot_base: torch.Tensor, window, seq_ids=None, prompt_lens=None) -> AttentionBatch:
    """AttentionBatch for rows (B, Q) of positions (-1 = padding), each row owning slots slot_base[b] + pos."""
    valid = positions >= 0
    write = torch.where(valid, slot_base[:, None] + positions, 0)
    k_len = int(positions.max()) + 1
    k_pos = torch.arange(k_len).expand(positions.shape[0], k_len)
    k_valid = k_pos <= positions.max(1, keepdim=True).values
    k_pos = torch.where(k_valid, k_pos, -1)
    batch = AttentionBatch.build(positions, k_pos, window, write, torch.where(k_valid, slot_base[:, None] + k_pos, 0))
    batch.seq_ids = seq_ids
    if prompt_lens is not None:
        batch.prompt_lens = prompt_lens
    return batch


@torch.no_grad()
def pool_greedy(model, prompt: list[int], steps: int, seq_id: int | None = 7, give_prompt_len: bool = True,
                chunk: int | None = None) -> list[int]:
    """Greedy decoding through the KV pool: prefill (in chunks if given), then one token per step."""
    pool, window = new_pool(model), model.config.sliding_window
    base = torch.tensor([1])
    ids, out = list(prompt), []
    ids_kw = dict(seq_ids=(seq_id,) if seq_id is not None else None,
                  prompt_lens=(len(prompt),) if give_prompt_len and seq_id is not None else None)
    chunk = chunk or len(prompt)
    for start in range(0, len(prompt), chunk):
        pos = torch.arange(start, min(start + chunk, len(prompt)))[None]
        logits = model(torch.tensor([ids[start : start + chunk]]), pos, step_batch(pos, base, window, **ids_kw),
                       pool, torch.tensor([pos.shape[1] - 1]))
    for _ in range(steps):
        out.append(int(logits.argmax(-1)))
        ids.append(out[-1])
        pos = torch.tensor([[len(ids) - 1]])
        logits = model(torch.tensor([[ids[-1]]]), pos, step_batch(pos, base, window, **ids_kw), pool, torch.tensor([0]))
    return out
