"""Every state transition of nodes and requests, as tables.

Theory of operation
-------------------
A node starts BLOCKED until all the nodes it depends on are DONE; then it is READY.
The scheduler DISPATCHes a READY node to a lane (RUNNING); a Retrieve node stays
RUNNING across all its sub-stages and FINISHes after its last one. A Generate node may
be started early on partial inputs (SPECULATE: BLOCKED -> SPECULATIVE). When its inputs
become final the policy either CONFIRMs it (the speculative node takes the real node's
place: RUNNING, or DONE if it already finished as SPEC_DONE) or ABORTs it (its work is
thrown away and it is READY again). A speculation may also RESTART on newer partial inputs
(its work is thrown away and it starts again, still SPECULATIVE). Any non-terminal node may FAIL.

A request is ACTIVE from submission until every node is DONE (COMPLETED) or one node
FAILs (FAILED: its remaining nodes are cancelled). No other transition is legal;
`advance` raises `IllegalTransition` on anything not in the table.
"""

from __future__ import annotations

from enum import Enum


class _FastEnum(Enum):
    """An Enum hashed by identity (its members are singletons compared by identity): Enum's own
    __hash__ is a Python call, paid on every lookup in the transition tables."""

    __hash__ = object.__hash__


class NodeState(_FastEnum):
    BLOCKED = "blocked"
    READY = "ready"
    RUNNING = "running"
    SPECULATIVE = "speculative"
    SPEC_DONE = "spec_done"
    DONE = "done"
    FAILED = "failed"


class NodeEvent(_FastEnum):
    DEPS_DONE = "deps_done"
    DISPATCH = "dispatch"
    FINISH = "finish"
    SPECULATE = "speculate"
    CONFIRM = "confirm"
    ABORT = "abort"
    RESTART = "restart"
    FAIL = "fail"


class RequestState(_FastEnum):
    ACTIVE = "active"
    COMPLETED = "completed"
    FAILED = "failed"


class RequestEvent(_FastEnum):
    ALL_DONE = "all_done"
    FAIL = "fail"


class IllegalTransition(RuntimeError):
    """A state machine was asked for a transition its table does not have."""


_S, _E = NodeState, NodeEvent
NODE_TRANSITIONS: dict[tuple[NodeState, NodeEvent], NodeState] = {
    (_S.BLOCKED, _E.DEPS_DONE): _S.READY,
    (_S.READY, _E.DISPATCH): _S.RUNNING,
    (_S.RUNNING, _E.FINISH): _S.DONE,
    (_S.BLOCKED, _E.SPECULATE): _S.SPECULATIVE,
    (_S.SPECULATIVE, _E.FINISH): _S.SPEC_DONE,
    (_S.SPECULATIVE, _E.CONFIRM): _S.RUNNING,
    (_S.SPEC_DONE, _E.CONFIRM): _S.DONE,
    (_S.SPECULATIVE, _E.ABORT): _S.READY,
    (_S.SPEC_DONE, _E.ABORT): _S.READY,
    (_S.SPECULATIVE, _E.RESTART): _S.SPECULATIVE,
    (_S.SPEC_DONE, _E.RESTART): _S.SPECULATIVE,
    **{(s, _E.FAIL): _S.FAILED for s in NodeState if s not in (_S.DONE, _S.FAILED)},
}

REQUEST_TRANSITIONS: dict[tuple[RequestState, RequestEvent], RequestState] = {
    (RequestState.ACTIVE, RequestEvent.ALL_DONE): RequestState.COMPLETED,
    (RequestState.ACTIVE, RequestEvent.FAIL): RequestState.FAILED,
}


def advance(state: NodeState, event: NodeEvent) -> NodeState:
    """The node state after `event`; raises IllegalTransition if the table has none."""
    try:
        return NODE_TRANSITIONS[(state, event)]
    except KeyError:
        raise IllegalTransition(f"node: {event.value} is not allowed in state {state.value}") from None


def advance_request(state: RequestState, event: RequestEvent) -> RequestState:
    """The request state after `event`; raises IllegalTransition if the table has none."""
    try:
        return REQUEST_TRANSITIONS[(state, event)]
    except KeyError:
        raise IllegalTransition(f"request: {event.value} is not allowed in state {state.value}") from None
