"""X-LoRA against PEFT's XLoraModel on a tiny random Mistral: logits within 1e-4 (f32), same greedy tokens."""

from __future__ import annotations

import pytest
import torch

from mistralrs_cli.adapters.xlora import XLoraModel
from mistralrs_cli.cli.compose import build_model
from mistralrs_cli.cli.spec import model_spec
from tests.adapters.helpers import (
    classifier_weights,
    new_pool,
    peft_greedy,
    peft_xlora,
    pool_greedy,
    step_batch,
    write_adapter,
    write_ordering,
    write_xlora,
)

TOL = 1e-4
PROMPT = [1, 17, 99, 42, 7, 250, 31, 5, 64, 12, 200, 33]
SEQ = PROMPT + [77, 18, 140, 9, 301, 56, 23, 11]

# name: (xlora_config settings, adapters used, layout, classifier tensor names, extra)
CASES = {
    "depth1-global-2ad": (dict(xlora_depth=1), [0, 1], "canonical", "mistralrs", {}),
    "depth2-layerwise-temp-3ad": (
        dict(xlora_depth=2, xlora_size=16, layerwise_scalings=True, softmax_temperature=0.5), [0, 1, 2], "canonical", "peft", {}),
    "depth1-layerwise-top2": (dict(layerwise_scalings=True, top_k_lora=2), [0, 1, 2], "flat", "mistralrs", {}),
    "depth3-top1-softmax-topk": (
        dict(xlora_depth=3, xlora_size=16, enable_softmax=False, enable_softmax_topk=True, top_k_lora=1, xlora_dropout_p=0.0),
        [2, 0, 1], "canonical", "peft", {}),
    "pass-value-global-weight-top2": (
        dict(xlora_depth=2, xlora_size=8, layerwise_scalings=True, scaling_pass_value=0.4, global_scaling_weight=0.7,
             top_k_lora=2, enable_softmax_topk=True), [0, 1, 2], "flat", "mistralrs", {}),
    "no-bias-subset-targets": (dict(xlora_depth=2, xlora_size=16, use_bias=False), [0, 1], "canonical", "mistralrs",
                               {"targets": ("q_proj", "v_proj", "down_proj")}),
}


def build(tmp_path, adapter_dirs, case: str, **spec_kw):
    """(our loaded X-LoRA model, PEFT oracle) for one case."""
    settings, used, layout, names, extra = CASES[case]
    targets = extra.get("targets")
    dirs = [adapter_dirs[i] for i in used]
    if targets:  # adapters on a subset of projections, written for this case
        dirs = [write_adapter(tmp_path / f"sub{i}", seed=10 + i, r=4 + 2 * i, targets=targets) for i in range(len(used))]
    n_layers = 2 * len(targets or range(7))
    depth, size = settings.get("xlora_depth", 1), settings.get("xlora_size", 16)
    weights = classifier_weights(len(dirs), n_layers, depth, size, settings.get("layerwise_scalings", False),
                                 bias=settings.get("use_bias", True))
    order = [f"expert_{i}" for i in range(len(dirs))]
    xdir = write_xlora(tmp_path / "x", dict(zip(order, dirs, strict=True)), settings, weights, layout, names)
    ordering = write_ordering(tmp_path / "ordering.json", order, targets or tuple(
        ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]))
    return xdir, ordering, dirs, settings, weights


def load_ours(base_dir, xdir, ordering, **kw) -> XLoraModel:
    spec = model_spec("x-lora-mistral", model_id=str(base_dir), xlora_model_id=str(xdir), order=ordering,
                      dtype="f32", device="cpu", **kw)
    return build_model(spec).model


@pytest.mark.parametrize("case", list(CASES))
def test_logits_and_greedy_match_peft(case, tmp_path, adapter_dirs, tiny_mistral_dir):
    xdir, ordering, dirs, settings, weights = build(tmp_path, adapter_dirs, case)
    ours = load_ours(tiny_mistral_dir, xdir, ordering)
    assert isinstance(ours, XLoraModel)
    peft = peft_xlora(dirs, settings, weights)
    ids = torch.tensor([SEQ])
    with torch.no_grad():
        expected = peft(ids).logits.float()[0]  # (T, vocab)
        full = ours(ids, torch.arange(len(SEQ))[None])[0]
        incremental = _prefill_then_feed(ours, SEQ, len(PROMPT))
    assert (full - expected).abs().max().item() < TOL
    assert (incremental - expected[len(PROMPT) - 1 :]).abs().max().item() < TOL
    # The adapters must matter: the X-LoRA logits are far from the base model's.
    base_logits = ours.base(ids, torch.arange(len(SEQ))[None])[0]
    assert (base_logits - expected).abs().max().item() > 100 * TOL
    assert pool_greedy(ours, PROMPT, 16) == peft_greedy(peft, PROMPT, 16)


