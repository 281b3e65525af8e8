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
synthetic ones (traces.truth_model), so the two can be set side by side. `by_follow_up` gives
the same shares per position (a request's 1st follow-up, 2nd, ...): with FanOutQA's
sub-questions as follow-ups the first sub-question often restates part of the question, the
later ones move to other pages.
"""

from __future__ import annotations

from itertools import pairwise

from ragraph.graph import Request, Retrieve

PAPER_FIG9A = {"topk_in_previous_top20": 0.33, "hits_in_previous_hits": 0.52, "hits_in_previous_probe": 0.77}


def locality(requests: list[Request]) -> dict[str, object] | None:
    """The three observations over all follow-up retrievals with truth (None: no follow-up), overall
    and per follow-up position (`by_follow_up[0]`: every request's first follow-up)."""
    counts: list[list[int]] = []  # per position: follow-ups, cache, hit, probe
    for r in requests:
        chain = [node for node in r.nodes if isinstance(node, Retrieve) and node.truth is not None]
        for pos, (a, b) in enumerate(pairwise(chain)):
            assert a.truth is not None and b.truth is not None
            if pos == len(counts):
                counts.append([0, 0, 0, 0])
            c = counts[pos]
            c[0] += 1
            c[1] += set(b.truth.topk) <= set(a.truth.top20)
            c[2] += b.truth.hit_clusters <= a.truth.hit_clusters
            c[3] += b.truth.hit_clusters <= set(a.clusters)
    if not counts:
        return None
    total = [sum(col) for col in zip(*counts, strict=True)]
    return {**_shares(total), "by_follow_up": [_shares(c) for c in counts]}


def _shares(c: list[int]) -> dict[str, float | int]:
    n = c[0]
    return {"follow_ups": n, "topk_in_previous_top20": c[1] / n, "hits_in_previous_hits": c[2] / n,
            "hits_in_previous_probe": c[3] / n}
