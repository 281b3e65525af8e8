"""The policy contract: the decisions the scheduler core delegates.

The core calls these hooks from `next_work`/`complete`; a policy reads the scheduler's
public state (`gen_ready`, `gen_in_engine`, `retr_waiting`, `busy(lane)`, `gen_step_s`,
`gpu_cache`...) and acts only through the scheduler's action methods (`take_clusters`,
`reorder`, `speculate`). A policy never knows which body runs it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, ClassVar

from ragraph.work import CacheLoad, Lane, SearchBatch

if TYPE_CHECKING:
    from ragraph.core import Scheduler
    from ragraph.runtime import NodeRun, RequestRun


class PolicyError(ValueError):
    """Unknown policy, unknown technique or a bad option value."""


class Policy(ABC):
    """Base class: continuous admission of generations, no speculation, no cache."""

    name: ClassVar[str]
    lanes: tuple[Lane, ...] = (Lane.GPU_GEN, Lane.CPU_RETRIEVAL)  # lanes this policy gives work to

    # --- planning (called from Scheduler.next_work) -------------------------------------------

    def admit_generations(self, s: Scheduler, now: float) -> list[NodeRun]:
        """Called when `gpu_gen` is idle: the READY Generate nodes to hand to the engine
        before its next step (default: all of them, oldest first, as vLLM's continuous
        batching would take them). Returning [] with the engine empty idles the lane."""
        return list(s.gen_ready.values())

    @abstractmethod
    def plan_search(self, s: Scheduler, lane: Lane, now: float) -> SearchBatch | None:
        """Called when a retrieval lane is idle: the next search call, built with
        `s.take_clusters`, or None to leave the lane idle."""

    def plan_pcie(self, s: Scheduler, now: float) -> CacheLoad | None:
        """Called when `pcie` is idle: a cache refresh, or None (default: no GPU cache)."""
        return None

    # --- notifications (called from submit/complete) ---------------------------------------------

    def on_submit(self, s: Scheduler, run: RequestRun, now: float) -> None:
        """A request arrived (before its first nodes become READY)."""

    def on_retrieve_ready(self, s: Scheduler, node: NodeRun, now: float) -> None:
        """A Retrieve node became READY (a place to reorder its clusters)."""

    def on_search_progress(self, s: Scheduler, node: NodeRun, now: float) -> None:
        """A sub-stage of `node` finished and the node still has clusters (a place to
        speculate on the partial top-k)."""

    def keep_speculation(self, s: Scheduler, node: NodeRun, now: float) -> bool:
        """The inputs of speculatively started `node` are now final: keep its work (True)
        or abort and redo it (False). Default: redo."""
        return False

    def on_request_end(self, s: Scheduler, run: RequestRun, now: float) -> None:
        """A request completed or failed."""
