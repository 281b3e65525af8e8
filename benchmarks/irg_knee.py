"""Where hedra's gain over the baselines comes from, on irg near the flashrag knee.

Simulates one irg trace per rate (300 s, seed 1, nprobe 256) under the baselines, hedra and
hedra's ablations, and prints P50/P99 latency, each as a ratio to flashrag measured in the
same run, with the busy fraction of the GPU and CPU lanes (for the baselines the two add up
to at most 1: their stages never overlap).

    python benchmarks/irg_knee.py [--rates 2,4,8] [--duration 300]
"""

from __future__ import annotations

import argparse

from experiments.cell import trace_requests
from hwmodel.latency import LatencyModel
from hwmodel.profile import load_profile
from ragraph.policies import parse_policy
from ragraph.workflows import WorkflowRegistry
from runs.run import simulate
from traces.generate import TraceConfig

POLICIES = (
    ("langchain", "request batches, one call per query, stages alternate"),
    ("flashrag", "stage-level batching, stages alternate (the reference)"),
    ("hedra:substages=off,no-wavefront", "overlap only: full-nprobe batches beside generation"),
    ("hedra:substages=fixed", "+ artifact sub-stages (nprobe/minibatch pairs)"),
    ("hedra:fill=round_robin", "+ time-budget sub-stages, round-robin fill"),
    ("hedra:no-wavefront", "+ time-budget sub-stages, FIFO fill, cohorts"),
    ("hedra", "all: time budget, FIFO fill, wavefront"),
)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rates", default="2,4,8")
    ap.add_argument("--duration", type=float, default=300.0)
    args = ap.parse_args()
    profile = load_profile()
    latency = LatencyModel(profile)
    for rate in (float(r) for r in args.rates.split(",")):
        requests = trace_requests(TraceConfig(("irg",), rate, args.duration, seed=1), WorkflowRegistry())
        rows = []
        for spec, what in POLICIES:
            s = simulate(requests, parse_policy(spec), profile, timeline=False, latency=latency).summary
            rows.append((spec, what, s["latency_s"]["p50"], s["latency_s"]["p99"],
                         s["lane_utilization"]["gpu_gen"], s["lane_utilization"]["cpu_retrieval"]))
        ref = next(r for r in rows if r[0] == "flashrag")
        print(f"\nirg at {rate:g} req/s, {len(requests)} requests ({args.duration:.0f} s, seed 1, nprobe 256)")
        print(f"{'policy':34s} {'P50 s':>7s} {'P99 s':>7s} {'FR/x P50':>9s} {'FR/x P99':>9s} {'gpu':>5s} {'cpu':>5s}  ")
        for spec, what, p50, p99, gpu, cpu in rows:
            ratios = f"{ref[2] / p50:9.2f} {ref[3] / p99:9.2f}"
            print(f"{spec:34s} {p50:7.3f} {p99:7.3f} {ratios} {gpu:5.2f} {cpu:5.2f}  {what}")


if __name__ == "__main__":
    main()
