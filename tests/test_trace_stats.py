"""`hedra trace stats` reports what the generator was asked for."""

from __future__ import annotations

import pytest

from ragraph.workflows import WorkflowRegistry
from traces.generate import TraceConfig, generate_trace
from traces.schema import TraceRequest, to_request
from traces.stats import trace_stats


def requests(**kw):
    reg = WorkflowRegistry()
    cfg = TraceConfig(**{"workflows": ("irg",), "rate": 20.0, "duration_s": 60.0, "seed": 4, "nprobe": 64, **kw})
    return [to_request(TraceRequest.model_validate(r), reg) for r in generate_trace(cfg, reg)]


def test_stats_recover_rate_burstiness_overlap_and_skew():
    poisson = trace_stats(requests())
    assert poisson["rate_rps"] == pytest.approx(20.0, rel=0.1)
    assert poisson["gap_cv"] == pytest.approx(1.0, abs=0.15)
    assert poisson["successive_overlap_mean"] == pytest.approx(0.5, abs=0.01)
    assert poisson["retrieve_nodes"] == 3 * poisson["requests"]
    bursty = trace_stats(requests(arrival="gamma", cv=3.0))
    assert bursty["gap_cv"] > 2.0
    flat = trace_stats(requests(zipf=0.0))
    assert poisson["top10pct_lists_share"] > flat["top10pct_lists_share"] + 0.05


def test_stats_count_out_of_order_arrivals():
    reqs = requests(duration_s=5.0)
    assert trace_stats(reqs)["out_of_order_arrivals"] == 0
    swapped = [reqs[1], reqs[0], *reqs[2:]]  # the first line arrives after the second
    assert trace_stats(swapped)["out_of_order_arrivals"] == 1
    assert trace_stats([*reqs[1:], reqs[0]])["out_of_order_arrivals"] == 1  # the first request, moved last


def test_locality_per_follow_up_position():
    """`by_follow_up[p]` holds the p-th follow-ups of all requests; the overall shares are their pooled shares."""
    reg = WorkflowRegistry()
    rows = generate_trace(TraceConfig(("irg",), 10.0, 30.0, seed=2, nprobe=32, nlist=256), reg)
    loc = trace_stats([to_request(TraceRequest.model_validate(r), reg) for r in rows])["locality"]
    by = loc["by_follow_up"]
    assert [p["follow_ups"] for p in by] == [len(rows), len(rows)]  # irg: 3 retrievals, 2 follow-ups each
    for p, part in enumerate(by):
        pairs = [([s for s in r["stages"] if s["op"] == "retrieve"][p:p + 2]) for r in rows]
        cached = sum(set(b["truth"]["topk"]) <= set(a["truth"]["top20"]) for a, b in pairs)
        in_probe = sum(set(b["truth"]["hits"]) <= set(a["clusters"]) for a, b in pairs)
        assert part["topk_in_previous_top20"] == cached / len(rows)
        assert part["hits_in_previous_probe"] == in_probe / len(rows)
    for key in ("topk_in_previous_top20", "hits_in_previous_hits", "hits_in_previous_probe"):
        assert loc[key] == pytest.approx(sum(p[key] for p in by) / 2)
    assert loc["paper_fig9a"]["topk_in_previous_top20"] == 0.33
