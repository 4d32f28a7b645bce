"""The model contract (models/contract.py): both models declare it, and the engine runs any model that does.

The engine reads `num_kv_layers`, `prefix_cache_safe` and `sequence_hooks` from the model
and never probes it; a stateful model's hooks hear of every fork and every finished sequence.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn

from mistralrs_cli.adapters.classifier import XLoraClassifier
from mistralrs_cli.adapters.lora import LoraLinear
from mistralrs_cli.adapters.xlora import XLoraModel
from mistralrs_cli.adapters.xlora_config import XLoraSettings
from mistralrs_cli.engine import EngineConfig, RequestOutput, SamplingParams
from mistralrs_cli.engine.core import EngineCore
from mistralrs_cli.models.attention import AttentionBatch, KVLayer
from mistralrs_cli.models.config import ModelConfig
from mistralrs_cli.models.contract import CausalLM, SequenceHooks
from mistralrs_cli.models.mistral import MistralForCausalLM
from tests.engine.helpers import prompts, run_alone

CFG = ModelConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, head_dim=8, sliding_window=8)
GREEDY = SamplingParams(temperature=0.0, max_tokens=5, ignore_eos=True)


def _xlora(tgt: int | None) -> XLoraModel:
    """A random two-adapter X-LoRA on every q_proj of a random tiny Mistral, built without files."""
    torch.manual_seed(0)
    base = MistralForCausalLM(CFG).eval()
    paths = [f"model.layers.{i}.self_attn.q_proj" for i in range(CFG.num_hidden_layers)]
    wrappers = []
    for path in paths:
        parent_path, _, attr = path.rpartition(".")
        parent = base.get_submodule(parent_path)
        pairs = [(torch.randn(4, 32) * 0.1, torch.randn(32, 4) * 0.1, 2.0) for _ in range(2)]
        wrapper = LoraLinear(getattr(parent, attr), pairs, torch.float32, torch.device("cpu"))
        setattr(parent, attr, wrapper)
        wrappers.append(wrapper)
    settings = XLoraSettings(hidden_size=32, adapters=("a", "b"))
    classifier = XLoraClassifier(settings, [nn.Linear(32, 2)], len(paths), 2).eval()
    return XLoraModel(base, classifier, wrappers, ("a", "b"), paths, tgt).eval()


def test_mistral_declares_a_stateless_contract():
    model = MistralForCausalLM(CFG)
    assert isinstance(model, CausalLM)
    assert model.sequence_hooks is None and model.prefix_cache_safe is True
    assert model.num_kv_layers == CFG.num_hidden_layers and model.config is CFG


@pytest.mark.parametrize("tgt", [None, 1])
def test_xlora_declares_its_hooks(tgt):
    model = _xlora(tgt)
    assert isinstance(model, CausalLM)
    assert isinstance(model.sequence_hooks, SequenceHooks)
    assert model.sequence_hooks.adapter_names == ("a", "b")
    assert model.num_kv_layers == 2 * CFG.num_hidden_layers and model.config is CFG
    assert model.prefix_cache_safe is (tgt is None)  # frozen scalings: no prefix sharing


class RecordingHooks:
    """Per-sequence hooks that record what the engine tells them."""

    adapter_names = ("left", "right")

    def __init__(self) -> None:
        self.forks: list[tuple[int, int]] = []
        self.forgotten: list[int] = []

    def fork(self, parent_seq_id: int, child_seq_id: int) -> None:
        self.forks.append((parent_seq_id, child_seq_id))

    def forget(self, seq_id: int) -> None:
        self.forgotten.append(seq_id)

    def scalings_history(self, seq_id: int) -> torch.Tensor | None:
        return torch.full((64, 2), 0.5)  # more rows than tokens: the engine keeps one per token


class Stateful(nn.Module):
    """Not a MistralForCausalLM: it declares the contract itself, with a spare KV layer and hooks."""

    prefix_cache_safe = False

    def __init__(self, base: MistralForCausalLM) -> None:
        super().__init__()
        self.base = base
        self.hooks = RecordingHooks()
        self.seen: set[int] = set()  # every sequence id the engine ran

    @property
    def config(self) -> ModelConfig:
        return self.base.config

    @property
    def num_kv_layers(self) -> int:
        return self.base.num_kv_layers + 1

    @property
    def sequence_hooks(self) -> RecordingHooks:
        return self.hooks

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, batch: AttentionBatch | None = None,
                kv: list[KVLayer] | None = None, last_index: torch.Tensor | None = None) -> torch.Tensor:
        assert kv is not None and len(kv) == self.num_kv_layers  # the engine allocated what was declared
        assert batch is not None and batch.seq_ids is not None
        self.seen.update(batch.seq_ids)
        return self.base(input_ids, positions, batch, kv[1:], last_index)


def _drive(core: EngineCore, requests: list[tuple[list[int], SamplingParams, dict | None]]) -> list[RequestOutput]:
    """Add every request, step until idle; outputs in order."""
    streams = []
    for i, (prompt, params, extensions) in enumerate(requests):
        request = core.new_request(f"r{i}", prompt, None, params, extensions, core.abort)
        core.add(request)
        streams.append(request.stream)
    while core.has_work():
        core.step()
    return [s.result() for s in streams]


def test_engine_runs_any_model_that_declares_the_contract(tiny_mistral):
    model = Stateful(tiny_mistral.model)
    assert isinstance(model, CausalLM) and not isinstance(model, MistralForCausalLM)
    core = EngineCore(dataclasses.replace(tiny_mistral, model=model), EngineConfig(max_seqs=8, prefix_caching=True))
    assert len(core.runner.kv) == tiny_mistral.config.num_hidden_layers + 1
    assert core.blocks.prefix_caching is False  # the model said its KV cannot be shared
    one, three = prompts(2)
    out_one, out_three = _drive(core, [(one, GREEDY, {"xlora_scalings": True}),
                                       (three, dataclasses.replace(GREEDY, n=3), None)])
    # Same tokens as the plain model: the engine ran the wrapper exactly like MistralForCausalLM.
    assert out_one.choices[0].token_ids == run_alone(tiny_mistral, one, GREEDY).choices[0].token_ids
    alone = run_alone(tiny_mistral, three, GREEDY).choices[0].token_ids
    assert [c.token_ids for c in out_three.choices] == [alone] * 3  # greedy: every choice alike
    hooks = model.hooks
    # n = 3: two choices forked from the one that ran the prompt.
    assert len(hooks.forks) == 2 and len({p for p, _ in hooks.forks}) == 1
    assert len(model.seen) == 4 and {c for _, c in hooks.forks} < model.seen
    # Every finished sequence was forgotten, once.
    assert sorted(hooks.forgotten) == sorted(model.seen)
    # The declared history reached the store for the request that asked, one row per token.
    (choice,) = core.scalings.get("r0").values()
    assert choice.adapters == ("left", "right") and choice.scalings.shape == (GREEDY.max_tokens, 2)
    assert core.scalings.get("r1") == {}


def test_aborted_sequences_are_forgotten(tiny_mistral):
    model = Stateful(tiny_mistral.model)
    core = EngineCore(dataclasses.replace(tiny_mistral, model=model), EngineConfig(max_seqs=4))
    request = core.new_request("r0", prompts(1)[0], None, dataclasses.replace(GREEDY, n=2), None, core.abort)
    core.add(request)
    core.step()  # the prompt runs, the second choice forks
    core.abort("r0")
    ((parent, child),) = model.hooks.forks
    assert model.seen == {parent}  # the child has not run yet, yet it is forgotten too
    assert sorted(model.hooks.forgotten) == sorted([parent, child])
    assert [c.finish_reason for c in request.stream.result().choices] == ["abort", "abort"]
