"""Speculative generation (HedraRAG §4.3, "edge addition"): start a generation on a partial top-k.

After a sub-stage of a retrieval, the Generate node that waits only on it may start on the
retrieval's running top-k instead of waiting for the last sub-stage. When the search ends,
the speculation is kept iff the final top-k equals the partial one it started on (the same
ids in the same order), else its work is aborted (a real abort on the engine) and the
generation is redone on the final result.

When to speculate:
- `after=None` (HedraRAG): after any sub-stage, while the engine has headroom: current
  decode throughput below `threshold` x the profile's peak (the paper's T_cur/T_max < τ; τ is
  unpublished, Hedra's default is chosen by measurement, see docs/techniques.md). A
  speculation whose partial top-k has since changed is restarted on the new one.
- `after=N` (the RaLMSpec / RAGCache-style baseline of the paper's Fig. 17): once, after the
  retrieval's N-th sub-stage, regardless of load, never restarted.

Counters: `issued` (speculative starts, restarts included), `confirmed` and `aborted`
(decided when the search ended), `restarted` (thrown away early because the partial top-k
moved), and accuracy over the speculations that reached a decision only (the artifact
counted requests that never speculated as right).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ragraph.graph import Generate, NodeKey
from ragraph.state import NodeState

if TYPE_CHECKING:
    from ragraph.runtime import NodeRun
    from ragraph.view import SchedulerView


class SpeculativeGeneration:
    def __init__(self, peak_tokens_s: float, threshold: float = 0.1, after: int | None = None) -> None:
        self.peak_tokens_s = peak_tokens_s  # the engine's peak decode throughput (T_max)
        self.threshold = threshold
        self.after = after
        # speculative node -> (the Retrieve node it waits on, the partial top-k it runs on)
        self._started_on: dict[NodeKey, tuple[NodeKey, tuple[int, ...]]] = {}
        self.issued = self.confirmed = self.aborted = self.restarted = 0

    def on_progress(self, s: SchedulerView, node: NodeRun, now: float) -> None:
        """A sub-stage of Retrieve `node` finished and it has more to scan."""
        topk = node.topk
        if not topk:
            return
        child = _waiting_generation(s, node)
        if child is None:
            return
        if child.state is NodeState.BLOCKED:
            if self.after is not None:
                if node.substages - node.in_flight != self.after:
                    return
            elif not has_headroom(s, self.peak_tokens_s, self.threshold):
                return
            s.speculate(child, now)
        elif self.after is None and child.key in self._started_on and self._started_on[child.key][1] != topk:
            if not has_headroom(s, self.peak_tokens_s, self.threshold):
                return
            s.restart_speculation(child, now)
            self.restarted += 1
        else:
            return
        self._started_on[child.key] = (node.key, topk)
        self.issued += 1

    def keep(self, s: SchedulerView, node: NodeRun) -> bool:
        """The retrieval `node` waited on is final: keep the speculation iff it ran on that result."""
        started = self._started_on.pop(node.key, None)
        keep = started is not None and s.requests[node.key[0]].nodes[started[0][1]].topk == started[1]
        if keep:
            self.confirmed += 1
        else:
            self.aborted += 1
        return keep

    def forget(self, key: NodeKey) -> None:
        self._started_on.pop(key, None)

    def report(self) -> dict[str, float]:
        decided = self.confirmed + self.aborted
        return {"issued": self.issued, "confirmed": self.confirmed, "aborted": self.aborted,
                "restarted": self.restarted, "accuracy": self.confirmed / decided if decided else 0.0}


def has_headroom(s: SchedulerView, peak_tokens_s: float, threshold: float) -> bool:
    """Whether speculation may be issued: T_cur / T_max < τ, the engine's recent decode
    throughput over its peak below `threshold` (an idle engine always has room). Speculative
    generation and retrieval share this gate."""
    return not s.gen_in_engine or s.decode_tokens_s / peak_tokens_s < threshold


def _waiting_generation(s: SchedulerView, node: NodeRun) -> NodeRun | None:
    """The Generate node that depends on Retrieve `node` alone, not yet started normally."""
    run = s.requests[node.key[0]]
    for i in node.children:
        child = run.nodes[i]
        if isinstance(child.spec, Generate) and child.deps_left == 1 and \
                child.state in (NodeState.BLOCKED, NodeState.SPECULATIVE, NodeState.SPEC_DONE):
            return child
    return None
