"""BlockManager: which KV blocks each sequence holds, with refcounts for sharing.

The KV pool (owned by the model runner) is cut into blocks of `block_size` token slots.
Each sequence owns a block table: position p lives in block `table[p // block_size]`.
Blocks are shared by reference count: between the n choices of a request (their common
prompt), and, with prefix caching on, between requests whose prompts start with the same
full blocks. A write into a shared block first copies it (copy-on-write). With a sliding
window, blocks wholly before the window are released as the sequence moves on.
"""

from __future__ import annotations

from collections import OrderedDict

from mistralrs_cli.engine.sequence import Sequence


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


class BlockManager:
    """Allocation, sharing, copy-on-write and release of KV blocks (engine thread only)."""

    def __init__(self, num_blocks: int, block_size: int, window: int | None, prefix_caching: bool) -> None:
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.window = window
        self.prefix_caching = prefix_caching
        self.ref = [0] * num_blocks
        # Free blocks in release order: allocation takes the oldest, so a freed block that
        # still holds a cached prefix survives as long as possible.
        self.free: OrderedDict[int, None] = OrderedDict.fromkeys(range(num_blocks))
        self.block_hash: list[int | None] = [None] * num_blocks
        self.block_tokens: list[tuple[int, ...] | None] = [None] * num_blocks
        self.by_hash: dict[int, int] = {}

    @property
    def num_free(self) -> int:
        """Blocks not held by any sequence (some may still hold a reusable cached prefix)."""
        return len(self.free)

    @property
    def num_used(self) -> int:
        """Blocks held by at least one sequence."""
        return self.num_blocks - len(self.free)

    def max_blocks(self, num_tokens: int, chunk: int) -> int:
        """Most blocks one sequence of `num_tokens` ever holds at once (prefilled `chunk` at a time)."""
        full = _ceil_div(num_tokens, self.block_size)
        if self.window is None:
            return full
        # A chunk of queries needs the window before its first query plus itself.
        return min(full, _ceil_div(self.window - 1 + chunk, self.block_size) + 1)

    # --- per-step operations ---
    def release_window(self, seq: Sequence, first_query: int) -> None:
        """Release blocks whose every position is before the window of `first_query` and later ones."""
        if self.window is None:
            return
        keep_from = max(0, first_query - self.window + 1)  # first key any later query can see
        first = min(keep_from // self.block_size, len(seq.block_table))
        for i in range(seq.kv_start // self.block_size, first):
            if seq.block_table[i] >= 0:
                self._decref(seq.block_table[i])
                seq.block_table[i] = -1
        seq.kv_start = max(seq.kv_start, first * self.block_size)

    def blocks_needed(self, seq: Sequence, end: int) -> int:
        """New blocks needed to write positions [num_computed, end): fresh ones plus copies."""
        bs, table = self.block_size, seq.block_table
        last = _ceil_div(end, bs)
        needed = max(0, last - len(table))
        for i in range(seq.num_computed // bs, min(last, len(table))):
            if table[i] >= 0 and self.ref[table[i]] > 1:
                needed += 1
        return needed

    def can_reserve(self, seq: Sequence, end: int, keep_free: int = 0) -> bool:
        """Whether `reserve(seq, end)` can succeed while leaving `keep_free` blocks free."""
        return self.blocks_needed(seq, end) + keep_free <= len(self.free)

    def reserve(self, seq: Sequence, end: int) -> list[tuple[int, int]]:
        """Make positions [num_computed, end) writable; return (src, dst) block copies to do first."""
        bs, table = self.block_size, seq.block_table
        copies: list[tuple[int, int]] = []
        for i in range(seq.num_computed // bs, min(_ceil_div(end, bs), len(table))):
            src = table[i]
            if src >= 0 and self.ref[src] > 1:  # shared: copy before writing
                table[i] = self._alloc()
                self.ref[src] -= 1
                copies.append((src, table[i]))
        while len(table) < _ceil_div(end, bs):
            table.append(self._alloc())
        return copies

    def fork(self, parent: Sequence, child: Sequence) -> None:
        """Let `child` share every block `parent` holds."""
        child.block_table = list(parent.block_table)
        child.block_hashes = list(parent.block_hashes)
        child.kv_start = parent.kv_start
        for b in child.block_table:
            if b >= 0:
                self.ref[b] += 1

    def free_seq(self, seq: Sequence) -> None:
        """Drop every block of `seq` (finished, aborted or preempted)."""
        for b in seq.block_table:
            if b >= 0:
                self._decref(b)
        seq.block_table, seq.block_hashes, seq.kv_start = [], [], 0

    # --- prefix caching ---
    def match_prefix(self, seq: Sequence) -> int:
        """Attach cached blocks matching the start of `seq`; return how many tokens they cover."""
        if not self.prefix_caching or seq.block_table:
            return 0
        bs, tokens = self.block_size, seq.token_ids
        h: int | None = None
        # NOTE: at least one token is always recomputed: its logits pick the next token.
        for i in range((len(tokens) - 1) // bs):
            block = tuple(tokens[i * bs : (i + 1) * bs])
            h = hash((h, block))
            b = self.by_hash.get(h)
            if b is None or self.block_tokens[b] != block:
                break
            if self.ref[b] == 0:
                del self.free[b]
            self.ref[b] += 1
            seq.block_table.append(b)
            seq.block_hashes.append(h)
        seq.num_computed = len(seq.block_table) * bs
        return seq.num_computed

    def register(self, seq: Sequence) -> None:
        """Publish the newly computed full blocks of `seq` for reuse by later prompts."""
        if not self.prefix_caching:
            return
        bs, tokens = self.block_size, seq.token_ids
        for i in range(len(seq.block_hashes), seq.num_computed // bs):
            block = tuple(tokens[i * bs : (i + 1) * bs])
            h = hash((seq.block_hashes[-1] if seq.block_hashes else None, block))
            seq.block_hashes.append(h)
            b = seq.block_table[i]
            if b >= 0 and h not in self.by_hash and self.block_hash[b] is None:
                self.by_hash[h], self.block_hash[b], self.block_tokens[b] = b, h, block

    # --- internals ---
    def _alloc(self) -> int:
        b, _ = self.free.popitem(last=False)
        h = self.block_hash[b]
        if h is not None:  # evict the cached prefix this block held
            if self.by_hash.get(h) == b:
                del self.by_hash[h]
            self.block_hash[b] = self.block_tokens[b] = None
        self.ref[b] = 1
        return b

    def _decref(self, b: int) -> None:
        self.ref[b] -= 1
        if self.ref[b] == 0:
            self.free[b] = None
