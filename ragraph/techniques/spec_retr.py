"""Speculative retrieval (HedraRAG §4.3, "edge addition"): search on a partial generation.

When a retrieval's query is the text of the generation before it (IRG, multistep), the
retrieval may start once that generation has decoded a share `fraction` of its output: the
body embeds the same share of the eventual query's words (`ragraph.graph.query_prefix`; the
tiny model's tokens are not text, so on the real body the prefix is that of the query text
the trace records) and searches the prefix's own probe list, as one search call. The
generation that waits on the retrieval may then start speculatively on that result
(`ragraph.techniques.spec_gen`). Like speculative generation, it is issued only while the
engine's decode throughput is below `threshold` x its peak: a speculative search doubles the
retrieval work of its stage (the real query is searched anyway), which costs latency once
retrieval queues (measured: docs/techniques.md).

When the generation ends, the real query is searched (its heap seeded with the speculative
result, so a right guess is complete at once) and the speculation is kept iff that search
finds the same top-k: then the generation started on it is confirmed (the speculative
generation's own rule), else both are redone. Speculative searches run only when no regular
retrieval waits (the CPU lane's headroom), at most `max_per_call` in one call.

Counters: `issued`, `confirmed` and `aborted` (decided when the real search ended),
`cancelled` (the generation ended before the CPU lane had room for the speculative search:
nothing was searched) and the lists the aborted ones scanned in vain (`wasted_scans`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ragraph.graph import Generate, Retrieve
from ragraph.state import NodeState
from ragraph.techniques.spec_gen import has_headroom
from ragraph.work import ScanTask

if TYPE_CHECKING:
    from ragraph.runtime import NodeRun, RequestRun
    from ragraph.view import SchedulerView


class SpeculativeRetrieval:
    def __init__(self, peak_tokens_s: float, fraction: float = 0.5, threshold: float = 0.1,
                 max_per_call: int = 4) -> None:
        self.peak_tokens_s = peak_tokens_s  # the engine's peak decode throughput (T_max)
        self.fraction = fraction
        self.threshold = threshold
        self.max_per_call = max_per_call
        self.issued = self.confirmed = self.aborted = self.wasted_scans = 0

    def on_submit(self, s: SchedulerView, run: RequestRun) -> None:
        """Watch each generation whose output a retrieval searches next."""
        for node in run.nodes:
            if isinstance(node.spec, Generate) and _next_retrieval(run, node) is not None:
                s.watch_generation(node, self.fraction)

    def on_generation_progress(self, s: SchedulerView, node: NodeRun, fraction: float, now: float) -> None:
        if not has_headroom(s, self.peak_tokens_s, self.threshold):
            return
        child = _next_retrieval(s.requests[node.key[0]], node)
        if child is not None and child.state is NodeState.BLOCKED:
            s.speculate_retrieval(child, fraction, now)
            self.issued += 1

    def plan(self, s: SchedulerView) -> list[ScanTask]:
        """Speculative searches for an idle CPU lane (none while regular retrievals wait)."""
        if s.retr_waiting or not s.retr_speculative:
            return []
        return [s.take_speculative(n) for n in list(s.retr_speculative.values())[: self.max_per_call]]

    def on_node_done(self, node: NodeRun) -> None:
        """A retrieval ended: judge its speculation, if it had one."""
        if not node.spec_topk:  # never speculated, or its search found no ids (a trace without truth)
            return
        if node.topk == node.spec_topk:
            self.confirmed += 1
        else:
            self.aborted += 1
            assert isinstance(node.spec, Retrieve)
            self.wasted_scans += node.spec.nprobe

    def report(self) -> dict[str, float]:
        decided = self.confirmed + self.aborted
        return {"issued": self.issued, "confirmed": self.confirmed, "aborted": self.aborted,
                "cancelled": self.issued - decided,
                "accuracy": self.confirmed / decided if decided else 0.0, "wasted_scans": self.wasted_scans}


def _next_retrieval(run: RequestRun, node: NodeRun) -> NodeRun | None:
    """The Retrieve node that waits on Generate `node` alone and searches its text."""
    for i in node.children:
        child = run.nodes[i]
        if isinstance(child.spec, Retrieve) and len(run.deps[i]) == 1:
            return child
    return None
