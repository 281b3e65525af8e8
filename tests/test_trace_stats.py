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
