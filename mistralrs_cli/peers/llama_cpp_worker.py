"""llama.cpp (llama-cpp-python) as a benchmark peer: one JSON command per line on stdin, one reply per line.

Run by path under any interpreter that has `llama_cpp` (it imports only the standard library,
llama_cpp and numpy, which llama_cpp itself needs), so that interpreter needs no mistralrs:

    python llama_cpp_worker.py

On start it answers {"ready": true, "version": ...} or {"error": ..., "missing": "llama_cpp"}. Then:

    {"cmd": "load", "model": PATH, "threads": 2, "n_ctx": 256, "extra_bufts": true}
        -> {"load_s": ..., "n_vocab": ..., "peak_rss_mib": ...}
    {"cmd": "round", "prompt": [ids], "tokens": 64}
        -> {"ttft_s": ..., "decode_s": ..., "prefill_tok_s": ..., "decode_tok_s": ..., "tokens": [ids], ...}
    {"cmd": "quit"}

A round is greedy, ignores EOS and produces exactly `tokens` tokens: the first from the prompt's
logits (TTFT = prefill + that argmax), then `tokens - 1` single-token steps (the decode time).
A failed command answers {"error": ...}; a crash inside llama.cpp kills the process (the client
sees the signal). Python 3.8+ syntax: this file runs under interpreters we do not control.
"""

from __future__ import annotations

import json
import os
import sys
import time


def _protocol_stream():
    """The real stdout for replies; fd 1 then points at stderr so native code printing cannot corrupt a reply."""
    out = os.fdopen(os.dup(1), "w", buffering=1, encoding="utf-8")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    return out


def _peak_rss_mib() -> float:
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1 << 20) if sys.platform == "darwin" else peak / 1024  # bytes on macOS, KiB on Linux


class Worker:
    """One Llama model, reloaded only by a new `load` command."""

    def __init__(self) -> None:
        self.llm = None
        self.vocab = 0

    def load(self, model: str, threads: int, n_ctx: int, extra_bufts: bool = True) -> dict:
        import llama_cpp
        import llama_cpp.llama_cpp as low

        if not extra_bufts:
            # The AMX crash (ldtilecfg in ggml's "extra buffer types"): build model params without them.
            default = low.llama_model_default_params

            def params_without_extra_bufts():
                p = default()
                p.use_extra_bufts = False
                return p

            low.llama_model_default_params = params_without_extra_bufts
        start = time.perf_counter()
        self.llm = llama_cpp.Llama(model_path=model, n_threads=threads, n_threads_batch=threads, n_ctx=n_ctx,
                                   n_batch=512, verbose=False)
        load_s = time.perf_counter() - start
        self.vocab = self.llm.n_vocab()
        return {"load_s": load_s, "n_vocab": self.vocab, "peak_rss_mib": _peak_rss_mib()}

    def _next(self) -> int:
        import numpy as np

        logits = np.ctypeslib.as_array(self.llm._ctx.get_logits(), shape=(self.vocab,))
        return int(logits.argmax())

    def round(self, prompt: list, tokens: int) -> dict:
        if self.llm is None:
            raise ValueError("round before load")
        if not prompt or tokens < 1:
            raise ValueError("a round needs a prompt and at least one token")
        llm = self.llm
        llm.reset()
        start = time.perf_counter()
        llm.eval([int(t) for t in prompt])
        out = [self._next()]
        first = time.perf_counter()
        for _ in range(tokens - 1):
            llm.eval(out[-1:])
            out.append(self._next())
        end = time.perf_counter()
        ttft, decode = first - start, end - first
        return {"ttft_s": ttft, "decode_s": decode, "prefill_tok_s": len(prompt) / ttft,
                "decode_tok_s": (tokens - 1) / decode if tokens > 1 else 0.0, "tokens": out,
                "peak_rss_mib": _peak_rss_mib()}


def main() -> int:
    out = _protocol_stream()

    def reply(obj: dict) -> None:
        out.write(json.dumps(obj) + "\n")
        out.flush()

    try:
        import llama_cpp
    except ImportError as e:
        reply({"error": f"{sys.executable} cannot import llama_cpp ({e})", "missing": "llama_cpp"})
        return 3
    reply({"ready": True, "version": getattr(llama_cpp, "__version__", "?"), "python": sys.version.split()[0]})
    worker = Worker()
    for line in sys.stdin:
        if not line.strip():
            continue
        try:
            msg = json.loads(line)
            cmd = msg.pop("cmd")
            if cmd == "quit":
                return 0
            if cmd not in ("load", "round"):
                raise ValueError(f"unknown command {cmd!r}")
            reply(getattr(worker, cmd)(**msg))
        except Exception as e:  # one reply per command, whatever went wrong
            reply({"error": f"{type(e).__name__}: {e}"})
    return 0


if __name__ == "__main__":
    sys.exit(main())
