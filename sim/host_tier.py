"""The host-memory KV tier of the simulated engine and the `pcie` link its copies take.

As SGLang's hierarchical radix cache (HiCache, KVFlow's baseline) and vLLM's CPU offloading
connector do: KV blocks of the prefix tree that the GPU pool evicts are copied to CPU memory
(`engine.host_kv_gib`) over PCIe, and a later prompt that reaches them loads them back instead
of recomputing them. The block pool (`sim.block_pool`) decides what is evicted and what a
prompt reaches; this module holds what is on the host, which host content goes when it is full
(least recently stored or loaded first), and the link's clock.

Theory of operation. Host content is kept per prefix-tree node as one range of its blocks,
`host_lo..host_hi-1` (`Chain` fields): the GPU evicts a node's blocks from the top down, so an
eviction of blocks lo..hi-1 extends the node's host range when the two touch or overlap, and
replaces it otherwise; blocks already on the host (loaded back earlier, the host copy kept)
are not copied again. A node's host blocks are usable when they start at or below its
GPU-cached end (`host_lo <= cached`). Copies are serialised on the link: each starts when the
link is free (`free_at`) and the one before it ended, and takes `hwmodel.latency.pcie_s` of
its bytes. Copies out run in the background (they delay later loads, not the engine); a load
makes its blocks ready at its end (`Chain.ready_at`): the engine stalls the step that first
computes a sequence whose blocks are still loading, or, under kvflow's prefetch, skips it.
Every copy is kept for the timeline (`copies`, drained by the executor) and counted.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

KV_OUT, KV_IN, KV_PREFETCH = "KVCopyOut", "KVLoad", "KVPrefetch"  # timeline names of the copies


class HostTier:
    """CPU memory for evicted KV blocks, and the PCIe link between it and the GPU pool."""

    def __init__(self, blocks: int, block_bytes: int, copy_s: Callable[[int], float]) -> None:
        self.capacity = blocks  # host blocks
        self.block_bytes = block_bytes
        self.copy_s = copy_s  # seconds of a copy of n bytes (hwmodel.latency.pcie_s)
        self.used = 0  # host blocks holding content
        self.nodes: dict[Any, None] = {}  # nodes with host content, least recently stored or loaded first
        self.free_at = 0.0  # when the link has finished every copy queued so far
        self.now = 0.0  # the engine's clock (set by the body before each step)
        self.copies: list[tuple[str, float, float, int]] = []  # (name, start, seconds, bytes) not yet drained
        self.bytes_out = 0
        self.bytes_in = 0
        self.dropped = 0  # host blocks whose content went to make room
        self.on_empty: Callable[[Any], None] = lambda node: None  # a node lost its last host block (the pool drops it)

    # --- content ---------------------------------------------------------------------------------

    def store(self, node: Any, lo: int, hi: int) -> None:
        """The GPU pool evicted blocks lo..hi-1 of `node`: copy to the host those it lacks."""
        if hi <= lo or self.capacity <= 0:
            return
        hlo, hhi = node.host_lo, node.host_hi
        if hhi > hlo and hlo <= hi and lo <= hhi:  # touching or overlapping: one range
            new = (hlo - lo if lo < hlo else 0) + (hi - hhi if hi > hhi else 0)
            nlo, nhi = min(lo, hlo), max(hi, hhi)
        else:
            self._set(node, node.host_lo, node.host_lo)  # another range: the old one goes
            new, nlo, nhi = hi - lo, lo, hi
        if new <= 0:
            self._touch(node)
            return
        self.nodes.pop(node, None)  # not a victim of its own room
        room = self._make_room(new)
        if not node.alive:  # the room taken was its last branch's: it left the tree, its blocks are lost
            return
        if room < new:  # the host is smaller than the copy: keep its lowest blocks
            nhi -= new - room
            new = room
        if nhi <= nlo:
            if node.host_hi > node.host_lo:
                self.nodes[node] = None
            return
        self._set(node, nlo, nhi)
        self._copy(KV_OUT, new)

    def usable(self, node: Any, cached: int) -> int:
        """One past the last block of `node` reachable from its GPU-cached end `cached` (cached
        itself when the host holds nothing from there)."""
        return node.host_hi if node.host_lo <= cached < node.host_hi else cached

    def load(self, node: Any, blocks: int, name: str = KV_IN) -> float:
        """Copy `blocks` of `node` host to GPU (they stay on the host too); returns when they are ready."""
        self._touch(node)
        return self._copy(name, blocks)

    # --- the link --------------------------------------------------------------------------------

    def _copy(self, name: str, blocks: int) -> float:
        nbytes = blocks * self.block_bytes
        start = self.free_at if self.free_at > self.now else self.now
        seconds = self.copy_s(nbytes)
        self.free_at = start + seconds
        self.copies.append((name, start, seconds, nbytes))
        if name == KV_OUT:
            self.bytes_out += nbytes
        else:
            self.bytes_in += nbytes
        return self.free_at

    def drain(self) -> list[tuple[str, float, float, int]]:
        """The copies queued since the last drain (for the timeline's `pcie` lane)."""
        out, self.copies = self.copies, []
        return out

    # --- room ------------------------------------------------------------------------------------

    def _set(self, node: Any, lo: int, hi: int) -> None:
        self.used += (hi - lo) - (node.host_hi - node.host_lo)
        node.host_lo, node.host_hi = lo, hi
        if hi > lo:
            self.nodes.pop(node, None)
            self.nodes[node] = None
        else:
            self.nodes.pop(node, None)

    def _touch(self, node: Any) -> None:
        if node in self.nodes:
            del self.nodes[node]
            self.nodes[node] = None

    def _make_room(self, blocks: int) -> int:
        """Free host blocks for `blocks` more, the least recently used content first (a range
        from its top); returns how many of them fit."""
        nodes = self.nodes
        while self.used + blocks > self.capacity and nodes:
            victim = next(iter(nodes))
            over = self.used + blocks - self.capacity
            size = victim.host_hi - victim.host_lo
            cut = over if over < size else size
            self.dropped += cut
            self._set(victim, victim.host_lo, victim.host_hi - cut)
            if victim.host_hi == victim.host_lo:
                victim.host_lo = victim.host_hi = 0
                self.on_empty(victim)
        return min(blocks, self.capacity - self.used)

    def report(self) -> dict[str, object]:
        """Host-tier counters for summary.json `kv_cache`."""
        return {"host_blocks": self.capacity, "host_blocks_used": self.used, "bytes_copied_out": self.bytes_out,
                "bytes_copied_in": self.bytes_in, "host_evicted_blocks": self.dropped}
