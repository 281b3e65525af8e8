"""RAGServe/METIS's delay-quality comparison, in simulation on the H100 profile.

A METIS-like workload (the `metis` workflow: Musique, SQuAD, FinSec and QMSUM questions in equal
shares, profiles and per-configuration F1 drawn from the declared models of `traces.metis`) at
Poisson rates; per rate, every policy on the same trace: `ragserve`, its ablations, `adaptive`
(AdaptiveRAG*-like) and a grid of fixed configurations (vLLM with one configuration). Reported
beside the paper's figures (arXiv 2412.10543):

- delay at the F1 of the best fixed configuration: the fixed configuration of highest F1 against
  ragserve, P50 ratio, when ragserve's F1 is at least as high (paper: 1.64-2.54x lower, there
  against AdaptiveRAG*; adaptive's ratio is printed too);
- F1 gain at equal delay: ragserve's F1 against the best F1 of the fixed configurations whose
  P50 is no higher than ragserve's (paper: +12-18%);
- throughput: the highest rate of the grid at which each policy keeps its P95 under `SLO_S`.
- contributions: ragserve against ragserve:no-profiler and ragserve:no-best-fit (P50 ratio and F1).

F1 here is the quality *model's* (model:metis-curves-v1), not a measurement.

    python benchmarks/metis.py [--rates 2,4,8,16] [--duration 100] [--seed 1] [--out metis-run]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from experiments.simulate import simulate
from hwmodel.profile import load_profile
from traces.generate import TraceConfig, generate_trace, write_jsonl
from traces.schema import load_trace

SLO_S = 10.0
FIXED = (*(f"fixed:synthesis=stuff,chunks={c}" for c in (2, 5, 10, 15, 20, 30, 35)),
         *(f"fixed:synthesis=map_reduce,chunks={c},length=50" for c in (5, 10, 20, 30)),
         "fixed:synthesis=map_reduce,chunks=30,length=100",
         *(f"fixed:synthesis=map_rerank,chunks={c}" for c in (3, 5, 10)))
RAGSERVE = ("ragserve", "ragserve:no-profiler", "ragserve:no-best-fit", "ragserve:no-history",
            "ragserve:no-feedback")
POLICIES = (*RAGSERVE, "adaptive", *FIXED)


def run_rate(rate: float, duration: float, seed: int, out: Path) -> dict[str, dict]:
    path = out / f"metis-{rate:g}.jsonl"
    write_jsonl(generate_trace(TraceConfig(("metis",), rate=rate, duration_s=duration, seed=seed)), path)
    requests = load_trace(path)
    profile = load_profile()
    points = {}
    for policy in POLICIES:
        s = simulate(requests, policy, profile, timeline=False).summary
        lat = s["latency_s"]
        points[policy] = {"p50_s": lat["p50"], "p95_s": lat["p95"], "mean_s": lat["mean"],
                          "f1": s["quality"]["f1_mean"], "throughput_rps": s["throughput_rps"],
                          "completed": s["completed"], "requests": s["requests"]}
    return points


def headline(points: dict[str, dict]) -> dict[str, object]:
    rs = points["ragserve"]
    fixed = {p: v for p, v in points.items() if p.startswith("fixed")}
    best = max(fixed, key=lambda p: fixed[p]["f1"])
    cheaper = {p: v for p, v in fixed.items() if v["p50_s"] <= rs["p50_s"]}
    equal_delay = max(cheaper, key=lambda p: cheaper[p]["f1"]) if cheaper else None
    return {
        "best_fixed": best, "best_fixed_f1": fixed[best]["f1"], "ragserve_f1": rs["f1"],
        "delay_ratio_vs_best_fixed": fixed[best]["p50_s"] / rs["p50_s"],
        "ragserve_at_least_as_good": rs["f1"] >= fixed[best]["f1"],
        "delay_ratio_vs_adaptive": points["adaptive"]["p50_s"] / rs["p50_s"],
        "adaptive_f1": points["adaptive"]["f1"],
        "fixed_at_equal_delay": equal_delay,
        "f1_gain_at_equal_delay": rs["f1"] / cheaper[equal_delay]["f1"] - 1 if equal_delay else None,
        "profiler": {"p50_ratio": points["ragserve:no-profiler"]["p50_s"] / rs["p50_s"],
                     "f1_without": points["ragserve:no-profiler"]["f1"]},
        "best_fit": {"p50_ratio": points["ragserve:no-best-fit"]["p50_s"] / rs["p50_s"],
                     "f1_without": points["ragserve:no-best-fit"]["f1"]},
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rates", default="2,4,8,16")
    ap.add_argument("--duration", type=float, default=100.0)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--out", type=Path, default=Path("metis-run"))
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    rates = [float(r) for r in args.rates.split(",")]
    results = {}
    for rate in rates:
        points = run_rate(rate, args.duration, args.seed, args.out)
        results[rate] = {"points": points, "headline": headline(points)}
        print(f"\n== {rate:g} req/s ==")
        for p, v in points.items():
            print(f"  {p:48s} P50 {v['p50_s']:6.2f} s  P95 {v['p95_s']:6.2f} s  F1 {v['f1']:.3f}"
                  f"  {v['completed']}/{v['requests']}")
        print("  " + json.dumps(results[rate]["headline"]))
    sustained = {p: max((r for r in rates if results[r]["points"][p]["p95_s"] <= SLO_S), default=None)
                 for p in POLICIES}
    print(f"\nhighest rate with P95 <= {SLO_S:g} s: " + json.dumps(sustained))
    (args.out / "metis.json").write_text(json.dumps({"rates": results, "sustained": sustained}, indent=2) + "\n")


if __name__ == "__main__":
    main()
