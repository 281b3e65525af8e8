"""A run's summary (summary.json): what ran, counts, latency percentiles, lane utilisation.

The same keys for both bodies: `meta` (body, policy, profile or backend, trace...) first,
then what the records and the executor's `RunResult` say.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ragraph.records import RunResult


def latency_stats(latencies: Sequence[float]) -> dict[str, float | None]:
    """mean / p50 / p95 / p99 of a latency sample (None where it is empty)."""
    if not len(latencies):
        return {"mean": None, "p50": None, "p95": None, "p99": None}
    a = np.asarray(latencies, dtype=float)
    p50, p95, p99 = np.percentile(a, [50, 95, 99])
    return {"mean": float(a.mean()), "p50": float(p50), "p95": float(p95), "p99": float(p99)}


def summarize(result: RunResult, meta: dict[str, object]) -> dict[str, object]:
    """The summary.json content of one run, simulated or real: `meta` (what ran: body, policy,
    profile or backend, trace...) first, then the counts, latencies and utilisation."""
    records, sim_s = result.records, result.sim_s
    done = [r for r in records if r.status == "completed"]
    failed = [r for r in records if r.status != "completed"]
    reasons: dict[str, int] = {}
    for r in failed:
        reasons[r.reason] = reasons.get(r.reason, 0) + 1
    per_workflow = {}
    for wf in sorted({r.workflow for r in records}):
        lat = [r.latency_s for r in done if r.workflow == wf]
        per_workflow[wf] = {"requests": sum(r.workflow == wf for r in records), "completed": len(lat),
                            "latency_s": latency_stats(lat)}
    return {
        **meta,
        "stopped": result.stopped,
        "kv_peak_blocks": result.kv_peak_blocks,
        "kv_total_blocks": result.kv_total_blocks,
        "requests": len(records),
        "completed": len(done),
        "failed": len(failed),
        "failure_reasons": reasons,
        "latency_s": latency_stats([r.latency_s for r in done]),
        "throughput_rps": len(done) / sim_s if sim_s > 0 else 0.0,
        "sim_s": sim_s,
        "wall_s": result.wall_s,
        "lane_utilization": {lane: (busy / sim_s if sim_s > 0 else 0.0) for lane, busy in result.lane_busy_s.items()},
        "per_workflow": per_workflow,
        **result.techniques,  # e.g. speculation, reorder: what the policy's techniques did
        **({"kv_cache": result.kv_cache} if result.kv_cache else {}),  # what the KV cache did
    }
