"""The matmul choice (models/matmul_choice.py): pure logic over fake machines and fake timings,
and the routing it installs in Int4Linear (with real candidate kernels)."""

from __future__ import annotations

import json
import time

import pytest
import torch

from mistralrs_cli.models import matmul_choice as mc
from mistralrs_cli.models.matmul_candidates import prepare
from mistralrs_cli.models.quant_linear import Int4Linear

AMX = mc.Machine("AVX512", frozenset({"avx2", "avx512f", "avx512_vnni", "amx_tile"}))
AVX2 = mc.Machine("AVX2", frozenset({"avx2"}))
# Fake timings (µs) of one shape: int4 wins a row, loses 32 rows to fbgemm by 3x.
FAKE: mc.Timings = {
    "576x1536": {
        "small": {"int4": 33, "int8": 48, "bf16": 125, "dyn-int8-fbgemm": 49},
        "large": {"int4": 352, "int8": 457, "bf16": 151, "dyn-int8-fbgemm": 117},
    }
}


@pytest.fixture
def gate(monkeypatch):
    """A fixed accuracy gate, independent of the measured REL_ERROR figures."""
    errors = {"int4": 2e-3, "bf16": 3e-3, "int8": 8e-3, "dyn-int8-fbgemm": 1.8e-2, "numba-q4q8": 5e-3}
    monkeypatch.setattr(mc, "REL_ERROR", errors)
    monkeypatch.setattr(mc, "MAX_REL_ERROR", 1e-2)


def test_fastest_keeps_int4_unless_another_wins_by_the_margin(gate):
    assert mc.fastest({"int4": 100, "bf16": 80}) == "int4"  # 1.25x: not worth a second copy
    assert mc.fastest({"int4": 100, "bf16": 70}) == "bf16"
    assert mc.fastest({"int4": 100, "bf16": 70}, margin=1.5) == "int4"
    assert mc.fastest({"int4": 40, "int8": 50}) == "int4"
    assert mc.fastest({"bf16": 70, "int8": 60}) == "int8"  # no int4 timing: plain fastest


def test_fastest_skips_what_fails_the_accuracy_gate(gate, monkeypatch):
    assert mc.fastest({"int4": 350, "dyn-int8-fbgemm": 117, "bf16": 151}) == "bf16"
    assert mc.fastest({"int4": 350, "dyn-int8-fbgemm": 117}) == "int4"
    monkeypatch.setattr(mc, "MAX_REL_ERROR", 2e-2)
    assert mc.fastest({"int4": 350, "dyn-int8-fbgemm": 117, "bf16": 151}) == "dyn-int8-fbgemm"
    assert mc.fastest({"int4": 350, "no-such-kernel": 1}) == "int4"
    assert mc.fastest({}) == "int4"


def test_choice_per_shape_and_bucket(gate):
    choice = mc.Choice(AMX, "table", FAKE)
    assert choice.pick(576, 1536, "small") == "int4"
    assert choice.pick(576, 1536, "large") == "bf16"
    assert choice.pick(576, 576, "large") == "int4"  # never timed
    text = choice.describe([(576, 1536), (576, 576)])
    assert text == f"bf16 at 576x1536 M>=8, int4 elsewhere (table {AMX.key()})"
    assert mc.Choice(AVX2, "default").describe([(576, 1536)]) == f"int4 everywhere (default {AVX2.key()})"


def test_choose_prefers_forced_then_table_then_cache(gate, tmp_path):
    cache = tmp_path / "m.json"
    table = {AMX.key(): FAKE}
    assert mc.choose(AMX, table, cache, env={}).source == "table"
    assert mc.choose(AVX2, table, cache, env={}).source == "default"
    payload = {"machine": AVX2.key(), "torch": torch.__version__, "timings": FAKE}
    cache.write_text(json.dumps(payload))
    got = mc.choose(AVX2, table, cache, env={})
    assert (got.source, got.pick(576, 1536, "large")) == ("cache", "bf16")
    forced = mc.choose(AMX, table, cache, env={mc.ENV: "int8"})
    assert (forced.source, forced.pick(576, 1536, "small"), forced.pick(1, 1, "large")) == ("forced", "int8", "int8")


def test_choose_ignores_a_cache_of_another_machine_or_torch(tmp_path):
    cache = tmp_path / "m.json"
    for machine, version in ((AMX.key(), torch.__version__), (AVX2.key(), "1.0")):
        cache.write_text(json.dumps({"machine": machine, "torch": version, "timings": FAKE}))
        assert mc.choose(AVX2, {}, cache, env={}).source == "default"
    cache.write_text("{not json")
    assert mc.choose(AVX2, {}, cache, env={}).source == "default"


