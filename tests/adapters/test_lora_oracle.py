"""Plain LoRA against PEFT's LoraModel (one or several adapters, merged or not), and quantized bases."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mistralrs_cli.adapters.lora import LoraLinear
from mistralrs_cli.cli.compose import build_model
from mistralrs_cli.cli.spec import model_spec
from tests.adapters.helpers import pool_greedy, write_adapter
from tests.oracles.tiny_models import tiny_hf_model

TOL = 1e-4
PROMPT = [1, 17, 99, 42, 7, 250, 31, 5, 64, 12]
SEQ = PROMPT + [77, 18, 140, 9, 301, 56]


def peft_lora(dirs):
    """PEFT's LoraModel with every adapter active (their deltas add up)."""
    from peft import PeftModel

    model = PeftModel.from_pretrained(tiny_hf_model("mistral"), str(dirs[0]), adapter_name="a0")
    for i, d in enumerate(dirs[1:], start=1):
        model.load_adapter(str(d), adapter_name=f"a{i}")
    model.base_model.set_adapter([f"a{i}" for i in range(len(dirs))])
    return model.eval()


def ours(base_dir, dirs, merge: bool = False):
    spec = model_spec("lora-mistral", model_id=str(base_dir), adapter=tuple(str(d) for d in dirs),
                      dtype="f32", device="cpu", merge=merge)
    return build_model(spec)


@pytest.fixture(scope="module")
def two_adapters(tmp_path_factory, adapter_dirs):
    """adapter_dirs[0] on all projections plus one on q/v/up only, rank 6, alpha 3."""
    other = write_adapter(tmp_path_factory.mktemp("lora") / "qvu", seed=9, r=6, alpha=3, targets=("q_proj", "v_proj", "up_proj"))
    return [adapter_dirs[0], other]


@pytest.mark.parametrize("n_adapters", [1, 2])
@pytest.mark.parametrize("merge", [False, True])
def test_lora_matches_peft(n_adapters, merge, two_adapters, tiny_mistral_dir):
    dirs = two_adapters[:n_adapters]
    loaded = ours(tiny_mistral_dir, dirs, merge)
    wrapped = [m for m in loaded.model.modules() if isinstance(m, LoraLinear)]
    assert (len(wrapped) == 0) if merge else (len(wrapped) == 14)
    assert loaded.info["lora_merged"] == (14 if merge else 0)
    peft = peft_lora(dirs)
    ids = torch.tensor([SEQ])
    with torch.no_grad():
        expected = peft(ids).logits.float()[0]
        got = loaded.model(ids, torch.arange(len(SEQ))[None])[0]
        plain = tiny_hf_model("mistral")(ids).logits[0]
        want = peft.generate(torch.tensor([PROMPT]), max_new_tokens=16, do_sample=False, eos_token_id=None,
                             pad_token_id=0)[0, len(PROMPT):].tolist()
    assert (got - expected).abs().max().item() < TOL
    assert (plain - expected).abs().max().item() > 100 * TOL  # the adapters matter
    assert pool_greedy(loaded.model, PROMPT, 16, seq_id=None) == want


# PEFT config features: (tensors written, LoraConfig fields)
CONFIGS = {
    "layers-to-transform": (dict(targets=("q_proj", "k_proj", "down_proj"), layers=(1,)), dict(layers_to_transform=[1])),
    "rank-alpha-pattern": (dict(ranks={"k_proj": 2, "down_proj": 6}),
                           dict(rank_pattern={"k_proj": 2, "down_proj": 6}, alpha_pattern={"down_proj": 32})),
    "regex-targets-rslora": (dict(targets=("q_proj", "v_proj")), dict(target_modules=r".*\.(q|v)_proj", use_rslora=True)),
    "exclude-modules": (dict(targets=("q_proj", "v_proj"), layers=(0,)),
                        dict(target_modules=["q_proj", "v_proj"], exclude_modules=["model.layers.1.self_attn.q_proj",
                                                                                     "model.layers.1.self_attn.v_proj"])),
}


@pytest.mark.parametrize("case", list(CONFIGS))
def test_adapter_config_features_match_peft(case, tmp_path, tiny_mistral_dir):
    tensors, config = CONFIGS[case]
    folder = write_adapter(tmp_path / case, seed=4, r=4, alpha=8, **tensors, **config)
    loaded = ours(tiny_mistral_dir, [folder])
    ids = torch.tensor([SEQ])
    with torch.no_grad():
        expected = peft_lora([folder])(ids).logits.float()[0]
        got = loaded.model(ids, torch.arange(len(SEQ))[None])[0]
        plain = tiny_hf_model("mistral")(ids).logits[0]
    assert (got - expected).abs().max().item() < TOL
    assert (plain - expected).abs().max().item() > 10 * TOL


class Int8Linear(nn.Module):
    """A stand-in quantized linear: int8 weights with a per-row scale, no `weight` attribute."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        w = linear.weight.detach()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.register_buffer("scale", w.abs().amax(1, keepdim=True) / 127)
        self.register_buffer("q", torch.round(w / self.scale).to(torch.int8))

    def dequantized(self) -> torch.Tensor:
        return self.q.float() * self.scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.linear(x, self.dequantized().to(x.dtype))


def quantize(loaded):
    """Swap every projection for Int8Linear; returns the dense twin holding the dequantized weights."""
    for layer in loaded.model.model.layers:
        for parent in (layer.self_attn, layer.mlp):
            for name, module in list(parent.named_children()):
                if isinstance(module, nn.Linear):
                    setattr(parent, name, Int8Linear(module))
    return loaded


def dense_twin(loaded):
    """Replace each Int8Linear by an nn.Linear with its dequantized weights (the oracle)."""
    for layer in loaded.model.model.layers:
        for parent in (layer.self_attn, layer.mlp):
            for name, module in list(parent.named_children()):
                if isinstance(module, Int8Linear):
                    dense = nn.Linear(module.in_features, module.out_features, bias=False)
                    dense.weight.data = module.dequantized()
                    setattr(parent, name, dense)
    return loaded


@pytest.mark.parametrize("kind", ["lora-mistral", "x-lora-mistral"])
def test_quantized_base_linears(kind, two_adapters, adapter_dirs, tmp_path, tiny_mistral_dir):
    """Adapters over quantized linears give what they give over the same weights dequantized."""
    from tests.adapters.test_xlora_oracle import build

    xdir, ordering, *_ = build(tmp_path, adapter_dirs, "depth1-layerwise-top2")

    if kind == "lora-mistral":  # merge asked: quantized linears keep their adapters unmerged
        spec = model_spec(kind, model_id=str(tiny_mistral_dir), adapter=tuple(map(str, two_adapters)),
                          dtype="f32", device="cpu", merge=True)
    else:
        spec = model_spec(kind, model_id=str(tiny_mistral_dir), xlora_model_id=str(xdir), order=ordering,
                          dtype="f32", device="cpu")
    base_spec = model_spec("mistral", model_id=str(tiny_mistral_dir), dtype="f32", device="cpu")
    quant = build_model(spec, base_loader=lambda *_: quantize(build_model(base_spec)))
    wrapped = [m for m in quant.model.modules() if isinstance(m, LoraLinear)]
    assert wrapped and all(isinstance(w.base, Int8Linear) for w in wrapped)
    dense = build_model(spec, base_loader=lambda *_: dense_twin(quantize(build_model(base_spec))))
    ids = torch.tensor([SEQ])
    with torch.no_grad():
        a = quant.model(ids, torch.arange(len(SEQ))[None])
        b = dense.model(ids, torch.arange(len(SEQ))[None])
    assert (a - b).abs().max().item() < TOL
