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

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from ragraph.graph import Retrieve, SearchTruth

if TYPE_CHECKING:
    from ragraph.runtime import NodeRun
    from ragraph.view import SchedulerView


def reordered(order: Sequence[int], previous: Retrieve) -> list[int]:
    """`order` (the new probe list, coarse order) regrouped around the previous retrieval."""
    return sorted(order, key=group_of(order, previous))


def group_of(order: Sequence[int], previous: Retrieve) -> Callable[[int], int]:
    """The group of each list of `order` around the previous retrieval: 0 for H_v, 1 for the
    previous probe list's other lists, 2 for the rest (a stable sort by it is the reorder)."""
    assert previous.truth is not None
    group = dict.fromkeys(order, 2)
    group.update(dict.fromkeys(previous.clusters, 1))
    group.update(dict.fromkeys(previous.truth.hit_clusters, 0))
    return group.__getitem__


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
        hits = previous.truth.hit_clusters  # (`reordered`, in place: H_v, then C - H_v, then the rest)
        near = hits.union(previous.clusters)
        s.partition_remaining(node, (hits, near) if hits else (near,), seed=seed)
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
