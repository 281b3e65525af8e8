"""Where a real item's time goes: the worker's own work against the hand-off around it (issue 16).

The real CPU body runs each engine step and each search call in a worker process
(`backends.worker_process`); the executor times an item from the lane thread, so its duration
holds the worker's handler and the hand-off around it (pickling, the pipe, the waiting
thread's wake-up and its GIL). The profile prices both together. If the hand-off grew with
load, or drifted, it would be an error the profile cannot see; this benchmark splits them.

For each workflow, policy and load (a fraction of the simulator's capacity on --profile, as
`benchmarks/fidelity.py` defines loads with `--capacity-on sim`), one replay of corpus
requests; per lane: the lane's busy fraction, the median (and P90) item time, handler time
and hand-off, the hand-off's median share of an item, and the items' measured time over
the profile's price (`calibration.validate.retimed_items`). Writes the rows to --out as JSON.

    HF_HUB_OFFLINE=1 python benchmarks/handoff.py [--profile cal.json] [--workflows irg,one-shot]
        [--policies flashrag,hedra] [--loads 0.3,0.6,0.85] [--duration 20] [--out handoff.json]
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np

LANES = (("gpu_gen", "step", "engine_step"), ("cpu_retrieval", "search", "search_call"))


def lane_row(timeline: list, handler_s: list[float], priced: list[dict], lane: str) -> dict[str, float]:
    """One lane of one replay: its items' times split into handler and hand-off (seconds)."""
    took = np.array([e[3] for e in timeline if e[0] == lane])
    if len(took) != len(handler_s) or not len(took):
        raise RuntimeError(f"{lane}: {len(took)} items on the timeline, {len(handler_s)} worker answers")
    work = np.array(handler_s)
    handoff = took - work
    end = max(e[2] + e[3] for e in timeline)
    ratio = np.array([r["measured_s"] / r["predicted_s"] for r in priced])
    return {"items": len(took), "busy": float(took.sum() / end),
            "item_p50_s": float(np.median(took)), "item_p90_s": float(np.percentile(took, 90)),
            "handler_p50_s": float(np.median(work)), "handoff_p50_s": float(np.median(handoff)),
            "handoff_p90_s": float(np.percentile(handoff, 90)), "handoff_share_p50": float(np.median(handoff / took)),
            "measured_over_price_p50": float(np.median(ratio)) if len(ratio) else float("nan")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", default=None, help="a measured CPU profile (default: the shipped one)")
    ap.add_argument("--workflows", default="irg,one-shot")
    ap.add_argument("--policies", default="flashrag,hedra")
    ap.add_argument("--loads", default="0.3,0.6,0.85", help="fractions of each policy's simulated capacity")
    ap.add_argument("--duration", type=float, default=20.0, help="seconds of arrivals per replay")
    ap.add_argument("--slo-p95", type=float, default=5.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=Path("handoff.json"))
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    from backends.real import RealBackend, RealOptions
    from calibration.capacity import sim_capacity
    from calibration.validate import retimed_items
    from calibration.workload import Template, corpus_requests
    from hwmodel.latency import LatencyModel
    from hwmodel.profile import DEFAULT_CPU_PROFILE, load_profile
    from ragraph.policies import parse_policy
    from runs.run import run_real

    prof = load_profile(args.profile or DEFAULT_CPU_PROFILE)
    latency = LatencyModel(prof)
    body = RealBackend.open(RealOptions.of_profile(prof))
    workers = body.workers()
    rows = []
    try:
        for wf in args.workflows.split(","):
            template = Template(lambda n, wf=wf: corpus_requests(body, wf, n, seed=args.seed))
            for spec in args.policies.split(","):
                choice = parse_policy(spec)
                cap = sim_capacity(template, choice, prof, slo_p95_s=args.slo_p95, tolerance=0.15).rps
                for load in map(float, args.loads.split(",")):
                    for w in workers.values():
                        w.handler_log = []
                    run = run_real(body, template.at(load * cap, args.duration), choice, latency, text=False)
                    timeline = run.result.timeline
                    priced = retimed_items(timeline, latency)
                    for lane, command, kind in LANES:
                        if lane not in workers:
                            continue
                        log = workers[lane].handler_log or []
                        row = {"workflow": wf, "policy": choice.spec, "load": load, "rps": load * cap, "lane": lane,
                               **lane_row(timeline, [s for c, s in log if c == command], [
                                   r for r in priced if r["kind"] == kind], lane)}
                        rows.append(row)
                        print(line(row), flush=True)
    finally:
        for w in workers.values():
            w.handler_log = None
        body.close()
    args.out.write_text(json.dumps({"profile": prof.name, "args": {k: str(v) for k, v in vars(args).items()},
                                    "rows": rows}, indent=1) + "\n")


def line(r: dict) -> str:
    ms = 1e3
    return (f"{r['workflow']} {r['policy']} {r['load']:g} ({r['rps']:.1f} req/s) {r['lane']}: {r['items']} items,"
            f" busy {r['busy']:.2f}; item {r['item_p50_s'] * ms:.3f} ms (P90 {r['item_p90_s'] * ms:.3f}), handler"
            f" {r['handler_p50_s'] * ms:.3f}, hand-off {r['handoff_p50_s'] * ms:.3f}"
            f" (P90 {r['handoff_p90_s'] * ms:.3f},"
            f" share {r['handoff_share_p50']:.3f}); measured / price {r['measured_over_price_p50']:.3f}")


if __name__ == "__main__":
    main()