def _prefill_then_feed(model, seq: list[int], n_prompt: int) -> torch.Tensor:
    """Logits from the pool: the prompt's last position, then each later token fed one by one."""
    pool, window, base = new_pool(model), model.config.sliding_window, torch.tensor([1])
    pos = torch.arange(n_prompt)[None]
    rows = [model(torch.tensor([seq[:n_prompt]]), pos, step_batch(pos, base, window), pool, torch.tensor([n_prompt - 1]))]
    for p in range(n_prompt, len(seq)):
        pos = torch.tensor([[p]])
        rows.append(model(torch.tensor([[seq[p]]]), pos, step_batch(pos, base, window), pool, torch.tensor([0])))
    return torch.cat(rows)


@pytest.mark.parametrize("n, prompt_len, chunk", [(0, True, None), (3, True, 5), (2, False, 5)])
def test_non_granular_index_freezes_scalings(n, prompt_len, chunk, tmp_path, adapter_dirs, tiny_mistral_dir):
    """Scalings computed on the prompt and the first N generated tokens, then frozen (PEFT patched to do so)."""
    xdir, ordering, dirs, settings, weights = build(tmp_path, adapter_dirs, "depth2-layerwise-temp-3ad")
    ours = load_ours(tiny_mistral_dir, xdir, ordering, tgt_non_granular_index=n)
    calls = _count_scaling_passes(ours)
    got = pool_greedy(ours, PROMPT, 16, seq_id=3, give_prompt_len=prompt_len, chunk=chunk)
    expected = peft_greedy(peft_xlora(dirs, settings, weights, freeze_at=len(PROMPT) + n), PROMPT, 16)
    assert got == expected
    free = peft_greedy(peft_xlora(dirs, settings, weights), PROMPT, 16)
    assert free != expected  # freezing changes the output here, so the test can tell
    prefill_calls = -(-len(PROMPT) // (chunk or len(PROMPT)))
    assert calls[0] == prefill_calls + n  # the scaling pass is skipped once every token is frozen
    assert ours.state.peek(3).frozen is not None
    ours.forget(3)
    assert ours.state.peek(3) is None


def _count_scaling_passes(model: XLoraModel) -> list[int]:
    """Count classifier runs (one per scaling pass)."""
    calls = [0]
    forward = model.classifier.forward

    def counted(*args, **kwargs):
        calls[0] += 1
        return forward(*args, **kwargs)

    model.classifier.forward = counted
    return calls


def test_scalings_data_match_peft(tmp_path, adapter_dirs, tiny_mistral_dir):
    """last_scalings (latest token, per layer) and scalings_history (per generated token, layer mean)."""
    xdir, ordering, dirs, settings, weights = build(tmp_path, adapter_dirs, "depth1-layerwise-top2")
    ours = load_ours(tiny_mistral_dir, xdir, ordering)
    generated = pool_greedy(ours, PROMPT, 8, seq_id=42)  # 1 prefill + 8 decode calls
    peft = peft_xlora(dirs, settings, weights)
    with torch.no_grad():
        peft(torch.tensor([PROMPT + generated]))
    expected = peft.base_model.get_latest_scalings()[0]  # (T, n_lora_layers, n_adapters)
    last = ours.last_scalings(42)
    assert last.shape == (14, 3) and (last - expected[-1]).abs().max().item() < TOL
    history = ours.scalings_history(42)
    assert history.shape == (9, 3)
    assert (history - expected[len(PROMPT) - 1 :].mean(1)).abs().max().item() < TOL
    assert ours.last_scalings(43) is None and ours.scalings_history(43) is None
    assert len(ours.layer_names) == 14 and ours.layer_names[0] == "model.layers.0.self_attn.q_proj"


def test_state_is_bounded_without_forget(tmp_path, adapter_dirs, tiny_mistral_dir):
    xdir, ordering, *_ = build(tmp_path, adapter_dirs, "depth1-global-2ad")
    ours = load_ours(tiny_mistral_dir, xdir, ordering, tgt_non_granular_index=0)
    ours.state.capacity = 4
    for sid in range(10):
        pool_greedy(ours, PROMPT[:4], 2, seq_id=sid)
    assert len(ours.state) == 4 and 9 in ours.state and 0 not in ours.state
    ours.fork(9, 20)
    assert ours.scalings_history(20).shape == (3, 2) and ours.state.peek(20).frozen is not None
    ours.state.peek(20).history.clear()
    assert ours.scalings_history(9).shape == (3, 2)  # the child's history is a copy
