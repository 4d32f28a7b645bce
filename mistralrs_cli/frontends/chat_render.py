"""Terminal output for chat replies: live token streaming, then Markdown re-rendered in place when it fits."""

from __future__ import annotations

import re
import sys

from rich.cells import cell_len
from rich.console import Console
from rich.markdown import Markdown

_MARKDOWN_HINT = re.compile(r"(^|\n)(#{1,6} |```|[-*] |\d+\. |> )|\*\*|`[^`]+`|\[[^\]]+\]\(")


class ReplyPrinter:
    """Streams reply text to stdout; when done, swaps it for rendered Markdown if that is safe."""

    def __init__(self, markdown: bool = True, console: Console | None = None) -> None:
        self.console = console or Console()
        self.tty = sys.stdout.isatty()
        self.markdown = markdown and self.tty
        self.text = ""

    def write(self, piece: str) -> None:
        """Print a streamed piece as it arrives."""
        if piece:
            self.text += piece
            sys.stdout.write(piece)
            sys.stdout.flush()

    def finish(self) -> None:
        """End the reply: newline, and in a terminal re-render as Markdown when it is on screen."""
        sys.stdout.write("\n")
        sys.stdout.flush()
        if not self.markdown or not _MARKDOWN_HINT.search(self.text):
            return
        width, height = self.console.size
        rows = _rows(self.text, width)
        # NOTE: moving the cursor up only works while the raw reply is still on screen; a taller
        # reply stays raw rather than printing twice.
        if rows >= height - 1:
            return
        sys.stdout.write(f"\x1b[{rows}F\x1b[J")
        sys.stdout.flush()
        self.console.print(Markdown(self.text, code_theme="monokai"))


def _rows(text: str, width: int) -> int:
    """Terminal rows `text` occupies at `width` columns (wrapped lines counted)."""
    return sum(max(1, -(-cell_len(line) // max(1, width))) for line in text.split("\n"))
