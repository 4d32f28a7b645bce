"""Sampler: per-request sampling settings applied to a whole batch of logits at once.

Each row of the batch has its own temperature, top-k, top-p, min-p, penalties and logit
bias; every filter is one tensor op over (rows, vocab), skipped when no row uses it. The
random draw is one uniform per row from that choice's own generator, turned into a token
by inverse-CDF, so a seeded choice samples the same tokens alone or in any batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from kernels_cuda.dispatch import available as kernels_available
from kernels_cuda.dispatch import kernel
from mistralrs_cli.engine.guided import apply_bitmask
from mistralrs_cli.engine.sequence import Sequence


@dataclass
class SampleOutput:
    """Sampled token per row; logprobs (of the raw logits) only when some row asked for them."""

    tokens: list[int]
    logprobs: list[float] | None = None
    top_ids: list[list[int]] | None = None  # (rows, max top_logprobs), best first
    top_logprobs: list[list[float]] | None = None


def _column(values: list[float], device: torch.device) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32, device=device)[:, None]  # (R, 1)


def _counts(token_lists: list[list[int]], vocab: int, device: torch.device) -> torch.Tensor:
    """How often each id occurs per row, (R, vocab), by one scatter_add (padding -> column vocab)."""
    width = max(1, max(len(t) for t in token_lists))
    ids = torch.tensor([t + [vocab] * (width - len(t)) for t in token_lists], device=device)
    counts = torch.zeros(len(token_lists), vocab + 1, device=device)
    counts.scatter_add_(1, ids, torch.ones_like(ids, dtype=counts.dtype))
    return counts[:, :vocab]


def apply_penalties(x: torch.Tensor, seqs: list[Sequence]) -> torch.Tensor:
    """Repetition penalty over each row's last repeat_last_n tokens (prompt included, as the
    original tool), frequency/presence penalties over its generated tokens (as OpenAI), logit bias."""
    vocab, dev = x.shape[1], x.device
    if any(s.params.repetition_penalty != 1.0 and s.request.repeat_last_n > 0 for s in seqs):
        window = [s.token_ids[-s.request.repeat_last_n :] if s.request.repeat_last_n else [] for s in seqs]
        seen = _counts(window, vocab, dev) > 0
        penalty = _column([s.params.repetition_penalty for s in seqs], dev)
        x = torch.where(seen, torch.where(x > 0, x / penalty, x * penalty), x)
    if any(s.params.frequency_penalty or s.params.presence_penalty for s in seqs):
        counts = _counts([s.token_ids[s.num_prompt :] for s in seqs], vocab, dev)
        x = x - _column([s.params.frequency_penalty for s in seqs], dev) * counts
        x = x - _column([s.params.presence_penalty for s in seqs], dev) * (counts > 0)
    if any(s.params.logit_bias for s in seqs):
        at = [(r, tok, b) for r, s in enumerate(seqs) for tok, b in (s.params.logit_bias or {}).items()]
        index = torch.tensor([[r for r, _, _ in at], [t for _, t, _ in at]], device=dev)
        x = x.index_put((index[0], index[1]), torch.tensor([b for *_, b in at], device=dev), accumulate=True)
    return x


def filter_logits(x: torch.Tensor, seqs: list[Sequence]) -> torch.Tensor:
    """Temperature, then top-k, top-p and min-p; removed tokens get -inf."""
    dev, vocab = x.device, x.shape[1]
    params = [s.params for s in seqs]
    x = x / _column([p.temperature if p.temperature > 0 else 1.0 for p in params], dev)
    ks = [p.top_k if 0 < p.top_k < vocab else 0 for p in params]  # 0: this row keeps all
    if any(ks):
        top = x.topk(max(ks), dim=-1).values  # (R, max k), best first
        kth = top.gather(1, (torch.tensor(ks, device=dev) - 1).clamp(min=0)[:, None])
        kth = kth.masked_fill(torch.tensor(ks, device=dev)[:, None] == 0, float("-inf"))
        x = x.masked_fill(x < kth, float("-inf"))
    if any(p.top_p < 1.0 for p in params):
        top_p = _column([p.top_p if p.top_p < 1.0 else float("inf") for p in params], dev)
        sorted_x, order = x.sort(dim=-1, descending=True)
        probs = sorted_x.softmax(-1)
        # Keep the smallest prefix whose mass reaches top_p (the best token always stays).
        drop = (probs.cumsum(-1) - probs) > top_p
        x = x.scatter(1, order, sorted_x.masked_fill(drop, float("-inf")))
    if any(p.min_p > 0 for p in params):
        probs = x.softmax(-1)
        floor = _column([p.min_p for p in params], dev) * probs.max(-1, keepdim=True).values
        x = x.masked_fill(probs < floor, float("-inf"))
    return x


def probabilities(x: torch.Tensor, seqs: list[Sequence], use_kernel: bool) -> torch.Tensor:
    """Filtered probabilities (R, vocab) of penalized logits.

    With `use_kernel` (a CUDA batch), temperature, top-k and top-p run in kernels_cuda's
    sample_filter kernel; min-p has no kernel, so a batch where a row uses it stays in torch.
    """
    params = [s.params for s in seqs]
    if use_kernel and not any(p.min_p > 0 for p in params):
        dev = x.device
        temperature = torch.tensor([p.temperature for p in params], dtype=torch.float32, device=dev)
        top_k = torch.tensor([p.top_k for p in params], dtype=torch.int64, device=dev)
        top_p = torch.tensor([p.top_p for p in params], dtype=torch.float32, device=dev)
        return kernel("sample_filter")(x, temperature, top_k, top_p)
    return filter_logits(x, seqs).softmax(-1)


def sample(logits: torch.Tensor, seqs: list[Sequence], bitmask: torch.Tensor | None = None) -> SampleOutput:
    """Pick one token per row of f32 logits (R, vocab) for the given sequences.

    `bitmask` (rows, ceil(vocab/32)) holds the tokens each row's output constraint allows;
    it applies after the penalties and before temperature and the top-k/top-p/min-p filters.
    """
    dev = logits.device
    x = apply_penalties(logits, seqs)
    if bitmask is not None:
        x = apply_bitmask(x, bitmask)
    greedy_ids = x.argmax(-1)
    if all(s.params.greedy for s in seqs):
        tokens = greedy_ids
    else:
        probs = probabilities(x, seqs, use_kernel=x.is_cuda and kernels_available())
        cdf = probs.cumsum(-1)  # (R, vocab)
        u = torch.tensor([s.uniform() for s in seqs], dtype=cdf.dtype, device=dev)
        # u is in (0, 1], so the first index with cdf >= u * total has non-zero probability.
        drawn = torch.searchsorted(cdf, (u * cdf[:, -1])[:, None]).squeeze(1).clamp(max=x.shape[1] - 1)
        greedy = torch.tensor([s.params.greedy for s in seqs], device=dev)
        tokens = torch.where(greedy, greedy_ids, drawn)
    out = SampleOutput(tokens.tolist())
    if any(s.params.logprobs or s.params.top_logprobs for s in seqs):
        lp = torch.log_softmax(logits, dim=-1)
        out.logprobs = lp.gather(1, tokens[:, None]).squeeze(1).tolist()
        k = max(s.params.top_logprobs for s in seqs)
        if k:
            top = lp.topk(k, dim=-1)
            out.top_ids, out.top_logprobs = top.indices.tolist(), top.values.tolist()
    return out
