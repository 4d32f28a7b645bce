"""The `/scalings` view: which X-LoRA adapter dominated each token of the last reply."""

from __future__ import annotations

from typing import Any

from rich.console import Group
from rich.text import Text

from mistralrs_cli.engine import Engine

PALETTE = ("cyan", "magenta", "green", "yellow", "blue", "red", "bright_cyan", "bright_magenta")


def render_last_scalings(engine: Engine, request_id: str | None) -> Any:
    """A rich renderable for the request's per-token scalings, or None when there are none."""
    if request_id is None:
        return None
    record = engine.scalings(request_id).get(0)
    if record is None:
        return None
    tok = engine.loaded.tokenizer
    names = record.adapters
    text = Text()
    counts = [0] * len(names)
    for token_id, row in zip(record.token_ids, record.scalings.tolist(), strict=True):
        best = max(range(len(names)), key=lambda i: row[i])
        counts[best] += 1
        text.append(tok.decode([token_id], skip_special_tokens=False), style=PALETTE[best % len(PALETTE)])
    legend = Text()
    total = max(1, sum(counts))
    for i, name in enumerate(names):
        share = counts[i] / total
        style = PALETTE[i % len(PALETTE)]
        legend.append(f"{name:>16} ", style=style)
        legend.append("█" * round(share * 30) + f" {share:5.1%} of tokens\n", style=style)
    return Group(Text("Dominant adapter per token:", style="bold"), text, Text(""), legend)
