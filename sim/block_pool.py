"""The KV block pool of the simulated engine: vLLM V1's `BlockPool` and prefix cache, by counts.

It follows `vllm/v1/core/block_pool.py` (`get_new_blocks`, `free_blocks`, `touch`,
`cache_full_blocks`) and `KVCacheManager.get_computed_blocks` (read on vLLM 0.32). The engine
model (`sim.gen_engine`) decides what a step computes; this module decides which blocks hold
it and which cached content a new allocation evicts.

Theory of operation. The pool has `total` blocks. A block is held by running sequences, lent
to the GPU index cache (`lend` / `reclaim`), or free. A free block has no cached content
(`anon`: a partial last block; every block when caching is off) or cached content (`cached`,
in `free`): free blocks with no content are reused first, cached ones in LRU order (vLLM's
free queue: a freed sequence's tail first); reusing a cached block evicts its content.

Cached content comes in runs (`Run`): consecutive blocks of one shared prefix (`Chain`: one
prefix id is one token sequence, block i holds its i-th block of tokens), a preempted
sequence's own blocks (it may find them again when it resumes), or content nobody reuses.
A chain's cached blocks are always 0..cached-1 (a block's holders include those of every
block after it, so the later block reaches the free queue first); the blocks 0..held-1 are
held by running sequences.

The sequences the pool serves are the engine's: it reads and writes their `chain`, `kp` (full
prefix blocks), `shared` (prefix blocks held from the cache), `own_run` and `computed`.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any


@dataclass(slots=True, eq=False)
class Chain:
    """The cache of one shared prefix's full blocks (block i holds the prefix's i-th block of tokens)."""

    cached: int = 0  # blocks 0..cached-1 are cached (held by running sequences, or free)
    held: int = 0  # blocks 0..held-1 are held by running sequences
    extents: dict[int, int] = field(default_factory=dict)  # blocks held by a sequence -> how many hold that many
    free_runs: list[Run] = field(default_factory=list)  # its free blocks, oldest (highest indices) first


@dataclass(slots=True, eq=False)
class Run:
    """Cached free blocks in the free queue: blocks lo..hi-1 of `owner`, evicted from hi-1 down.
    owner: a shared prefix, a preempted sequence (its own blocks), or None (content nobody reuses)."""

    owner: Any  # Chain | the engine's sequence | None
    lo: int
    hi: int


class BlockPool:
    """KV blocks of one engine: free blocks (with and without cached content), lent blocks,
    and the prefix cache. Held blocks are `total - anon - cached_free - lent`."""

    def __init__(self, total: int, block_size: int, caching: bool) -> None:
        self.total = total
        self.block = block_size
        self.caching = caching
        self.anon = total  # free blocks with no cached content (reused first)
        self.lent = 0  # blocks lent to the GPU index cache (`lend`): neither free nor the sequences'
        self.cached_free = 0  # free blocks with cached content, in `lru`
        self.lru: deque[Run] = deque()
        self.chains: dict[str, Chain] = {}

    @property
    def used(self) -> int:
        """Blocks held by running sequences (cached free blocks count as free, as in vLLM's usage)."""
        return self.total - self.anon - self.cached_free - self.lent

    def chain(self, prefix: str) -> Chain:
        """The cache of shared prefix `prefix` (made on first use)."""
        chain = self.chains.get(prefix)
        if chain is None:
            chain = self.chains[prefix] = Chain()
        return chain

    # --- memory shared with the GPU index cache ---------------------------------------------------

    def lend(self, blocks: int, reserve: int) -> int:
        """Give up to `blocks` free blocks (cached content evicted if need be), keeping `reserve`
        free; returns how many were lent."""
        k = min(blocks, self.anon + self.cached_free - reserve)
        if k > 0:
            self.take(k)
            self.lent += k
        return max(k, 0)

    def reclaim(self, blocks: int) -> None:
        """Lent blocks come back (free, with no content)."""
        if not 0 <= blocks <= self.lent:
            raise ValueError(f"reclaim {blocks} blocks, {self.lent} are lent")
        self.lent -= blocks
        self.anon += blocks

    # --- allocation and freeing -------------------------------------------------------------------

    def take(self, k: int) -> None:
        """Allocate `k` blocks from the free queue: blocks with no content first, then cached ones
        in LRU order, evicting them. Content nobody reuses that reaches the queue's head joins
        the blocks with no content (the same order of reuse, fewer runs to walk)."""
        lru = self.lru
        while k > self.anon:
            run = lru[0]
            n = run.hi - run.lo
            if run.owner is None or n == 0:
                lru.popleft()
            else:
                n = min(n, k - self.anon)
                run.hi -= n
                if isinstance(run.owner, Chain):
                    run.owner.cached = min(run.owner.cached, run.hi)
                    if run.hi == run.lo:
                        run.owner.free_runs.remove(run)
                if run.hi == run.lo:
                    lru.popleft()
            self.cached_free -= n
            self.anon += n
        self.anon -= k

    def append(self, run: Run) -> None:
        """Put cached free blocks of a prefix or a preempted sequence at the tail of the free queue."""
        self.cached_free += run.hi - run.lo
        self.lru.append(run)
        if isinstance(run.owner, Chain):
            run.owner.free_runs.append(run)

    def release(self, seq: Any, preempted: bool) -> None:
        """Free a sequence's blocks in vLLM's order: its partial last block to the front of the
        free queue, its full blocks (cached) to the tail, own blocks before prefix blocks. A
        preempted sequence may find its own blocks again; those of a sequence that ended nobody reuses."""
        c, kp = seq.computed, seq.kp
        full = c // self.block
        partial = c > full * self.block
        if not self.caching:
            self.anon += full + partial
            return
        self.anon += partial
        own = full - kp if full > kp else 0
        unused = (full if full < kp else kp) - seq.shared  # prefix blocks it computed while another copy was cached
        if preempted and own:
            seq.own_run = run = Run(seq, kp, full)
            self.append(run)
        else:
            unused += own
        if unused > 0:  # content nobody will reuse, merged with the tail's if that is the same
            self.cached_free += unused
            lru = self.lru
            if lru and lru[-1].owner is None:
                lru[-1].hi += unused
            else:
                lru.append(Run(None, 0, unused))
        if seq.shared:
            self.unhold(seq.chain, seq.shared)
            seq.shared = 0

    # --- the prefix cache -------------------------------------------------------------------------

    def lookup(self, seq: Any) -> tuple[int, int]:
        """(blocks hit in the prefix cache, of which free ones) for admitting `seq` now."""
        if not self.caching:
            return 0, 0
        cap = (seq.task.prompt_tokens + seq.generated - 1) // self.block  # the last token is always computed
        hit = touched = 0
        chain = seq.chain
        if chain is not None:
            hit = min(chain.cached, seq.kp, cap)
            touched = hit - chain.held if hit > chain.held else 0
        run = seq.own_run
        if run is not None and run.owner is seq and run.lo == hit == seq.kp:
            top = min(run.hi, cap)
            if top > hit:
                touched += top - hit
                hit = top
        return hit, touched

    def touch(self, seq: Any, hit: int) -> None:
        """Take the `hit` cached blocks for an admitted sequence (free ones leave the free queue)."""
        chain, run = seq.chain, seq.own_run
        prefix_hit = hit if hit < seq.kp else seq.kp
        if chain is not None and prefix_hit:
            runs = chain.free_runs
            while runs and runs[-1].lo < prefix_hit:  # its free blocks, lowest indices last
                last = runs[-1]
                cut = min(last.hi, prefix_hit) - last.lo
                self.cached_free -= cut
                last.lo += cut
                if last.lo < last.hi:
                    break
                runs.pop()
            chain.extents[prefix_hit] = chain.extents.get(prefix_hit, 0) + 1
            if prefix_hit > chain.held:
                chain.held = prefix_hit
            seq.shared = prefix_hit
        if run is not None:
            if hit > run.lo and run.owner is seq:
                self.cached_free -= hit - run.lo
                run.lo = hit
            run.owner = None  # what is left of it is never reached again
            seq.own_run = None

    def register(self, seq: Any, before: int, after: int) -> None:
        """Cache the prefix blocks that computing tokens before..after fills, if it computes the
        prefix's cached copy (as vLLM's `cache_blocks` at allocation time)."""
        chain, old = seq.chain, seq.shared
        if chain is None or old != chain.cached or old != before // self.block:
            return
        top = min(after // self.block, seq.kp)
        if top > old:  # it held blocks 0..old-1 (so did nobody further: old == cached); now 0..top-1
            extents = chain.extents
            if old:
                if extents[old] > 1:
                    extents[old] -= 1
                else:
                    del extents[old]
            extents[top] = extents.get(top, 0) + 1
            seq.shared = chain.cached = chain.held = top

    def unhold(self, chain: Chain | None, blocks: int) -> None:
        """A sequence stops holding blocks 0..blocks-1 of `chain`: those nobody holds become free."""
        assert chain is not None
        left = chain.extents[blocks] - 1
        if left:
            chain.extents[blocks] = left
            return
        del chain.extents[blocks]
        if blocks == chain.held:
            chain.held = max(chain.extents, default=0)
            if chain.held < blocks:
                self.append(Run(chain, chain.held, blocks))

    def audit(self) -> int:
        """Prefix blocks held, recounted from the chains (for tests)."""
        return sum(c.held for c in self.chains.values())
