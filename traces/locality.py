"""Cross-retrieval locality of a request's successive queries (HedraRAG §4.3, Fig. 9a).

For each follow-up retrieval v' of a request (a Retrieve node with truth whose request has an
earlier Retrieve with truth, v), the paper's three observations, as the share of follow-ups
for which they hold:

1. `topk_in_previous_top20`: every id of v''s top-k is in v's top-20 (the local cache);
2. `hits_in_previous_hits`: every hit list of v' is a hit list of v (H_v);
3. `hits_in_previous_probe`: every hit list of v' is in v's probe list (C; they are in C' by
   definition, so this is C ∩ C').

The paper reports "up to" 33%, 52% and 77% (top-1 retrieval). A follow-up is compared with
the request's immediately preceding retrieval. The same function measures corpus traces and
synthetic ones (traces.truth_model), so the two can be set side by side.
"""

from __future__ import annotations

from itertools import pairwise

from ragraph.graph import Request, Retrieve

PAPER_FIG9A = {"topk_in_previous_top20": 0.33, "hits_in_previous_hits": 0.52, "hits_in_previous_probe": 0.77}


def locality(requests: list[Request]) -> dict[str, float | int] | None:
    """The three observations over all follow-up retrievals with truth (None: no follow-up)."""
    n = cache = hit = probe = 0
    for r in requests:
        chain = [node for node in r.nodes if isinstance(node, Retrieve) and node.truth is not None]
        for a, b in pairwise(chain):
            assert a.truth is not None and b.truth is not None
            n += 1
            cache += set(b.truth.topk) <= set(a.truth.top20)
            hit += b.truth.hit_clusters <= a.truth.hit_clusters
            probe += b.truth.hit_clusters <= set(a.clusters)
    if not n:
        return None
    return {"follow_ups": n, "topk_in_previous_top20": cache / n, "hits_in_previous_hits": hit / n,
            "hits_in_previous_probe": probe / n}
