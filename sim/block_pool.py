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

Cached content comes in runs (`Run`): consecutive blocks of one node of the prefix tree
(`Chain`), a preempted sequence's own blocks (it may find them again when it resumes), or
content nobody reuses.

The prefix tree. A sequence's declared prefix is a path of `Chain` nodes from a root: a
template prefix (`GenTask.prefix`, one token sequence of any length) is one root node; a
chain of block ids (`GenTask.hash_ids`, Mooncake-style, `block_tokens` tokens per id) is one
node per id, the child of the node of the ids before it, so prompts whose ids agree share
those nodes. Blocks are numbered in the sequence (block b holds tokens b*B..(b+1)*B-1 for the
engine's block size B); a node holds the engine blocks whose *last* token lies in its id's
tokens, blocks floor(j*D/B)..floor((j+1)*D/B)-1 for the j-th id of D tokens: as vLLM hashes
a block with its parent's hash and its own tokens, an engine block's content is fixed by the
ids up to the one holding its last token. Within a node, the cached blocks are always
start..cached-1 and a node has cached blocks only where its parent is wholly cached: a block's
holders include those of every block after it on a path, so the later block reaches the free
queue first, and is evicted first. Blocks start..held-1 are held by running sequences.
Nodes of id chains that hold nothing, cache nothing and have no children are dropped.

The eviction order of kvflow and ragcache, and kvflow's prefetch, are `sim.kv_order`'s (a part
of the pool, split out); the host-memory tier is `sim.host_tier`'s.

The sequences the pool serves are the engine's: it reads and writes their `path` (the nodes
of their declared prefix), `kp` (its full engine blocks), `shared` (prefix blocks held from
the cache), `own_run` and `computed`.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Any

from sim.host_tier import HostTier
from sim.kv_order import FAR, UNBOUNDED, Chain, PolicyOrder, Run

__all__ = ["FAR", "UNBOUNDED", "BlockPool", "Chain", "Run"]

