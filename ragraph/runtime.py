"""Mutable run state of requests and nodes, owned by the scheduler core.

Policies read these objects (through `SchedulerView`) but change them only through the
scheduler's methods, so every state change goes through `ragraph.state`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ragraph.graph import Generate, NodeKey, NodeSpec, Request, Retrieve
from ragraph.state import NodeEvent, NodeState, RequestState, advance
from ragraph.synthesis import SynthesisConfig


@dataclass(slots=True, eq=False)  # identity equality: usable as a dict key
class NodeRun:
    """One node of one active request."""

    key: NodeKey
    spec: NodeSpec
    deps_left: int  # dependencies not yet DONE
    children: list[int] = field(default_factory=list)  # indices of nodes that depend on this one
    state: NodeState = NodeState.BLOCKED
    ready_s: float | None = None  # when it became READY (or started speculatively)
    start_s: float | None = None  # first dispatch to a lane
    end_s: float | None = None  # when it finished
    # retrieval progress (Retrieve nodes only)
    order: tuple[int, ...] = ()  # clusters in the order they will be scanned (replaced on reorder)
    next_pos: int = 0  # clusters order[:next_pos] are scanned or in flight
    in_flight: int = 0  # sub-stages dispatched and not yet complete
    substages: int = 0  # sub-stages dispatched so far
    seed: tuple[int, ...] = ()  # candidate ids merged into its heap before the first scan (local cache)
    topk: tuple[int, ...] = ()  # running top-k ids, as last reported by a lane
    gpu_clusters: int = 0  # clusters of this query scanned on the GPU cache
    # speculation
    speculated: bool = False  # a speculative run was started at least once
    aborted: int = 0  # speculative runs thrown away
    spec_prefix: float = 0.0  # Retrieve: share of the query its speculative search embeds (0: none)
    spec_topk: tuple[int, ...] | None = None  # Retrieve: what its speculative search found
    redo_when_landed: bool = False  # Retrieve: its inputs became final while its speculative search ran

    def fire(self, event: NodeEvent) -> None:
        self.state = advance(self.state, event)

    @property
    def is_retrieve(self) -> bool:
        return isinstance(self.spec, Retrieve)

    @property
    def remaining(self) -> int:
        """Clusters not yet dispatched (Retrieve nodes)."""
        return len(self.order) - self.next_pos


@dataclass(slots=True, eq=False)
class RequestRun:
    """One submitted request and its nodes."""

    request: Request
    nodes: list[NodeRun]
    state: RequestState = RequestState.ACTIVE
    done: int = 0  # nodes DONE
    finish_s: float | None = None
    reason: str = ""  # why it failed ("" when it completed)
    config: SynthesisConfig | None = None  # its synthesis, once the policy chose it (Request.synthesis)
    # deps[i]: the nodes node i waits for; `request.deps`, plus the nodes a run-time synthesis
    # appended (so it covers every node of `nodes`: read this, not `request.deps`, in the core)
    deps: list[tuple[int, ...]] = field(default_factory=list)

    @classmethod
    def start(cls, request: Request) -> RequestRun:
        nodes = [
            NodeRun(
                key=(request.id, i),
                spec=spec,
                deps_left=len(request.deps[i]),
                order=spec.clusters if isinstance(spec, Retrieve) else (),
            )
            for i, spec in enumerate(request.nodes)
        ]
        for i, deps in enumerate(request.deps):
            for d in deps:
                nodes[d].children.append(i)
        return cls(request, nodes, deps=list(request.deps))


class SchedulerError(ValueError):
    """A call that contradicts the core's state (unknown item, duplicate request id, an action
    on a node in the wrong state...)."""


class NotThatNode(SchedulerError):
    """A Generate-only operation on a Retrieve node, or the reverse."""


def generate_spec(node: NodeRun) -> Generate:
    if not isinstance(node.spec, Generate):
        raise NotThatNode(f"{node.key} is not a Generate node")
    return node.spec


def retrieve_spec(node: NodeRun) -> Retrieve:
    if not isinstance(node.spec, Retrieve):
        raise NotThatNode(f"{node.key} is not a Retrieve node")
    return node.spec
