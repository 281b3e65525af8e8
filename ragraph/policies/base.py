"""The policy interface: what the scheduler core asks a policy, and when.

A policy decides *what* runs; the core (`ragraph.core`) owns the state and records every
decision. Each method receives a read-only `SchedulerView` and acts only through its
action methods. A policy is built from a validated options model (`ragraph.policies.spec`).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import TYPE_CHECKING, ClassVar

from ragraph.work import CacheLoad, Lane, SearchBatch

if TYPE_CHECKING:
    from ragraph.graph import Request
    from ragraph.runtime import NodeRun, RequestRun
    from ragraph.synthesis import SynthesisConfig
    from ragraph.techniques.heat import HeatTableFactory
    from ragraph.view import SchedulerView


class PolicyError(ValueError):
    """Unknown policy, unknown technique or a bad option value."""


class Policy(ABC):
    """Base class: continuous admission of generations, no speculation, no cache."""

    name: ClassVar[str]
    lanes: tuple[Lane, ...] = (Lane.GPU_GEN, Lane.CPU_RETRIEVAL)  # lanes this policy gives work to

    def accepts(self, requests: Sequence[Request]) -> str:
        """Called at the edge, before a run, by whoever assembles it: why this policy cannot run
        `requests` ("" if it can; e.g. a fixed configuration a request's quality table lacks)."""
        return ""

    # --- planning (called from Scheduler.next_work) -------------------------------------------

    def admit_generations(self, s: SchedulerView, now: float) -> list[NodeRun]:
        """Called when `gpu_gen` is idle: the READY Generate nodes to hand to the engine
        before its next step (default: all of them, oldest first, as vLLM's continuous
        batching would take them). Returning [] with the engine empty idles the lane."""
        return list(s.gen_ready.values())

    def holds_generations(self, s: SchedulerView) -> bool:
        """Called by the core when deciding whether engine steps may be advanced together: True if
        `admit_generations` would return [] now and after any engine step that finishes and
        refuses nothing, at any later time, with no side effect (default False: it admits)."""
        return False

    @abstractmethod
    def plan_search(self, s: SchedulerView, lane: Lane, now: float) -> SearchBatch | None:
        """Called when a retrieval lane is idle: the next search call, built with
        `s.take_clusters`, or None to leave the lane idle."""

    def plan_pcie(self, s: SchedulerView, now: float) -> CacheLoad | None:
        """Called when `pcie` is idle: a cache refresh, or None (default: no GPU cache)."""
        return None

    # --- notifications (called from submit/complete) ---------------------------------------------

    def on_submit(self, s: SchedulerView, run: RequestRun, now: float) -> None:
        """A request arrived (before its first nodes become READY)."""

    def on_retrieve_ready(self, s: SchedulerView, node: NodeRun, now: float) -> None:
        """A Retrieve node became READY (a place to reorder its clusters)."""

    def on_search_progress(self, s: SchedulerView, node: NodeRun, now: float) -> None:
        """A sub-stage of `node` finished and the node still has clusters (a place to
        speculate on the partial top-k)."""

    def on_generation_progress(self, s: SchedulerView, node: NodeRun, fraction: float, now: float) -> None:
        """Generate `node`, watched with `s.watch_generation`, has decoded about `fraction` of
        its output (a place to start the next retrieval on a prefix of it)."""

    def on_node_done(self, s: SchedulerView, node: NodeRun, now: float) -> None:
        """`node` finished for good (DONE)."""

    def keep_speculation(self, s: SchedulerView, node: NodeRun, now: float) -> bool:
        """The inputs of speculatively started `node` are now final: keep its work (True)
        or abort and redo it (False). Default: redo."""
        return False

    def configure(self, s: SchedulerView, run: RequestRun, now: float) -> SynthesisConfig:
        """Called once per request whose synthesis is chosen at run time (`run.request.synthesis`),
        when all its fixed nodes are done: the configuration to run; the core then builds and
        queues its nodes. It must lie in METIS's ranges (else SchedulerError). Default: the
        request's own default configuration."""
        assert run.request.synthesis is not None
        return run.request.synthesis.default

    def on_request_end(self, s: SchedulerView, run: RequestRun, now: float) -> None:
        """A request completed or failed."""

    def use_heat_table(self, make: HeatTableFactory) -> None:
        """Called by a body before a run: keep the GPU index cache's heat in tables `make` builds
        (`ragraph.techniques.heat`: the same results, e.g. numpy's; default: no cache, nothing)."""

    # --- results ----------------------------------------------------------------------------------

    def report(self, s: SchedulerView) -> dict[str, object]:
        """What the policy's techniques did over the run (e.g. `speculation`), for summary.json."""
        return {}