class BlockPool(PolicyOrder):
    """KV blocks of one engine: free blocks (with and without cached content), lent blocks,
    and the prefix cache. Held blocks are `total - anon - cached_free - lent`."""

    def __init__(self, total: int, block_size: int, caching: bool, kv_policy: str = "lru",
                 host: HostTier | None = None, cost: Callable[[int, int], float] | None = None,
                 load_ahead: int = -1) -> None:
        self.total = total
        self.kvflow = kv_policy == "kvflow"
        self.ragcache = kv_policy == "ragcache"
        self.ordered = self.kvflow or self.ragcache  # prefix nodes in a heap (else lru, ragraph.kvpolicy)
        self.free_nodes: dict[Chain, None] = {}  # kvflow, ragcache: nodes with free cached blocks (not in `lru`)
        # kvflow: (-steps, age, serial, node); ragcache: (priority, age, serial, node); checked when popped
        self._heap: list[tuple[float, int, int, Chain]] = []
        self.host = host  # the host-memory tier (None: none)
        if host is not None:
            host.on_empty = self._drop
        self.cost = cost  # ragcache: seconds to recompute n tokens after `start` tokens, cost(start, n)
        self.clock = 0.0  # ragcache: PGDSF's clock (the priority of the last node evicted)
        self.load_ahead = load_ahead  # kvflow with a host tier: prefetch prefixes due within it (-1: no prefetch)
        self.ready = 0.0  # set by `lookup`, then `touch`: when the hit blocks are all in GPU memory
        self.loads: list[tuple[Chain, int, int]] = []  # set by `lookup`: host blocks a hit loads (node, from, to)
        self.node_free = 0  # kvflow, ragcache: free cached blocks of prefix nodes (in the heap; the rest is in `lru`)
        self.prefetched = self.prefetch_used = self.prefetch_wasted = self.prefetch_cancelled = 0
        self._serial = 0
        self._marked: list[Chain] = []  # kvflow: nodes whose steps are set
        self._freed = 0  # runs freed so far (their ages)
        self.evicted = 0  # cached blocks whose content an allocation evicted (content someone could reuse)
        self.block = block_size
        self.caching = caching
        self.anon = total  # free blocks with no cached content (reused first)
        self.lent = 0  # blocks lent to the GPU index cache (`lend`): neither free nor the sequences'
        self.cached_free = 0  # free blocks with cached content, in `lru`
        self.lru: deque[Run] = deque()
        self.chains: dict[str, Chain] = {}  # template prefixes' nodes
        self.roots: dict[tuple[int, int], Chain] = {}  # (block_tokens, first id) -> node of an id chain

    @property
    def used(self) -> int:
        """Blocks held by running sequences (cached free blocks count as free, as in vLLM's usage)."""
        return self.total - self.anon - self.cached_free - self.lent

    def chain(self, prefix: str) -> Chain:
        """The node of template prefix `prefix` (made on first use)."""
        chain = self.chains.get(prefix)
        if chain is None:
            chain = self.chains[prefix] = Chain()
        return chain

    def path(self, ids: tuple[int, ...], block_tokens: int, blocks: int) -> tuple[Chain, ...]:
        """The nodes of the id chain `ids` (made on first use) that hold some of a sequence's
        first `blocks` engine blocks."""
        out: list[Chain] = []
        node: Chain | None = None
        b = self.block
        for j, h in enumerate(ids):
            start = j * block_tokens // b
            if start >= blocks:
                break
            kids = self.roots if node is None else node.children
            key = (block_tokens, h) if node is None else h
            child = kids.get(key)  # type: ignore[call-overload, arg-type]
            if child is None:
                child = Chain(start, (j + 1) * block_tokens // b, node, key)
                kids[key] = child  # type: ignore[index]
            out.append(child)
            node = child
        return tuple(out)

    def find(self, ids: tuple[int, ...], block_tokens: int) -> Chain | None:
        """The node of the last id of `ids`, if the tree has it (nothing is made)."""
        node = self.roots.get((block_tokens, ids[0])) if ids else None
        for h in ids[1:]:
            if node is None:
                return None
            node = node.children.get(h)
        return node

    def _drop(self, node: Chain | None) -> None:
        """Remove id-chain nodes that hold, cache and lead to nothing, from `node` up."""
        while (node is not None and node.alive and node.end != UNBOUNDED and not node.children
               and node.cached == node.start and not node.extents and node.host_hi <= node.host_lo):
            node.alive = False
            parent = node.parent
            del (self.roots if parent is None else parent.children)[node.key]  # type: ignore[arg-type]
            node = parent

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
            if not lru:  # kvflow: the unshared suffixes are gone; prefixes by steps to execution
                n = self._evict_prefix(k - self.anon)
                self.cached_free -= n
                self.anon += n
                continue
            run = lru[0]
            n = run.hi - run.lo
            if run.owner is None or n == 0:
                lru.popleft()
            else:
                n = min(n, k - self.anon)
                self.evicted += n
                run.hi -= n
                if isinstance(run.owner, Chain):
                    node = run.owner
                    if self.host is not None:
                        self.host.store(node, run.hi, run.hi + n)
                    node.cached = min(node.cached, run.hi)
                    if run.hi == run.lo:
                        node.free_runs.remove(run)
                        if node.cached == node.start and node.end != UNBOUNDED:
                            self._drop(node)
                if run.hi == run.lo:
                    lru.popleft()
            self.cached_free -= n
            self.anon += n
        self.anon -= k

    def append(self, run: Run) -> None:
        """Put cached free blocks of a prefix or a preempted sequence at the tail of the free queue
        (kvflow: a prefix's blocks join their node's free blocks instead)."""
        self.cached_free += run.hi - run.lo
        if isinstance(run.owner, Chain):
            run.owner.free_runs.append(run)
            if self.ordered:
                self.node_free += run.hi - run.lo
                self._freed += 1
                run.age = self._freed
                self.free_nodes[run.owner] = None
                self._push(run.owner)
                return
        self.lru.append(run)

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
        shared = seq.shared
        if shared:
            path = seq.path
            for i in range(len(path) - 1, -1, -1):  # the deepest first: the free queue's order
                node = path[i]
                if node.start < shared and node.start < node.end:
                    self.unhold(node, shared if shared < node.end else node.end)
            seq.shared = 0
        if seq.path and seq.path[-1].end != UNBOUNDED:
            self._drop(seq.path[-1])

    # --- the prefix cache -------------------------------------------------------------------------

    def lookup(self, seq: Any) -> tuple[int, int]:
        """(blocks hit in the prefix cache, of which free ones) for admitting `seq` now."""
        if not self.caching:
            return 0, 0
        cap = (seq.task.prompt_tokens + seq.generated - 1) // self.block  # the last token is always computed
        hit = touched = 0
        top = seq.kp if seq.kp < cap else cap
        host, ready = self.host, 0.0
        if host is not None:
            self.loads = []
        for node in seq.path:  # the cached blocks along the path, up to the first node not wholly cached
            if node.start >= top:
                break
            c = node.cached if node.cached < top else top
            if c > node.held:
                touched += c - node.held
            hit = c
            if host is not None:
                if c > node.start and node.ready_at > ready:
                    ready = node.ready_at
                if c == node.cached and c < top:  # the rest of the node from the host tier
                    u = host.usable(node, c)
                    if u > c:
                        u = u if u < top else top
                        self.loads.append((node, c, u))
                        touched += u - c  # (new blocks, as the free blocks a hit takes)
                        hit = u
                        if u < node.end:
                            break
                        continue
            if node.cached < node.end:
                break
        self.ready = ready
        run = seq.own_run
        if run is not None and run.owner is seq and run.lo == hit == seq.kp:
            top = min(run.hi, cap)
            if top > hit:
                touched += top - hit
                hit = top
        return hit, touched

    def touch(self, seq: Any, hit: int) -> None:
        """Take the `hit` cached blocks for an admitted sequence, right after `lookup` found them
        (free ones leave the free queue; those on the host tier are loaded into new blocks)."""
        run = seq.own_run
        prefix_hit = hit if hit < seq.kp else seq.kp
        loads = self.loads if self.host is not None else ()
        if loads:
            self.loads = []
            for node, _c, u in loads:  # GPU-cached (and held below) from now; their data arrive at `ready_at`
                node.cached = u
        if prefix_hit:
            for node in seq.path:
                if node.start >= prefix_hit:
                    break
                if node.start == node.end:
                    continue
                h = prefix_hit if prefix_hit < node.end else node.end
                runs = node.free_runs
                while runs and runs[-1].lo < h:  # its free blocks, lowest indices last
                    last = runs[-1]
                    cut = min(last.hi, h) - last.lo
                    self.cached_free -= cut
                    if self.ordered:
                        self.node_free -= cut
                    last.lo += cut
                    if last.lo < last.hi:
                        break
                    runs.pop()
                node.extents[h] = node.extents.get(h, 0) + 1
                if h > node.held:
                    node.held = h
                if node.prefetches:
                    self._settle_used(node, h)
                if self.ragcache:
                    self._access(node)
            seq.shared = prefix_hit
        if loads:
            self.take(sum(u - c for _, c, u in loads))
            host = self.host
            assert host is not None
            for node, c, u in loads:
                node.ready_at = t = host.load(node, u - c)
                if t > self.ready:
                    self.ready = t
        if run is not None:
            if hit > run.lo and run.owner is seq:
                self.cached_free -= hit - run.lo
                run.lo = hit
            run.owner = None  # what is left of it is never reached again
            seq.own_run = None

    def register(self, seq: Any, before: int, after: int) -> None:
        """Cache the prefix blocks that computing tokens before..after fills, if it computes the
        prefix's cached copy (as vLLM's `cache_blocks` at allocation time): the blocks it holds
        end where the cache along its path ends."""
        old = seq.shared
        if old != before // self.block or old >= seq.kp:
            return
        top = min(after // self.block, seq.kp)
        if top <= old:
            return
        path = seq.path
        if not path[-1].alive:  # its nodes left the tree (it held none of them): the same ids afresh
            seq.path = path = self.path(seq.task.hash_ids, seq.task.block_tokens, seq.kp)
        i = 0
        while path[i].end <= old:  # nodes it wholly holds (the path reaches kp > old)
            i += 1
        if path[i].cached != old:
            return  # the cache along its path ends elsewhere: it computes a copy nobody reuses
        for node in path[i:]:
            if node.start >= top:
                break
            if node.start == node.end:
                continue
            h = top if top < node.end else node.end
            extents = node.extents
            if node.start < old:  # it held node.start..old-1 of this node (nobody held further)
                if extents[old] > 1:
                    extents[old] -= 1
                else:
                    del extents[old]
            extents[h] = extents.get(h, 0) + 1
            node.cached = node.held = h
            if self.ragcache:
                self._access(node)
        seq.shared = top

    def unhold(self, chain: Chain, blocks: int) -> None:
        """A sequence stops holding blocks start..blocks-1 of `chain`: those nobody holds become free."""
        left = chain.extents[blocks] - 1
        if left:
            chain.extents[blocks] = left
            return
        del chain.extents[blocks]
        if blocks == chain.held:
            chain.held = max(chain.extents, default=chain.start)
            if chain.held < blocks:
                self.append(Run(chain, chain.held, blocks))

    def nodes(self) -> list[Chain]:
        """Every node of the tree (for tests and audits)."""
        out, todo = list(self.chains.values()), list(self.roots.values())
        while todo:
            node = todo.pop()
            out.append(node)
            todo.extend(node.children.values())
        return out

    def audit(self) -> int:
        """Prefix blocks held, recounted from the nodes (for tests); checks the tree's invariants."""
        held = 0
        for node in self.nodes():
            assert node.start <= node.held <= node.cached <= node.end, node
            assert node.cached == node.start or node.parent is None or node.parent.cached == node.parent.end, node
            held += node.held - node.start
        return held
