"""X-LoRA requests give the same greedy tokens alone and batched with 8 others admitted mid-run.

Twice: with a minimal continuous-batching driver that hands the model sequence ids and
prompt lengths (chunked prefill, decode and prefill rows in separate calls, padding), and
through the real EngineCore.
"""

from __future__ import annotations

import pytest
import torch

from mistralrs_cli.cli.compose import build_model
from mistralrs_cli.cli.spec import model_spec
from mistralrs_cli.engine import EngineConfig, SamplingParams
from mistralrs_cli.engine.core import EngineCore
from tests.adapters.helpers import new_pool, peft_greedy, peft_xlora, step_batch
from tests.adapters.test_xlora_oracle import build

TARGET = [1, 17, 99, 42, 7, 250, 31, 5, 64, 12]
# (arrival step, prompt length, tokens to generate) of the 8 other requests
OTHERS = [(0, 3, 12), (1, 17, 6), (2, 9, 16), (3, 5, 3), (5, 21, 10), (6, 2, 14), (8, 12, 8), (11, 7, 5)]
SLOTS = 64  # pool slots per sequence in the driver


def workload():
    """(arrival, prompt, max_new): the target first, arriving at step 1, then the others."""
    g = torch.Generator().manual_seed(5)
    others = [(t, torch.randint(3, 320, (n,), generator=g).tolist(), m) for t, n, m in OTHERS]
    return [(1, TARGET, 16), *others]


@torch.no_grad()
def drive(model, requests, chunk: int = 8) -> list[list[int]]:
    """Continuous batching: each step decodes the running rows (B, 1), then prefills chunks (B, Q)."""
    pool, window = new_pool(model, 1 + SLOTS * len(requests)), model.config.sliding_window
    seqs: dict[int, dict] = {}
    outs: list[list[int]] = [[] for _ in requests]
    step = 0
    while len(seqs) < len(requests) or any(not s["done"] for s in seqs.values()):
        for i, (arrival, prompt, _) in enumerate(requests):
            if arrival == step and i not in seqs:
                seqs[i] = {"tokens": list(prompt), "computed": 0, "done": False}
        live = [i for i, s in seqs.items() if not s["done"]]
        decode = [i for i in live if len(seqs[i]["tokens"]) - seqs[i]["computed"] == 1]
        prefill = [i for i in live if i not in decode]
        for group, width in ((decode, 1), (prefill, chunk)):
            if group:
                _run_group(model, pool, window, requests, seqs, outs, group, width)
        step += 1
    return outs


def _run_group(model, pool, window, requests, seqs, outs, group, width):
    feeds = {i: seqs[i]["tokens"][seqs[i]["computed"] : seqs[i]["computed"] + width] for i in group}
    q = max(len(f) for f in feeds.values())
    ids = torch.tensor([feeds[i] + [0] * (q - len(feeds[i])) for i in group])
    pos = torch.tensor([[seqs[i]["computed"] + j if j < len(feeds[i]) else -1 for j in range(q)] for i in group])
    batch = step_batch(pos, torch.tensor([1 + SLOTS * i for i in group]), window,
                       seq_ids=tuple(100 + i for i in group), prompt_lens=tuple(len(requests[i][1]) for i in group))
    logits = model(ids, pos, batch, pool, torch.tensor([len(feeds[i]) - 1 for i in group]))
    for row, i in enumerate(group):
        s = seqs[i]
        s["computed"] += len(feeds[i])
        if s["computed"] == len(s["tokens"]):  # the chunk reached the end: sample
            outs[i].append(int(logits[row].argmax()))
            s["tokens"].append(outs[i][-1])
            if len(outs[i]) == requests[i][2]:
                s["done"] = True
                # one history row per generated token, mid-prompt chunks excluded
                assert model.scalings_history(100 + i).shape == (len(outs[i]), len(model.adapter_names))
                model.forget(100 + i)


@pytest.mark.parametrize("tgt", [None, 1])
def test_driver_alone_equals_batched(tgt, tmp_path, adapter_dirs, tiny_mistral_dir):
    xdir, ordering, dirs, settings, weights = build(tmp_path, adapter_dirs, "depth2-layerwise-temp-3ad")
    spec = model_spec("x-lora-mistral", model_id=str(tiny_mistral_dir), xlora_model_id=str(xdir), order=ordering,
                      dtype="f32", device="cpu", tgt_non_granular_index=tgt)
    model = build_model(spec).model
    requests = workload()
    batched = drive(model, requests)
    for i, (_, prompt, n) in enumerate(requests):
        assert batched[i] == drive(model, [(0, prompt, n)])[0], f"request {i}"
    assert len(model.state) == 0  # every finished sequence was forgotten
    freeze_at = None if tgt is None else len(TARGET) + tgt
    assert batched[0] == peft_greedy(peft_xlora(dirs, settings, weights, freeze_at=freeze_at), TARGET, 16)


@pytest.mark.parametrize("tgt", [None, 0])
def test_engine_alone_equals_batched(tgt, tmp_path, adapter_dirs, tiny_mistral_dir):
    """Through EngineCore: chunked prefill (budget 24 tokens), 4-token blocks, arrivals mid-run."""
    xdir, ordering, dirs, settings, weights = build(tmp_path, adapter_dirs, "depth1-layerwise-top2")
    spec = model_spec("x-lora-mistral", model_id=str(tiny_mistral_dir), xlora_model_id=str(xdir), order=ordering,
                      dtype="f32", device="cpu", tgt_non_granular_index=tgt)
    loaded = build_model(spec)
    requests = workload()
    config = EngineConfig(max_seqs=16, max_batched_tokens=24, block_size=4, kv_blocks=256)
    batched = run_engine(loaded, config, requests)
    alone = [run_engine(loaded, EngineConfig(max_seqs=1, block_size=4, kv_blocks=64), [(0, p, n)])[0]
             for _, p, n in requests]
    assert batched == alone
    freeze_at = None if tgt is None else len(TARGET) + tgt
    assert batched[0] == peft_greedy(peft_xlora(dirs, settings, weights, freeze_at=freeze_at), TARGET, 16)
    # n = 2 forks after the prompt: both choices inherit the parent's state (frozen scalings).
    assert run_engine(loaded, config, [(0, TARGET, 16)], n=2) == [alone[0], alone[0]]
    assert len(loaded.model.state) == 0  # the engine made the model forget every finished sequence


def run_engine(loaded, config, requests, n: int = 1) -> list[list[int]]:
    """Token ids of each (arrival step, prompt, max_new) request run through one EngineCore.

    With n > 1 (one request), the token ids of each of its choices.
    """
    core = EngineCore(loaded, config)
    streams, step = {}, 0
    while len(streams) < len(requests) or core.has_work():
        for i, (arrival, prompt, max_new) in enumerate(requests):
            if arrival == step:
                params = SamplingParams(temperature=0, max_tokens=max_new, ignore_eos=True, n=n)
                request = core.new_request(f"r{i}", prompt, None, params, None, core.abort)
                core.add(request)
                streams[i] = request.stream
        core.step()
        step += 1
        assert step < 1000
    if n > 1:
        return [list(c.token_ids) for c in streams[0].result().choices]
    return [list(streams[i].result().choices[0].token_ids) for i in range(len(requests))]
