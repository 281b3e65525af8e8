"""Run outputs (DESIGN §6): per-request records, summary.json and a Perfetto timeline.

Every run, simulated or real, writes the same three files into its output folder:
`requests.parquet` (one row per request), `summary.json` and `timeline.json` (Chrome
trace format: one track per lane, one slice per work item). The folder is written under
a temporary name and renamed into place, so no half-written folder is ever left.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from experiments.outdir import atomic_dir
from ragraph.records import RequestRecord, RunResult, TimelineEvent
from ragraph.work import LANES


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
    }


def chrome_trace(events: Iterable[TimelineEvent]) -> dict[str, object]:
    """Chrome trace-event JSON (Perfetto opens it): one thread track per lane."""
    tids = {lane.value: i + 1 for i, lane in enumerate(LANES)}
    out: list[dict[str, object]] = [
        {"name": "thread_name", "ph": "M", "pid": 1, "tid": tid, "args": {"name": lane}} for lane, tid in tids.items()
    ]
    out.append({"name": "process_name", "ph": "M", "pid": 1, "tid": 0, "args": {"name": "hedra"}})
    for lane, name, start, dur, args in events:
        out.append({"name": name, "ph": "X", "pid": 1, "tid": tids[lane], "ts": round(start * 1e6, 3),
                    "dur": round(dur * 1e6, 3), "args": args})
    return {"traceEvents": out, "displayTimeUnit": "ms"}


def write_run(out_dir: str | Path, records: Sequence[RequestRecord], summary: dict[str, object],
              timeline: Iterable[TimelineEvent] | None) -> Path:
    """Write the run's files into `out_dir` atomically (replacing an older run there)."""
    with atomic_dir(out_dir) as tmp:
        frame = pd.DataFrame([r.as_dict() for r in records], columns=list(RequestRecord.__dataclass_fields__))
        frame.to_parquet(tmp / "requests.parquet", index=False)
        (tmp / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        if timeline is not None:
            with open(tmp / "timeline.json", "w") as f:
                json.dump(chrome_trace(timeline), f, separators=(",", ":"))
    return Path(out_dir)
