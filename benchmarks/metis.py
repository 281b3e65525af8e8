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

from experiments.metis_figure import headline, policies, run_points
from traces.generate import TraceConfig, generate_trace, write_jsonl

SLO_S = 10.0
POLICIES = policies(quick=False)


def run_rate(rate: float, duration: float, seed: int, out: Path) -> dict[str, dict]:
    path = out / f"metis-{rate:g}.jsonl"
    write_jsonl(generate_trace(TraceConfig(("metis",), rate=rate, duration_s=duration, seed=seed)), path)
    return run_points(path, POLICIES)


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
