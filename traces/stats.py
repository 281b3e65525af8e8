"""Summary statistics of a trace: what `hedra trace stats` prints."""

from __future__ import annotations

from collections import Counter
from itertools import pairwise

import numpy as np

from ragraph.graph import Generate, Request, Retrieve
from traces.locality import PAPER_FIG9A, locality


def out_of_order(requests: list[Request]) -> int:
    """Requests (in file order) that arrive before some request above them; both bodies run a
    trace in arrival order (ties in file order), so these run earlier than their line says."""
    latest, late = -np.inf, 0
    for r in requests:
        if r.arrival_s < latest:
            late += 1
        else:
            latest = r.arrival_s
    return late


def trace_stats(requests: list[Request]) -> dict[str, object]:
    """Counts, arrival rate, token and probe-list statistics of loaded requests (in file order); with truth,
    the locality of follow-up retrievals (traces.locality) beside the paper's Fig. 9a."""
    arrivals = np.array(sorted(r.arrival_s for r in requests))
    gaps = np.diff(arrivals)
    gens = [n for r in requests for n in r.nodes if isinstance(n, Generate)]
    rets = [n for r in requests for n in r.nodes if isinstance(n, Retrieve)]
    hits = Counter(c for n in rets for c in n.clusters)
    counts = np.array(sorted(hits.values(), reverse=True))
    top = max(1, len(counts) // 10)
    overlaps = []  # share of a retrieval's lists that the same request's previous one probed
    for r in requests:
        chain = [n for n in r.nodes if isinstance(n, Retrieve)]
        overlaps += [len(set(a.clusters) & set(b.clusters)) / len(b.clusters) for a, b in pairwise(chain)]
    loc = locality(requests)
    out: dict[str, object] = {
        "requests": len(requests),
        "workflows": dict(Counter(r.workflow for r in requests)),
        "out_of_order_arrivals": out_of_order(requests),
        "span_s": float(arrivals[-1] - arrivals[0]) if len(arrivals) > 1 else 0.0,
        "rate_rps": float(len(gaps) / gaps.sum()) if len(gaps) and gaps.sum() > 0 else None,
        "gap_cv": float(gaps.std() / gaps.mean()) if len(gaps) > 1 and gaps.mean() > 0 else None,
        "generate_nodes": len(gens),
        "prompt_tokens_mean": float(np.mean([g.prompt_tokens for g in gens])) if gens else None,
        "output_tokens_mean": float(np.mean([g.output_tokens for g in gens])) if gens else None,
        "retrieve_nodes": len(rets),
        "nprobe_mean": float(np.mean([r.nprobe for r in rets])) if rets else None,
        "lists_probed": len(counts),
        "top10pct_lists_share": float(counts[:top].sum() / counts.sum()) if len(counts) else None,
        "successive_overlap_mean": float(np.mean(overlaps)) if overlaps else None,
    }
    if loc is not None:
        out["locality"] = {**loc, "paper_fig9a": PAPER_FIG9A}
    return out
