"""Similarity-aware reordering (HedraRAG §4.3): search a follow-up query near its last result.

Successive queries of one request are semantically close, so their neighbours tend to lie
where the previous query's did. When a Retrieve node becomes ready and an earlier retrieval
of its request has finished, this technique

1. seeds the new search with the earlier retrieval's top-20 (the request's local cache):
   the body merges those candidates into the query's heap before the first scan, keeping
   only those whose IVF list is in the new probe list, so the final top-k is exactly a full
   search's (`ragraph.work.ScanTask.seed`);
2. scans the new probe list C' in the order H_v ∩ C' (lists that held the previous top-k),
   (C − H_v) ∩ C' (the previous probe list's other lists), then the rest, each group in
   coarse-quantizer order.

The earlier retrieval's outcome (its top-20 and hit lists) is read from its recorded search
truth (`Retrieve.truth`) once it is DONE: a fact the system holds after that search, the
same ids both bodies' searches returned. The released artifact computes this reorder and
never applies it; Hedra applies it.

`completion_point` measures the effect: how far into its scan a query's final top-k is
complete (the paper's Fig. 9b: up to 28% earlier with reordering).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from ragraph.graph import Retrieve, SearchTruth

if TYPE_CHECKING:
    from ragraph.runtime import NodeRun
    from ragraph.view import SchedulerView


def reordered(order: Sequence[int], previous: Retrieve) -> list[int]:
    """`order` (the new probe list, coarse order) regrouped around the previous retrieval: a
    stable sort by the index of the first of `groups_around(previous)` holding each list (what
    `Scheduler.partition_remaining` does in place)."""
    groups = groups_around(previous)
    return sorted(order, key=lambda c: next((i for i, g in enumerate(groups) if c in g), len(groups)))


def groups_around(previous: Retrieve) -> tuple[frozenset[int], ...]:
    """The groups a follow-up's lists are scanned in, around the previous retrieval: H_v (the
    lists that held its top-k), then the rest of its probe list C; lists in neither come last."""
    assert previous.truth is not None
    hits = previous.truth.hit_clusters
    near = hits.union(previous.clusters)
    return (hits, near) if hits else (near,)


def completion_point(order: Sequence[int], truth: SearchTruth, seed: Sequence[int] = ()) -> int:
    """Lists of `order` a search must scan before its top-k is final: the position just past
    the last list holding a final id that the seed does not already hold (0: the seed alone
    holds the whole top-k)."""
    seeded = set(seed)
    need = {h for i, h in zip(truth.topk, truth.hits, strict=True) if i not in seeded}
    end = 0
    for cluster in need:  # (the first position holding each: a scan of `order` per hit list, in C)
        if cluster not in order:
            return len(order)
        end = max(end, order.index(cluster) + 1)
    return end


class SimilarityReorder:
    """Reorders and seeds each follow-up retrieval of a request from its previous one."""

    def __init__(self) -> None:
        self.applied = 0  # retrievals reordered
        self.scanned_to_complete = 0  # lists scanned until complete, summed over them (reordered + seeded)
        self.baseline_to_complete = 0  # the same in coarse order without the cache

    def on_ready(self, s: SchedulerView, node: NodeRun) -> None:
        previous = _previous_retrieval(s, node)
        if previous is None or node.next_pos:
            return
        spec = node.spec
        assert isinstance(spec, Retrieve)
        assert previous.truth is not None
        seed = tuple(dict.fromkeys((*node.seed, *previous.truth.top20)))  # after a speculation's own guess
        s.partition_remaining(node, groups_around(previous), seed=seed)  # (`reordered`, in place)
        order = node.order
        if spec.truth is not None:
            self.applied += 1
            self.scanned_to_complete += completion_point(order, spec.truth, seed)
            self.baseline_to_complete += completion_point(spec.clusters, spec.truth)

    def report(self) -> dict[str, float]:
        base = self.baseline_to_complete
        return {"reordered": self.applied, "lists_to_complete": self.scanned_to_complete,
                "lists_to_complete_coarse": base,
                "earlier": 1 - self.scanned_to_complete / base if base else 0.0}


def _previous_retrieval(s: SchedulerView, node: NodeRun) -> Retrieve | None:
    """The request's latest finished retrieval before `node` that carries its outcome."""
    nodes = s.requests[node.key[0]].nodes
    for earlier in reversed(nodes[: node.key[1]]):
        spec = earlier.spec
        if isinstance(spec, Retrieve) and earlier.end_s is not None:
            return spec if spec.truth is not None else None
    return None