def test_forcing_an_unknown_kernel_is_one_line():
    with pytest.raises(ValueError, match=r"^MISTRALRS_MATMUL=int3: not a matmul candidate \(one of int4, "):
        mc.choose(AMX, {}, env={mc.ENV: "int3"})


def test_cache_file_is_per_capability_and_flags(monkeypatch, tmp_path):
    monkeypatch.setenv("MISTRALRS_CACHE", str(tmp_path))
    path = mc.cache_path(AMX)
    assert path.parent == tmp_path / "matmul" and path.name.startswith("AVX512-") and path.suffix == ".json"
    assert mc.cache_path(AMX) == path
    assert mc.cache_path(mc.Machine("AVX512", frozenset({"avx2"}))) != path
    monkeypatch.delenv("MISTRALRS_CACHE")
    assert mc.cache_path(AMX).parent.parent.name == "mistralrs"


def test_this_machine_reads_torch_capability_and_known_flags():
    machine = mc.this_machine()
    assert machine.capability == torch.backends.cpu.get_cpu_capability()
    assert machine.flags <= set(mc.FLAGS)


def test_time_calls_takes_the_fastest_call_and_warms_up_once():
    counts = {"fast": 0, "slow": 0}

    def fast():
        counts["fast"] += 1

    def slow():
        counts["slow"] += 1
        time.sleep(0.002)

    got = mc.time_calls({"fast": [fast, fast], "slow": [slow]}, rounds=3)
    assert counts == {"fast": 1 + 3 * 2, "slow": 1 + 3}
    assert got["slow"] >= 2000 > got["fast"] >= 0  # a sleep never returns early


def test_copies_overflow_the_cache():
    assert mc.copies_for(1 << 20) == 64
    assert mc.copies_for(100 << 20) == 2
    assert mc.copies_for(1) == 256


@pytest.fixture
def layer() -> Int4Linear:
    return mc.random_int4_layer(64, 128, seed=3)


def test_int4linear_routes_by_rows(layer):
    x = torch.randn(9, 64)
    int4 = layer(x)
    bf16 = prepare("bf16", layer)
    layer.use_matmuls(None, bf16, large_m=8)
    assert torch.equal(layer(x[:7]), int4[:7])  # below large_m: its own int4 terms
    assert torch.equal(layer(x), bf16.matmul(x))
    assert not torch.equal(layer(x), int4)
    layer.use_matmuls(bf16, None, large_m=8)
    assert torch.equal(layer(x[:2]), bf16.matmul(x[:2]))
    assert torch.equal(layer(x), int4)


def test_compiled_int4linear_skips_kernels_it_cannot_trace(layer):
    layer.use_matmuls(None, prepare("numba-q4q8", layer), large_m=2)
    x = torch.randn(4, 64)
    torch._dynamo.reset()
    compiled = torch.compile(layer, backend="eager", fullgraph=True)  # no graph break allowed
    assert torch.equal(compiled(x), layer._int4(x).float())
    assert not torch.equal(layer(x), compiled(x))  # eager uses the numba kernel



@pytest.fixture(scope="module")
def tiny_q4(tmp_path_factory):
    """A tiny Q4_1 GGUF model on its CPU backend (fused int4 projections)."""
    from mistralrs_cli.cli.compose import build_model
    from mistralrs_cli.cli.spec import model_spec
    from tests.oracles.gguf_files import Q, write_gguf_from_hf
    from tests.oracles.tiny_models import save_tiny_folder, tiny_hf_model

    hf = tiny_hf_model("mistral", seed=3)
    folder = save_tiny_folder(hf, tmp_path_factory.mktemp("tiny-q4"))
    path = write_gguf_from_hf(hf, folder, folder / "model.gguf", Q.Q4_1)
    return build_model(model_spec("gguf-mistral", quantized_filename=str(path), dtype="auto")).model


