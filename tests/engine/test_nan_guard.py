"""Run-time NaN guard: a choice whose logits are not finite ends with finish_reason "error"; the rest go on."""

from __future__ import annotations

import asyncio

import pytest
import torch

from mistralrs_cli.engine import Engine, EngineConfig, EngineError, SamplingParams
from mistralrs_cli.engine.core import EngineCore
from mistralrs_cli.frontends.batch import _answer
from mistralrs_cli.frontends.batch_io import BatchRequest
from mistralrs_cli.frontends.chat import EngineChatBackend
from mistralrs_cli.frontends.openai_convert import chat_response
from tests.engine.helpers import prompts, run_alone, run_core

GREEDY = SamplingParams(temperature=0.0, max_tokens=8, ignore_eos=True)


def _poison(core: EngineCore, request_id: str | None, after: int, value: float = float("nan"), seed: int = -1) -> None:
    """Make the logits row of a request's choices (by id, or by its seed) non-finite after `after` tokens."""
    model = core.runner.model

    def forward(ids, q_pos, batch, kv, last):
        logits = model(ids, q_pos, batch, kv, last)
        live = {s.seq_id: s for s in core.scheduler.running}
        for row, seq_id in enumerate(batch.seq_ids):
            seq = live.get(seq_id)
            chosen = seq is not None and (seq.request.request_id == request_id or seq.params.seed == seed)
            if chosen and seq.num_output >= after:
                logits[row, 5] = value
        return logits

    core.runner.model = forward


def test_nan_row_ends_only_its_choice(tiny_mistral):
    good, bad = prompts(2)
    core = EngineCore(tiny_mistral, EngineConfig(max_seqs=4))
    _poison(core, "r1", after=3)
    out_good, out_bad = run_core(tiny_mistral, core.config, [(0, good, GREEDY), (0, bad, GREEDY)], core)
    choice = out_bad.choices[0]
    assert choice.finish_reason == "error" and "non-finite logits" in (choice.error or "")
    assert len(choice.token_ids) == 3  # the tokens sampled from finite logits are kept
    assert out_bad.usage is not None and out_bad.usage.completion_tokens == 3
    # The other sequence of the batch finishes normally, with the output it has alone.
    reference = run_alone(tiny_mistral, good, GREEDY)
    assert out_good.choices[0].finish_reason == "length"
    assert out_good.choices[0].token_ids == reference.choices[0].token_ids
    assert core.stats().running == 0


def test_infinity_at_the_prompt_ends_every_choice_still_to_fork(tiny_mistral):
    (prompt,) = prompts(1, seed=3)
    core = EngineCore(tiny_mistral, EngineConfig(max_seqs=4))
    _poison(core, "r0", after=0, value=float("inf"))
    params = SamplingParams(temperature=1.0, seed=1, n=3, max_tokens=4)
    (out,) = run_core(tiny_mistral, core.config, [(0, prompt, params)], core)
    assert [c.finish_reason for c in out.choices] == ["error"] * 3
    assert all(c.token_ids == [] for c in out.choices)


def test_engine_reports_error_finish_in_openai_response(tiny_mistral):
    with Engine(tiny_mistral, EngineConfig(max_seqs=4)) as engine:
        _poison(engine.core, "bad", after=1)
        bad = engine.submit(prompts(1)[0], params=GREEDY, request_id="bad")
        good = engine.submit(prompts(2)[1], params=GREEDY, request_id="good")
        out_bad, out_good = bad.result(), good.result()
    body = chat_response(out_bad, "tiny")
    assert body["choices"][0]["finish_reason"] == "error"
    assert chat_response(out_good, "tiny")["choices"][0]["finish_reason"] == "length"
    assert len(out_good.choices[0].token_ids) == GREEDY.max_tokens


def test_guard_leaves_finite_runs_alone(tiny_mistral):
    # Large but finite logits are a real model's business, not an error.
    core = EngineCore(tiny_mistral, EngineConfig(max_seqs=4))
    _poison(core, "r0", after=0, value=torch.finfo(torch.float32).max)
    (out,) = run_core(tiny_mistral, core.config, [(0, prompts(1)[0], GREEDY)], core)
    assert out.choices[0].finish_reason == "length"


def test_chat_reply_raises_and_batch_writes_an_error_record(tiny_mistral):
    with Engine(tiny_mistral, EngineConfig(max_seqs=4)) as engine:
        _poison(engine.core, None, after=2, seed=13)
        reply = EngineChatBackend(engine, SamplingParams()).stream_chat(
            [{"role": "user", "content": "Hi"}], {"seed": 13, "max_tokens": 8, "ignore_eos": True})
        with pytest.raises(EngineError, match="non-finite logits"):
            list(reply)  # the chat REPL prints this as one error line
        body = {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 8, "logit_bias": {"2": -100}}
        bad = BatchRequest(1, "bad", "/v1/chat/completions", {**body, "seed": 13})
        good = BatchRequest(2, "good", "/v1/chat/completions", {**body, "seed": 14})

        async def both():
            return await asyncio.gather(_answer(engine, bad, SamplingParams()), _answer(engine, good, SamplingParams()))

        (bad_record, bad_usage), (good_record, _) = asyncio.run(both())
    assert bad_record["response"] is None and bad_usage is None
    assert bad_record["error"]["code"] == "server_error" and "non-finite logits" in bad_record["error"]["message"]
    assert good_record["error"] is None
    assert good_record["response"]["body"]["choices"][0]["finish_reason"] == "length"
