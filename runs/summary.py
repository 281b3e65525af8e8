"""A run's summary (summary.json): what ran, counts, latency percentiles, lane utilisation.

The same keys for both bodies: `meta` (body, policy, profile or backend, trace...) first,
then what the records and the executor's `RunResult` say. `table_columns` is what a table row
of a run (a sweep's cell, a row of `hedra compare`) takes from its summary beyond latency:
quality and the KV cache, one definition for both tables.
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


QUALITY_COLUMNS = ("f1_mean", "em_mean", "quality_source")
KV_COLUMNS = ("kv_policy", "kv_peak_blocks", "kv_total_blocks", "kv_hit_rate", "kv_prompt_tokens_cached",
              "kv_evicted_blocks", "kv_preemptions")


def table_columns(summary: dict) -> dict[str, object]:
    """A run's quality and KV-cache columns, from its summary (None where it has none, never 0).

    `f1_mean`: a real run's answers' F1 against gold answers (`quality_source` "answers", with
    `em_mean`), or a simulated run's mean F1 of the configurations its policy chose, from the
    trace's quality table (`quality_source` names the table: a model or a measurement; no EM).
    `kv_*`: the engine's peak and total blocks and `summary.json` `kv_cache`."""
    q = summary.get("quality") or {}
    kv = summary.get("kv_cache") or {}
    source = q.get("source", "answers") if q.get("f1_mean") is not None else None
    return {"f1_mean": q.get("f1_mean"), "em_mean": q.get("em_mean"), "quality_source": source,
            "kv_policy": kv.get("kv_policy"), "kv_peak_blocks": summary.get("kv_peak_blocks"),
            "kv_total_blocks": summary.get("kv_total_blocks"), "kv_hit_rate": kv.get("hit_rate"),
            "kv_prompt_tokens_cached": kv.get("prompt_tokens_cached"), "kv_evicted_blocks": kv.get("evicted_blocks"),
            "kv_preemptions": kv.get("preemptions")}
