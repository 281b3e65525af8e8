"""What a policy sees of the scheduler: read-only state and the actions it may take.

The core (`ragraph.core.Scheduler`) hands every policy call a `SchedulerView`. Its queues
are read-only mappings (`types.MappingProxyType`) over the core's own dicts, so a policy
reads the live state without copying it and cannot add or drop entries; the node and
request objects it reaches are read, never assigned to. A policy changes the run only
through the view's action methods (`take_clusters`, `reorder`, `sort_remaining`,
`partition_remaining`, `speculate`,
`restart_speculation`, `watch_generation`, `speculate_retrieval`, `take_speculative`), each
of which checks its arguments and raises `SchedulerError` on misuse. Ending requests
(`fail_request`, `fail_all`) is the bodies' business and is not
on the view.

The view imports nothing from the core: it is built from any object with the core's
attributes (the `_Core` protocol), so `ragraph.core` depends on this module and on
`ragraph.policies.base`, and neither depends back on the core.
"""

from __future__ import annotations

from collections.abc import Callable, Container, Mapping, Sequence, Set
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Protocol

from ragraph.graph import NodeKey
from ragraph.work import Lane, ScanTask

if TYPE_CHECKING:
    from ragraph.runtime import NodeRun, RequestRun


class _Core(Protocol):
    requests: dict[str, RequestRun]
    gen_ready: dict[NodeKey, NodeRun]
    gen_in_engine: dict[NodeKey, NodeRun]
    retr_waiting: dict[NodeKey, NodeRun]
    retr_speculative: dict[NodeKey, NodeRun]
    gpu_cache: set[int]
    gen_step_s: float | None
    kv_used_blocks: int
    kv_total_blocks: int
    kv_block_tokens: int
    engine_waiting: int

    decode_tokens_s: float
    aborted_tokens: int

    def busy(self, lane: Lane) -> bool: ...
    def query_tokens(self, node: NodeRun) -> int: ...

    def take_clusters(self, node: NodeRun, count: int) -> ScanTask: ...
    def reorder(self, node: NodeRun, remaining: list[int], seed: tuple[int, ...] = ()) -> None: ...
    def sort_remaining(self, node: NodeRun, key: Callable[[int], Any], *, reverse: bool = False,
                       seed: tuple[int, ...] = ()) -> None: ...
    def partition_remaining(self, node: NodeRun, groups: Sequence[Container[int]], *,
                            seed: tuple[int, ...] = ()) -> None: ...
    def speculate(self, node: NodeRun, now: float) -> None: ...
    def restart_speculation(self, node: NodeRun, now: float) -> None: ...
    def watch_generation(self, node: NodeRun, fraction: float) -> None: ...
    def speculate_retrieval(self, node: NodeRun, fraction: float, now: float) -> None: ...
    def take_speculative(self, node: NodeRun) -> ScanTask: ...


class SchedulerView:
    """Read-only queues of one scheduler, and the actions a policy may take on it."""

    __slots__ = (
        "_core",
        "busy",
        "gen_in_engine",
        "gen_ready",
        "gpu_cache",
        "partition_remaining",
        "query_tokens",
        "reorder",
        "requests",
        "restart_speculation",
        "retr_speculative",
        "retr_waiting",
        "sort_remaining",
        "speculate",
        "speculate_retrieval",
        "take_clusters",
        "take_speculative",
        "watch_generation",
    )

    def __init__(self, core: _Core) -> None:
        self._core = core
        # live read-only mappings over the core's dicts (the core never rebinds them)
        self.requests: Mapping[str, RequestRun] = MappingProxyType(core.requests)  # active requests by id
        # Generate nodes READY (or started speculatively) and not yet in the engine, oldest first
        self.gen_ready: Mapping[NodeKey, NodeRun] = MappingProxyType(core.gen_ready)
        self.gen_in_engine: Mapping[NodeKey, NodeRun] = MappingProxyType(core.gen_in_engine)
        # Retrieve nodes with clusters not yet dispatched, oldest first (the retrieval wavefront)
        self.retr_waiting: Mapping[NodeKey, NodeRun] = MappingProxyType(core.retr_waiting)
        # Retrieve nodes started speculatively on a partial generation, not yet dispatched
        self.retr_speculative: Mapping[NodeKey, NodeRun] = MappingProxyType(core.retr_speculative)
        self.gpu_cache: Set[int] = core.gpu_cache  # clusters resident in the GPU index cache (live)
        # queries and actions: the core's methods (the cluster-order ones are `ragraph.cluster_order`'s functions)
        self.busy = core.busy
        self.query_tokens = core.query_tokens
        self.take_clusters = core.take_clusters
        self.reorder = core.reorder
        self.sort_remaining = core.sort_remaining
        self.partition_remaining = core.partition_remaining
        self.speculate = core.speculate
        self.restart_speculation = core.restart_speculation
        self.watch_generation = core.watch_generation
        self.speculate_retrieval = core.speculate_retrieval
        self.take_speculative = core.take_speculative

    @property
    def gen_step_s(self) -> float | None:
        """Moving average of engine step durations (None before the first step)."""
        return self._core.gen_step_s

    @property
    def decode_tokens_s(self) -> float:
        """Moving average of the engine's decode tokens per second (0 before the first step)."""
        return self._core.decode_tokens_s

    @property
    def aborted_tokens(self) -> int:
        """Output tokens decoded by sequences the run aborted (wasted speculative work)."""
        return self._core.aborted_tokens

    @property
    def kv_used_blocks(self) -> int:
        """KV-cache blocks in use, as the engine last reported."""
        return self._core.kv_used_blocks

    @property
    def kv_total_blocks(self) -> int:
        """KV-cache capacity in blocks, as the engine last reported (0 before the first step)."""
        return self._core.kv_total_blocks

    @property
    def kv_block_tokens(self) -> int:
        """Tokens one KV block holds, as the engine reports it (0 before its first step)."""
        return self._core.kv_block_tokens

    @property
    def kv_free_tokens(self) -> int:
        """Free KV-cache memory, in tokens, as of the engine's last step: the free blocks of its
        pool (the simulator's engine model, or vLLM's block pool on the real body; cached blocks
        no sequence holds count as free, as vLLM evicts them on demand) x tokens per block."""
        return (self._core.kv_total_blocks - self._core.kv_used_blocks) * self._core.kv_block_tokens

    @property
    def engine_waiting(self) -> int:
        """Sequences queued in the engine after its last step (KV cache full, preempted)."""
        return self._core.engine_waiting