def _logits(model, ids: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        return model(ids, torch.arange(ids.shape[1]).expand_as(ids))


def test_apply_routes_the_layers_that_compute(tiny_q4, gate):
    from mistralrs_cli.models.fused import FusedProjection

    model = tiny_q4
    layers = mc.compute_layers(model)
    fused = [p for m in model.modules() for p in vars(m).values() if isinstance(p, FusedProjection)]
    assert fused and all(f.layer in layers for f in fused)
    assert not any(s is layer for f in fused for s in f.sources for layer in layers)
    assert model.lm_head in layers
    ids = torch.randint(0, 200, (1, 12), generator=torch.Generator().manual_seed(0))
    before = _logits(model, ids)
    assert mc.apply(model, mc.Choice(AMX, "default")).startswith("int4 everywhere")
    assert torch.equal(_logits(model, ids), before)
    # bf16 picked for 8+ rows of every shape: a 12-token prefill runs bf16, a 1-token step int4.
    timings = {
        mc.shape_key(m.in_features, m.out_features): {"small": {"int4": 1, "bf16": 9}, "large": {"int4": 9, "bf16": 1}}
        for m in layers
    }
    text = mc.apply(model, mc.Choice(AMX, "table", timings))
    assert "bf16 at" in text and "MiB of weight copies" in text
    assert all(m.small is None and m.large.name == "bf16" for m in layers)
    # The copies are built on first use: a model that never batches 8 rows never pays for them.
    assert not any(m.large.ready for m in layers) and all(m.large.nbytes() == 0 for m in layers)
    assert torch.equal(_logits(model, ids[:, :1]), before[:, :1]) and not any(m.large.ready for m in layers)
    got = _logits(model, ids)
    assert all(m.large.ready and m.large.nbytes() == 2 * m.in_features * m.out_features for m in layers)
    assert not torch.equal(got, before) and (got - before).abs().max() < 0.05 * before.abs().max()
    assert torch.equal(_logits(model, ids[:, :1]), before[:, :1])
    mc.apply(model, mc.Choice(AMX, "default"))
    assert all(m.small is None and m.large is None for m in layers)


@pytest.mark.slow
def test_each_eligible_candidate_keeps_the_fast_path_bounds(default_gguf):
    """Every layer of the real default model on one candidate, teacher-forced over the answer of
    tests/loading/test_gguf_real.py against the exact f32 path: the bounds of today's fast path
    (top-1 >= 95%, mean |dlogit| < 0.12, max < 0.9) for every candidate the gate admits, so the
    choice can only pick among formats that keep them."""
    from mistralrs_cli.loading.gguf import load_gguf_file
    from mistralrs_cli.loading.spec import LoadOptions
    from mistralrs_cli.models.matmul_candidates import CANDIDATES
    from tests.loading.test_gguf_real import ANSWER, PROMPTS

    exact = load_gguf_file(default_gguf, LoadOptions(dtype="f32"))
    fast = load_gguf_file(default_gguf, LoadOptions())
    ids = exact.tokenizer.encode_chat([{"role": "user", "content": PROMPTS[1]}])
    answer = exact.tokenizer.encode(ANSWER, add_special_tokens=False)[:64]
    seq = torch.tensor([ids + answer])
    positions = torch.arange(seq.shape[1])[None]
    layers = [m for m in fast.model.modules() if isinstance(m, Int4Linear)]
    stats = {}
    with torch.inference_mode():
        ref = exact.model(seq, positions)[0, len(ids) :]
        for name in CANDIDATES:
            for layer in layers:
                cand = prepare(name, layer)
                layer.use_matmuls(cand, cand, 8)
            got = fast.model(seq, positions)[0, len(ids) :]
            diff = (got - ref).abs()
            top1 = (got.argmax(-1) == ref.argmax(-1)).float().mean().item()
            stats[name] = (diff.max().item(), diff.mean().item(), top1)
        picked = mc.apply(fast.model, mc.choose(env={}))  # what this machine's choice routes
        got = fast.model(seq, positions)[0, len(ids) :]
        diff = (got - ref).abs()
        stats[f"choice: {picked}"] = (diff.max().item(), diff.mean().item(), (got.argmax(-1) == ref.argmax(-1)).float().mean().item())
    print("\n".join(f"{n:16} max {a:.3f} mean {b:.4f} top-1 {c:.1%}" for n, (a, b, c) in stats.items()))
    for name, (max_diff, mean_diff, top1) in stats.items():
        if name.startswith("choice: ") or mc.eligible(name):
            assert max_diff < 0.9 and mean_diff < 0.12 and top1 >= 0.95, (name, stats[name])


def test_materialize_builds_the_copies_a_batch_size_uses(tiny_q4, gate):
    layers = mc.compute_layers(tiny_q4)
    timings = {
        mc.shape_key(m.in_features, m.out_features): {"small": {"int4": 1, "bf16": 9}, "large": {"int4": 9, "bf16": 1}}
        for m in layers
    }
    mc.apply(tiny_q4, mc.Choice(AMX, "table", timings))
    mc.materialize(tiny_q4, 4)  # below LARGE_M: int4, nothing to build
    assert not any(m.large.ready for m in layers)
    mc.materialize(tiny_q4, mc.LARGE_M)
    assert all(m.large.ready for m in layers)
