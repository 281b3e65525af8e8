"""Capacity per workflow and policy on the simulator: is hedra's ever below its baselines'?

For each profile and workflow, one generated workload (synthetic probe lists on the
profile's index, an eighth of its lists per retrieval, seed --seed) and each policy's
sustainable rate for it (P95 latency <= --slo-p95, `calibration.capacity.sim_capacity`);
prints a table with hedra's capacity over each baseline's and writes every search (its runs
included) to --out as JSON. Goal (issue 16): hedra's capacity at least flashrag's and
langchain's on every workflow.

    python benchmarks/capacity.py [--profiles analytic-h100-llama8b-ivf4096,measured-cpu-tiny-llama-wiki]
        [--workflows one-shot,hyde,recomp,multistep,irg] [--policies hedra,flashrag,langchain]
        [--slo-p95 10] [--tolerance 0.05] [--out capacity-sim.json]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profiles", default="analytic-h100-llama8b-ivf4096,measured-cpu-tiny-llama-wiki")
    ap.add_argument("--workflows", default="one-shot,hyde,recomp,multistep,irg")
    ap.add_argument("--policies", default="hedra,flashrag,langchain", help="the first is compared with the rest")
    ap.add_argument("--slo-p95", type=float, default=10.0)
    ap.add_argument("--tolerance", type=float, default=0.05)
    ap.add_argument("--duration", type=float, default=None, help="seconds of arrivals per run (default: enough"
                                                                   " for the tolerance)")
    ap.add_argument("--nprobe", type=int, default=None, help="lists per retrieval (default: an eighth of the index's)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=Path("capacity-sim.json"))
    args = ap.parse_args()

    from calibration.capacity import sim_capacity
    from calibration.workload import Template, generated_requests
    from hwmodel.profile import load_profile
    from ragraph.policies import parse_policy

    policies = [parse_policy(p.strip()) for p in args.policies.split(",") if p.strip()]
    rows: list[dict] = []
    for name in args.profiles.split(","):
        prof = load_profile(name.strip())
        for wf in args.workflows.split(","):
            template = Template(lambda n, wf=wf, prof=prof: generated_requests(
                wf, n, prof.index.nlist, seed=args.seed, nprobe=args.nprobe))
            guess, step = 1.0, 2.0
            for choice in policies:
                t0 = time.perf_counter()
                found = sim_capacity(template, choice, prof, slo_p95_s=args.slo_p95, tolerance=args.tolerance,
                                     duration_s=args.duration, guess=guess, step=step)
                guess, step = found.rps or 1.0, 1.5  # the next policy starts near this one
                print(f"{prof.name} {wf} {choice.spec}: {found.rps:.2f} req/s ({len(found.trials)} runs,"
                      f" {time.perf_counter() - t0:.0f} s)", flush=True)
                rows.append({"profile": prof.name, "workflow": wf, "policy": choice.spec, **found.to_json()})
    args.out.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "rows": rows}, indent=1))
    print("\n" + "\n".join(table(rows, [p.spec for p in policies])))


def table(rows: list[dict], policies: list[str]) -> list[str]:
    """Markdown: per (profile, workflow) each policy's capacity and the first's ratio to the others'."""
    first, rest = policies[0], policies[1:]
    head = ["profile", "workflow", *[f"{p} (req/s)" for p in policies], *[f"{first} / {p}" for p in rest]]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    keys = dict.fromkeys((r["profile"], r["workflow"]) for r in rows)
    for prof, wf in keys:
        cap = {r["policy"]: r["rps"] for r in rows if r["profile"] == prof and r["workflow"] == wf}
        ratios = [f"{cap[first] / cap[p]:.2f}" if cap.get(p) else "-" for p in rest]
        lines.append(f"| {prof} | {wf} | " + " | ".join(f"{cap.get(p, 0):.2f}" for p in policies) + " | "
                     + " | ".join(ratios) + " |")
    return lines


if __name__ == "__main__":
    main()
