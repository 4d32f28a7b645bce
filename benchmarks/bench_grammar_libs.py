"""Grammar engines compared for constrained decoding: llguidance vs xgrammar.

Measures, for one tokenizer (default: the embedded default model's, 49,152 ids):
  - compile time of a typical JSON Schema (and of an any-JSON-object grammar),
  - mask time per token at batch 1 and 32, walking a valid instance token by token
    (every row of the batch holds its own matcher at the same point, as in serving).

Either library may be missing; it is then skipped. The product uses llguidance
(docs/structured-output.md says why); xgrammar is only needed here, for the comparison:
    python benchmarks/bench_grammar_libs.py [--tokenizer-json PATH] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import time
from collections.abc import Callable
from typing import Any

import torch
from tokenizers import Tokenizer

SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 40},
        "age": {"type": "integer", "minimum": 0, "maximum": 130},
        "email": {"type": "string"},
        "role": {"enum": ["admin", "user", "guest"]},
        "tags": {"type": "array", "items": {"type": "string"}, "maxItems": 5},
        "address": {
            "type": "object",
            "properties": {"street": {"type": "string"}, "city": {"type": "string"}, "zip": {"type": "string"}},
            "required": ["street", "city"],
        },
        "score": {"type": "number", "minimum": 0, "maximum": 1},
    },
    "required": ["name", "age", "role", "tags", "address"],
}
INSTANCE = {
    "name": "Ada Lovelace", "age": 36, "email": "ada@example.org", "role": "admin",
    "tags": ["math", "engines", "poetry"],
    "address": {"street": "12 St James's Square", "city": "London", "zip": "SW1Y 4JH"},
    "score": 0.97,
}


def default_tokenizer_json() -> str:
    from mistralrs_cli.loading.default_model import package_gguf
    from mistralrs_cli.loading.gguf import GGUFFile, _tokenizer
    from mistralrs_cli.loading.spec import LoadOptions

    path = package_gguf()
    if path is None:
        raise SystemExit("the default model is not installed; pass --tokenizer-json")
    return _tokenizer(GGUFFile(path), LoadOptions(), None).tokenizer.to_str()


def best(fn: Callable[[], None], rounds: int) -> float:
    times = []
    for _ in range(rounds):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def bench_llguidance(tok_json: str, eos: int, ids: list[int], rounds: int) -> dict[str, float]:
    import llguidance
    import llguidance.torch as llt

    t = time.perf_counter()
    lltok = llguidance.LLTokenizer(tok_json, eos_token=eos)
    out = {"tokenizer_s": time.perf_counter() - t}
    grammar = llguidance.LLMatcher.grammar_from_json_schema(SCHEMA)
    out["compile_schema_ms"] = 1e3 * best(lambda: llguidance.LLMatcher(lltok, grammar), rounds)
    any_obj = llguidance.LLMatcher.grammar_from_json_schema({"type": "object"})
    out["compile_json_object_ms"] = 1e3 * best(lambda: llguidance.LLMatcher(lltok, any_obj), rounds)
    executor = llguidance.LLExecutor()

    def walk(batch: int) -> float:
        """Seconds to mask and advance `batch` matchers through the instance."""
        matchers = [llguidance.LLMatcher(lltok, grammar) for _ in range(batch)]
        mask = llt.allocate_token_bitmask(batch, lltok.vocab_size)
        t = time.perf_counter()
        for tok in ids:
            if batch == 1:
                llt.fill_next_token_bitmask(matchers[0], mask, 0)
            else:
                llt.fill_next_token_bitmask_par(executor, [(m, i) for i, m in enumerate(matchers)], mask)
            for m in matchers:
                assert m.consume_token(tok), m.get_error()
        return time.perf_counter() - t

    for batch in (1, 32):
        out[f"mask_b{batch}_us_per_token"] = 1e6 * min(walk(batch) for _ in range(rounds)) / len(ids)
    return out


def bench_xgrammar(tok_json: str, eos: int, ids: list[int], rounds: int) -> dict[str, float]:
    import xgrammar as xgr
    from transformers import PreTrainedTokenizerFast

    t = time.perf_counter()
    hf = PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(tok_json))
    info = xgr.TokenizerInfo.from_huggingface(hf, stop_token_ids=[eos])
    out = {"tokenizer_s": time.perf_counter() - t}
    schema = json.dumps(SCHEMA)

    def compile_fresh(kind: str) -> Callable[[], None]:
        def run() -> None:
            compiler = xgr.GrammarCompiler(info, cache_enabled=False)
            compiler.compile_json_schema(schema) if kind == "schema" else compiler.compile_builtin_json_grammar()
        return run

    out["compile_schema_ms"] = 1e3 * best(compile_fresh("schema"), rounds)
    out["compile_json_object_ms"] = 1e3 * best(compile_fresh("object"), rounds)
    compiled = xgr.GrammarCompiler(info).compile_json_schema(schema)
    batcher = xgr.BatchGrammarMatcher()
    for batch in (1, 32):
        times = []
        for _ in range(rounds):
            matchers = [xgr.GrammarMatcher(compiled) for _ in range(batch)]
            mask = xgr.allocate_token_bitmask(batch, info.vocab_size)
            t = time.perf_counter()
            for tok in ids:
                if batch == 1:
                    matchers[0].fill_next_token_bitmask(mask, 0)
                else:
                    batcher.batch_fill_next_token_bitmask(matchers, mask)
                for m in matchers:
                    assert m.accept_token(tok)
            times.append(time.perf_counter() - t)
        out[f"mask_b{batch}_us_per_token"] = 1e6 * min(times) / len(ids)
    return out


def apply_mask_us(vocab: int, batch: int, rounds: int) -> float:
    """Time to turn a packed bitmask into -inf on (batch, vocab) logits, in torch on the CPU."""
    from mistralrs_cli.engine.guided import apply_bitmask

    logits = torch.randn(batch, vocab)
    mask = torch.randint(-(2**31), 2**31 - 1, (batch, (vocab + 31) // 32), dtype=torch.int32)
    return 1e6 * best(lambda: [apply_bitmask(logits.clone(), mask) for _ in range(20)], rounds) / 20


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokenizer-json", help="a tokenizer.json (default: the embedded default model's)")
    ap.add_argument("--eos", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    tok_json = open(args.tokenizer_json).read() if args.tokenizer_json else default_tokenizer_json()
    tok = Tokenizer.from_str(tok_json)
    ids = tok.encode(json.dumps(INSTANCE), add_special_tokens=False).ids + [args.eos]
    flags = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    cpu = next((line.split(":", 1)[1].strip() for line in flags.splitlines() if line.startswith("Model name")), "?")
    print(f"cpu: {cpu} ({os.cpu_count()} cores, {platform.machine()}); vocab {tok.get_vocab_size()}; "
          f"instance {len(ids)} tokens; torch threads {torch.get_num_threads()}")
    for name, fn in (("llguidance", bench_llguidance), ("xgrammar", bench_xgrammar)):
        try:
            result = fn(tok_json, args.eos, ids, args.rounds)
        except ImportError as e:
            print(f"{name}: skipped ({e})")
            continue
        print(name + ": " + ", ".join(f"{k} {v:.3g}" for k, v in result.items()))
    try:
        for batch in (1, 32):
            print(f"apply mask (torch, batch {batch}): {apply_mask_us(tok.get_vocab_size(), batch, args.rounds):.1f} us")
    except ImportError:
        pass


if __name__ == "__main__":
    main()
