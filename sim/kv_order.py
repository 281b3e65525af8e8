"""The prefix tree's nodes and the KV block pool's eviction order by policy (`sim.block_pool`).

`Chain` (a node of the prefix tree) and `Run` (cached free blocks) are the pool's data; the
`PolicyOrder` part of the pool keeps the prefix nodes with free blocks in a heap, for the
policies that do not use vLLM's free queue (ragraph.kvpolicy):
- `kvflow` (KVFlow, Pan et al., arXiv 2507.07400): the largest steps to execution first (set
  from `GenStep.kv_steps`: a prefix's value on its last node, a node taking the smallest of the
  prefixes through it), the least recently freed among equals; with a host tier
  (`sim.host_tier`), prefetch of the prefixes due within `load_ahead` steps into free blocks
  (each ends used, wasted or cancelled);
- `ragcache` (RAGCache, Jin et al., arXiv 2404.12457): PGDSF, the lowest priority first,
  priority = clock + frequency x cost / size at a node's last access (the cost its blocks'
  recomputation seconds), the clock raised to each evicted node's priority.
Under both, a node is skipped while it has cached branches (leaves before their stems), and
content no declared prefix holds (the free queue, `BlockPool.lru`) goes before any node.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sim.host_tier import KV_IN, KV_PREFETCH, HostTier

UNBOUNDED = 1 << 62  # the end of a template prefix's node (its length is the sequence's prefix_tokens)
FAR = 1 << 30  # kvflow: the steps to execution of a prefix no request in flight will use


@dataclass(slots=True, eq=False)
class Chain:
    """A node of the prefix tree: the cache of engine blocks start..end-1 of the prefixes through it."""

    start: int = 0  # its first block (a sequence's block index)
    end: int = UNBOUNDED  # one past its last block
    parent: Chain | None = None
    key: Any = None  # its key in its parent's `children` (or in the pool's roots)
    cached: int = -1  # blocks start..cached-1 are cached (held by running sequences, or free)
    held: int = -1  # blocks start..held-1 are held by running sequences
    extents: dict[int, int] = field(default_factory=dict)  # a holder's last block + 1 -> how many hold that far
    free_runs: list[Run] = field(default_factory=list)  # its free blocks, oldest (highest indices) first
    children: dict[int, Chain] = field(default_factory=dict)  # next block id -> node
    alive: bool = True  # still in the tree (a dropped node is never reached again)
    steps: int = FAR  # kvflow: steps to execution of the nearest prefix through it (FAR: none in flight)
    host_lo: int = 0  # blocks host_lo..host_hi-1 are on the host tier (sim.host_tier)
    host_hi: int = 0
    ready_at: float = 0.0  # when blocks loaded from the host (start..cached-1) are all in GPU memory
    prefetches: list[list[float]] | None = None  # kvflow: [lo, ready_at] of its prefetches not yet settled
    freq: int = 0  # ragcache: accesses (hits and computations of its blocks)
    prio: float = 0.0  # ragcache: PGDSF priority, clock + freq x cost / size, as of its last access

    def __post_init__(self) -> None:
        if self.cached < 0:
            self.cached = self.held = self.start


@dataclass(slots=True, eq=False)
class Run:
    """Cached free blocks in the free queue: blocks lo..hi-1 of `owner`, evicted from hi-1 down.
    owner: a shared prefix, a preempted sequence (its own blocks), or None (content nobody reuses)."""

    owner: Any  # Chain | the engine's sequence | None
    lo: int
    hi: int
    age: int = 0  # when it was freed (kvflow: the least recently freed first among equals)


class PolicyOrder:
    """The eviction heap and kvflow's prefetch: a part of `BlockPool` split out by job. The
    pool initialises the state below and defines `take`, `_drop` and `nodes`."""

    block: int
    anon: int
    cached_free: int
    node_free: int
    evicted: int
    kvflow: bool
    ragcache: bool
    chains: dict[str, Chain]
    roots: dict[tuple[int, int], Chain]
    free_nodes: dict[Chain, None]
    host: HostTier | None
    cost: Callable[[int, int], float] | None
    clock: float
    load_ahead: int
    prefetched: int
    prefetch_used: int
    prefetch_wasted: int
    prefetch_cancelled: int
    _heap: list[tuple[float, int, int, Chain]]
    _serial: int
    _marked: list[Chain]
    _freed: int

    def take(self, k: int) -> None:  # (BlockPool's)
        raise NotImplementedError

    def _drop(self, node: Chain | None) -> None:  # (BlockPool's)
        raise NotImplementedError

    def nodes(self) -> list[Chain]:  # (BlockPool's)
        raise NotImplementedError

    # --- kvflow -----------------------------------------------------------------------------------

    def set_steps(self, steps: tuple[tuple[object, int], ...]) -> None:
        """Steps to execution per declared prefix (`GenStep.kv_steps`): each on the prefix's last
        node, a node taking the smallest of the prefixes through it; the rest are FAR."""
        new: dict[Chain, int] = {}
        for pid, s in steps:
            node = self.chains.get(pid) if isinstance(pid, str) else self._deepest(pid)  # type: ignore[arg-type]
            while node is not None and s < new.get(node, FAR):
                new[node] = s
                node = node.parent
        moved = [node for node in self._marked if node not in new]
        for node in moved:
            node.steps = FAR
        for node, s in new.items():
            if node.steps != s:
                node.steps = s
                moved.append(node)
        self._marked = list(new)
        for node in moved:  # their place in the eviction order moved
            if node.free_runs:
                self._push(node)

        if self.load_ahead >= 0 and self.host is not None:
            for pid, s in steps:
                if s <= self.load_ahead:
                    self.prefetch(pid, self.load_ahead)  # (it evicts no prefix due within load_ahead)

    def _key(self, node: Chain) -> float:
        return node.prio if self.ragcache else -node.steps

    def _push(self, node: Chain) -> None:
        self._serial += 1
        heapq.heappush(self._heap, (self._key(node), node.free_runs[0].age, self._serial, node))

    # --- ragcache -----------------------------------------------------------------------------------

    def _access(self, node: Chain) -> None:
        """ragcache: a hit on, or a computation of, `node`'s blocks: its PGDSF priority rises."""
        node.freq += 1
        b = self.block
        size = node.end - node.start if node.end != UNBOUNDED else 1
        per_block = self.cost(node.start * b, size * b) / size if self.cost is not None else 1.0
        node.prio = self.clock + node.freq * per_block
        if node.free_runs:
            self._push(node)

    # --- kvflow's prefetch --------------------------------------------------------------------------

    def prefetch(self, pid: object, steps: int = -1, demand: bool = False) -> None:
        """Load, host to GPU in the background, the host blocks of prefix `pid` (due in `steps`)
        that the GPU lacks, from its root down while each node before is wholly cached, into
        free blocks: blocks with no content, unshared content, or prefixes due later than it and
        not loading (`demand`: for a sequence the engine skips meanwhile, a load, not a prefetch)."""
        host = self.host
        assert host is not None
        path: list[Chain]
        node: Chain | None
        if isinstance(pid, str):
            node = self.chains.get(pid)
            path = [node] if node is not None else []
        else:
            path, node = [], None
            for j, h in enumerate(pid[1:]):  # type: ignore[index]
                node = (self.roots.get((pid[0], h)) if j == 0 else node.children.get(h))  # type: ignore[index, union-attr, arg-type, attr-defined]
                if node is None:
                    break
                path.append(node)
        for i, node in enumerate(path):
            c = node.cached
            if c < node.end:
                top = host.usable(node, c)
                k = top - c
                if k <= 0 or not self._free_for(k, steps):
                    return
                if node.cached != c or any(p.cached != p.end for p in path[:i]) or not node.alive:
                    return  # (it evicted part of this path)
                self.anon -= k
                self.node_free += k
                node.cached = top
                self._freed += 1
                node.free_runs.insert(0, Run(node, c, top, self._freed))  # its highest blocks
                self.cached_free += k
                self.free_nodes[node] = None
                self._push(node)
                node.ready_at = ready = host.load(node, k, KV_IN if demand else KV_PREFETCH)
                if not demand:
                    if node.prefetches is None:
                        node.prefetches = []
                    node.prefetches.append([c, ready])
                    self.prefetched += 1
                if top < node.end:
                    return

    def _free_for(self, k: int, steps: int) -> bool:
        """Make `k` blocks free with no content for a prefetch, evicting unshared content, then
        prefix nodes due later than `steps` (kvflow's order) and not loading; whether it could."""
        while self.anon < k:
            unshared = self.cached_free - self.node_free
            if unshared > 0:  # (`take` evicts the free queue's unshared runs before any prefix)
                x = min(k, self.anon + unshared)
                self.take(x)
                self.anon += x
                continue
            node = self._top()
            if node is None or node.steps <= steps or node.ready_at > self.host.now:  # type: ignore[union-attr]
                return False
            n = self._evict_prefix(k - self.anon)
            self.cached_free -= n
            self.anon += n
        return True

    def _settle_evicted(self, node: Chain) -> None:
        """Prefetches of `node` whose blocks are all evicted before any use: wasted, or cancelled
        when their load had not finished."""
        kept = []
        now = self.host.now if self.host is not None else 0.0
        for rec in node.prefetches or ():
            if rec[0] < node.cached:
                kept.append(rec)
            elif rec[1] > now:
                self.prefetch_cancelled += 1
            else:
                self.prefetch_wasted += 1
        node.prefetches = kept or None

    def prefetch_report(self) -> dict[str, int]:
        """Prefetches issued and how each ended (those never used by the end of the run: wasted)."""
        pending = sum(len(n.prefetches or ()) for n in self.nodes())
        return {"issued": self.prefetched, "used": self.prefetch_used,
                "wasted": self.prefetch_wasted + pending, "cancelled": self.prefetch_cancelled}

    def _deepest(self, pid: tuple[int, ...]) -> Chain | None:
        """The deepest node the tree has of the id chain `pid` = (block_tokens, *ids)."""
        node = self.roots.get((pid[0], pid[1])) if len(pid) > 1 else None
        for h in pid[2:]:
            child = node.children.get(h) if node is not None else None
            if child is None:
                break
            node = child
        return node

    def _evict_prefix(self, want: int) -> int:
        """kvflow: evict up to `want` free blocks of one node: the largest steps to execution, the
        least recently freed among equals, never a node with cached blocks below it (its branches
        go first); its highest blocks first. Returns how many."""
        best = self._top()
        if best is None:
            raise IndexError("no free prefix block to evict")  # (a bug: the caller counted free blocks)
        heapq.heappop(self._heap)
        runs = best.free_runs
        run = runs[0]  # its oldest free run holds its highest blocks
        n = min(run.hi - run.lo, want)
        run.hi -= n
        best.cached = min(best.cached, run.hi)
        self.evicted += n
        self.node_free -= n
        if self.host is not None:
            self.host.store(best, run.hi, run.hi + n)
        if best.prefetches:
            self._settle_evicted(best)
        if self.ragcache and best.prio > self.clock:
            self.clock = best.prio
        if run.hi == run.lo:
            runs.pop(0)
        if runs:
            self._push(best)
        else:
            del self.free_nodes[best]
        if best.cached == best.start:
            parent = best.parent
            if parent is not None and parent.free_runs:
                self._push(parent)  # it may be the next to go
            if best.end != UNBOUNDED:
                self._drop(best)
        return n

    def _top(self) -> Chain | None:
        """The node the heap evicts next (None: no free prefix block), its stale entries dropped:
        entries are checked when they reach the top, as a node's key may have moved since its push."""
        heap = self._heap
        while heap:
            key, age, _, best = heap[0]
            runs = best.free_runs
            if not runs:
                heapq.heappop(heap)
                self.free_nodes.pop(best, None)
            elif key != self._key(best) or age != runs[0].age:
                heapq.heappop(heap)  # a stale entry: the node was pushed again with its current key
            elif any(c.cached > c.start for c in best.children.values()):
                heapq.heappop(heap)  # pushed again when its last cached branch goes
            else:
                return best
        return None

    def _settle_used(self, node: Chain, h: int) -> None:
        """Prefetches of `node` a sequence now holds blocks of (below `h`): used."""
        kept = [rec for rec in node.prefetches or () if rec[0] >= h]
        self.prefetch_used += len(node.prefetches or ()) - len(kept)
        node.prefetches = kept or None
