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
- delay at equal F1: the fastest fixed configuration whose F1 is at least ragserve's, its P50
  over ragserve's;
- throughput: the highest rate of the grid at which each policy keeps its P95 under `SLO_S`;
  ragserve's over that of the fixed configuration at equal F1 (at the grid's lowest rate) and
  over adaptive's (paper: 1.8-4.5x);
- contributions (paper: profiler 1.4-1.68x, batching 1.1-1.2x, best fit 1.45-1.75x): each part
  switched off (`ragserve:no-profiler`, `ragserve:no-batching`: one request's fan-out in the
  engine at a time, `ragserve:no-best-fit`), its P50 over ragserve's, and its F1.

F1 here is the quality *model's* (model:metis-curves-v1), not a measurement.

    python benchmarks/metis.py [--rates 1,2,4,8,16] [--duration 100] [--seed 1] [--out metis-run]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from experiments.metis_figure import CONTRIBUTIONS, headline, policies, run_points
from traces.generate import TraceConfig, generate_trace, write_jsonl

SLO_S = 10.0
POLICIES = policies(quick=False)
PAPER = {"delay at equal F1": "1.64-2.54x lower", "F1 gain at equal delay": "+12-18%", "throughput": "1.8-4.5x",
         "profiler": "1.4-1.68x", "batching": "1.1-1.2x", "best-fit": "1.45-1.75x"}


def run_rate(rate: float, duration: float, seed: int, out: Path) -> dict[str, dict]:
    path = out / f"metis-{rate:g}.jsonl"
    write_jsonl(generate_trace(TraceConfig(("metis",), rate=rate, duration_s=duration, seed=seed)), path)
    return run_points(path, POLICIES)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rates", default="1,2,4,8,16")
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
    table = against_paper(results, rates, sustained)
    print("\nquantity | paper | here")
    for name, here in table.items():
        print(f"{name} | {PAPER[name]} | {here}")
    (args.out / "metis.json").write_text(json.dumps({"rates": results, "sustained": sustained, "against_paper": table},
                                                    indent=2) + "\n")


def _x(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}x"


def against_paper(results: dict, rates: list[float], sustained: dict) -> dict[str, str]:
    """The paper's quantities, measured per rate (text for the table)."""
    heads = {r: results[r]["headline"] for r in rates}
    out = {
        "delay at equal F1": "; ".join(
            f"{r:g}/s: {_x(h['delay_ratio_at_equal_f1'])} vs {h['fixed_at_equal_f1']}, "
            f"{_x(h['delay_ratio_vs_adaptive'])} vs adaptive (F1 {h['adaptive_f1']:.3f} vs {h['ragserve_f1']:.3f})"
            for r, h in heads.items()),
        "F1 gain at equal delay": "; ".join(
            f"{r:g}/s: " + (f"{h['f1_gain_at_equal_delay']:+.1%} vs {h['fixed_at_equal_delay']}"
                            if h["f1_gain_at_equal_delay"] is not None else "no fixed configuration as fast")
            for r, h in heads.items()),
    }
    low = heads[rates[0]]
    rs = sustained["ragserve"]
    peers = {"fixed at equal F1": low["fixed_at_equal_f1"], "adaptive": "adaptive"}
    parts = []
    for name, peer in peers.items():
        theirs = sustained.get(peer) if peer else None
        if rs is None:
            parts.append(f"ragserve sustains no rate of the grid ({name}: {theirs})")
        elif theirs is None:
            parts.append(f"> {rs / rates[0]:.1f}x vs {name} ({peer} sustains none of the grid; ragserve {rs:g}/s)")
        else:
            parts.append(f"{rs / theirs:.2f}x vs {name} ({peer}: {theirs:g}/s; ragserve {rs:g}/s)")
    out["throughput"] = "; ".join(parts)
    for part in CONTRIBUTIONS:
        out[part] = "; ".join(f"{r:g}/s: P50 {_x(h[part]['p50_ratio_without'])} without, F1 {h[part]['f1_without']:.3f}"
                              f" vs {h['ragserve_f1']:.3f}" for r, h in heads.items() if part in h)
    return out

if __name__ == "__main__":
    main()
