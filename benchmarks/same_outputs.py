"""Same outputs before and after a change: simulations of a list of (trace, policy) cells,
compared row by row.

A speed-up of the simulator must not change what it simulates. This runs the cells with the
code on `PYTHONPATH` and saves each one's `requests.parquet`, `summary.json` (wall times
dropped) and, for the cells marked so, its timeline; `--compare BEFORE` then checks every
cell against a saved run: the same requests in the same order, each request's outcome
(status, reason, counts) identical and every float column (times, latencies) within
`--tolerance` seconds (default 1 microsecond); the summaries' counts equal and their floats
within the same tolerance relative to their size; timelines slice for slice (lane, item,
args equal, start and duration within the tolerance).

The cells: every cell of the demo (`experiments/specs/demo.toml`: five workflows at their
rates, nine policies, 60 s, seed 2025); the ablation benchmark's cells (60 s, seed 1: the
sub-stage, speculation, reordering, GPU-cache and hedra-vs-flashrag rows); and a few more:
the speed benchmark's 300 s irg trace at 12 req/s under hedra and flashrag, its
generation-only trace, a compressed sparse gen-only trace, and agent workflows under both KV
policies.

    # the 'before', from the code to compare against (e.g. a `git archive` of main):
    PYTHONPATH=/tmp/before python benchmarks/same_outputs.py --save /tmp/same-before
    # the 'after', from this tree, compared:
    PYTHONPATH=. python benchmarks/same_outputs.py --save /tmp/same-after --compare /tmp/same-before

`--only SUBSTRING` runs the cells whose name contains it; `--quick` every tenth cell; `--no-fold`
runs engine steps one by one (a 'before' of the step folding from the same code).

Last run (2026-12-05, branch speed against main 44919a1, the simulator's speed-ups of issue 17):
472 of 472 cells the same: 288 demo cells, 176 ablation cells, 4 speed cells, 4 KV-policy cells;
every request's outcome and every float column equal to the bit, summaries equal, the 72 kept
timelines equal slice for slice. An earlier run found 6 differing cells (one-shot at nprobe 512
under hedra: a run of engine steps folded while a GPU scan started at the same instant), fixed.
After the rebase on main 2f2bfb2 (whose other changes move hedra's outputs and add record
columns), the same 472 cells folded against `--no-fold` on that code: 472 of 472 the same.
Again 2026-12-05 (branch speed2 against main c89b0af: the GPU cache's refresh, `sort_remaining`,
the probe model's partial sort): 472 of 472 cells the same, every one bit for bit.
Again 2026-12-05 (branch speed against main eae9e48: reordering by a partition, finished runs
freed): 472 of 472 cells the same.
"""

from __future__ import annotations

import argparse
import json
import math
import pickle
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

ABL_BASE = "no-spec-gen,no-reorder,no-gpu-cache"  # benchmarks/ablations.py: hedra with only sub-stages and wavefronts
ABL_RATES = (2, 4, 8, 12, 16, 20, 24, 28, 32, 40, 48)


@dataclass(frozen=True)
class Case:
    """One simulation to compare: a synthetic trace (or a generation-only one) under a policy."""

    name: str
    workflow: str  # built-in workflow(s); "gen3000": the speed benchmark's generation-only trace
    rate: float
    duration: float
    seed: int
    policy: str
    nprobe: int = 256
    kv_policy: str = "lru"
    timeline: bool = False
    time_scale: float = 1.0  # arrivals divided by this (a compressed trace)


def cases() -> list[Case]:
    out: list[Case] = []
    demo_rates = {"one-shot": (4, 8, 16, 24, 32, 36), "hyde": (4, 8, 16, 24, 32, 36), "recomp": (4, 8, 16, 24, 32, 36),
                  "multistep": (2, 4, 8, 12, 16, 20, 24), "irg": (1, 2, 4, 6, 8, 10, 12)}
    demo_policies = ("langchain", "flashrag", "hedra", "hedra:no-wavefront", "hedra:substages=off",
                     "hedra:no-reorder", "hedra:no-spec-gen", "hedra:no-spec-retr", "hedra:no-gpu-cache")
    for wf, rates in demo_rates.items():
        for rate in rates:
            for pol in demo_policies:
                out.append(Case(f"demo/{wf}@{rate}/{pol}", wf, rate, 60.0, 2025, pol,
                                timeline=pol in ("hedra", "flashrag")))
    abl = []
    for wf in ("one-shot", "multistep", "irg"):
        for rate in (4, 8, 12):
            for sub in ("dynamic", "off"):
                abl.append((wf, rate, 256, f"hedra:{ABL_BASE},substages={sub}"))
    for wf in ("multistep", "irg", "one-shot"):
        for rate in (2, 4, 8):
            for pol in ("hedra:no-gpu-cache", "hedra:no-gpu-cache,spec_after=1", "hedra:no-gpu-cache,no-spec-gen",
                        "hedra:no-gpu-cache,no-reorder"):
                abl.append((wf, rate, 256, pol))
    for wf in ("one-shot", "irg"):
        for rate in (8, 10, 12):
            for pol in ("hedra", "hedra:no-gpu-cache"):
                abl.append((wf, rate, 512, pol))
    for wf in ("one-shot", "hyde", "recomp", "multistep", "irg"):
        for rate in ABL_RATES:
            for pol in ("flashrag", "hedra"):
                abl.append((wf, rate, 256, pol))
    for wf, rate, nprobe, pol in dict.fromkeys(abl):
        out.append(Case(f"ablation/{wf}@{rate}/nprobe{nprobe}/{pol}", wf, rate, 60.0, 1, pol, nprobe))
    out += [Case("speed/irg@12x300/hedra", "irg", 12, 300.0, 0, "hedra", timeline=True),
            Case("speed/irg@12x300/flashrag", "irg", 12, 300.0, 0, "flashrag", timeline=True),
            Case("speed/gen3000/flashrag", "gen3000", 10, 0.0, 0, "flashrag", timeline=True),
            Case("speed/sparse-compressed/flashrag", "gen-only", 0.01175, 604800.0, 0, "flashrag", timeline=True,
                 time_scale=500.0)]
    for wf in ("agent-chain", "agent-branch"):
        for kv in ("lru", "kvflow"):
            out.append(Case(f"kv/{wf}@2/{kv}", wf, 2, 60.0, 0, "flashrag", kv_policy=kv, timeline=True))
    return out


def requests_of(case: Case, nlist: int):
    from ragraph.graph import Request
    from ragraph.workflows import WorkflowRegistry
    from traces.generate import TraceConfig, generate_trace
    from traces.schema import TraceRequest, to_request

    registry = WorkflowRegistry()
    if case.workflow == "gen3000":  # benchmarks/sim_speed.py's generation-only workload
        import random
        rng, t, rows = random.Random(0), 0.0, []
        for i in range(3000):
            t += rng.expovariate(10.0)
            rows.append({"id": f"g{i:06d}", "arrival_s": round(t, 6), "workflow": "gen-only", "stages": [
                {"op": "generate", "role": "answer", "prompt_tokens": 512, "output_tokens": 128}]})
    else:
        cfg = TraceConfig(tuple(case.workflow.split(",")), case.rate, case.duration, seed=case.seed,
                          nprobe=case.nprobe, nlist=nlist)
        rows = list(generate_trace(cfg, registry))
    reqs: list[Request] = [to_request(TraceRequest.model_validate(r), registry) for r in rows]
    if case.time_scale != 1.0:
        from dataclasses import replace
        reqs = [replace(r, arrival_s=round(r.arrival_s / case.time_scale, 6)) for r in reqs]
    return reqs


def run_case(case: Case, out: str, fold: bool = True) -> tuple[str, float]:
    import sim.executor
    from hwmodel.profile import load_profile
    from ragraph.kvpolicy import KVPolicy
    from ragraph.policies import parse_policy
    from runs.outputs import write_requests
    from runs.run import simulate

    profile = load_profile()
    reqs = requests_of(case, profile.index.nlist)
    if not fold:
        sim.executor.Simulation.fold_steps = False
    t = time.perf_counter()
    run = simulate(reqs, parse_policy(case.policy), profile, seed=case.seed, timeline=case.timeline,
                   kv_policy=KVPolicy(case.kv_policy))
    wall = time.perf_counter() - t
    d = Path(out) / case.name.replace("/", "__").replace(":", "_").replace(",", "+")
    d.mkdir(parents=True, exist_ok=True)
    write_requests(d / "requests.parquet", run.result.records)
    summary = {k: v for k, v in run.summary.items() if k != "wall_s"}
    (d / "summary.json").write_text(json.dumps(summary, indent=1, sort_keys=True))
    if case.timeline:
        (d / "timeline.pkl").write_bytes(pickle.dumps(run.result.timeline, protocol=5))
    return case.name, wall


# --- comparison -----------------------------------------------------------------------------------

def close(a, b, tol: float) -> bool:
    if isinstance(a, float) or isinstance(b, float):
        if a is None or b is None:
            return a is b
        return a == b or (math.isnan(a) and math.isnan(b)) or abs(a - b) <= tol * max(1.0, abs(a), abs(b))
    return a == b


def diff_json(a, b, tol: float, where: str, out: list[str]) -> None:
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b)):
            if k not in a or k not in b:
                out.append(f"{where}.{k}: only in {'after' if k not in a else 'before'}")
            else:
                diff_json(a[k], b[k], tol, f"{where}.{k}", out)
    elif isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            diff_json(x, y, tol, f"{where}[{i}]", out)
    elif not close(a, b, tol):
        out.append(f"{where}: {a!r} before, {b!r} after")


def compare_case(before: Path, after: Path, tol: float) -> list[str]:
    import pyarrow.parquet as pq

    diffs: list[str] = []
    ta, tb = pq.read_table(before / "requests.parquet"), pq.read_table(after / "requests.parquet")
    if ta.column_names != tb.column_names or ta.num_rows != tb.num_rows:
        return [f"requests.parquet: columns/rows {ta.column_names}/{ta.num_rows} before, "
                f"{tb.column_names}/{tb.num_rows} after"]
    worst = 0.0
    for name in ta.column_names:
        ca, cb = ta.column(name).to_pylist(), tb.column(name).to_pylist()
        for i, (x, y) in enumerate(zip(ca, cb, strict=True)):
            if isinstance(x, float):
                worst = max(worst, abs(x - y))
                if abs(x - y) > tol:
                    diffs.append(f"row {i} ({ca and ta.column('id')[i]}) {name}: {x!r} before, {y!r} after")
            elif x != y:
                diffs.append(f"row {i} ({ta.column('id')[i]}) {name}: {x!r} before, {y!r} after")
    diff_json(json.loads((before / "summary.json").read_text()), json.loads((after / "summary.json").read_text()),
              tol, "summary", diffs)
    if (before / "timeline.pkl").exists() and (after / "timeline.pkl").exists():
        la, lb = (pickle.loads((p / "timeline.pkl").read_bytes()) for p in (before, after))
        if len(la) != len(lb):
            diffs.append(f"timeline: {len(la)} slices before, {len(lb)} after")
        else:
            for i, (x, y) in enumerate(zip(la, lb, strict=True)):
                if x[0] != y[0] or x[1] != y[1] or x[4] != y[4] or abs(x[2] - y[2]) > tol or abs(x[3] - y[3]) > tol:
                    diffs.append(f"timeline slice {i}: {x} before, {y} after")
                    break
    return diffs + ([f"(largest float difference {worst:.3g} s)"] if worst else [])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--save", type=Path, required=True, help="folder for this code's outputs")
    ap.add_argument("--compare", type=Path, help="folder of saved outputs to compare with")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--only", default="", help="cells whose name contains this")
    ap.add_argument("--quick", action="store_true", help="every tenth cell")
    ap.add_argument("--tolerance", type=float, default=1e-6)
    ap.add_argument("--no-fold", action="store_true",
                    help="engine steps one by one (Simulation.fold_steps off): a 'before' from the same code")
    args = ap.parse_args()
    todo = [c for c in cases() if args.only in c.name]
    if args.quick:
        todo = todo[::10]
    t = time.perf_counter()
    walls: dict[str, float] = {}
    with ProcessPoolExecutor(args.workers) as pool:
        for name, wall in pool.map(run_case, todo, [str(args.save)] * len(todo), [not args.no_fold] * len(todo)):
            walls[name] = wall
    print(f"{len(todo)} cells simulated in {time.perf_counter() - t:.1f} s wall"
          f" ({sum(walls.values()):.1f} s in simulations)")
    if args.compare is None:
        return
    bad = 0
    for case in todo:
        sub = case.name.replace("/", "__").replace(":", "_").replace(",", "+")
        if not (args.compare / sub).exists():
            print(f"MISSING before: {case.name}")
            bad += 1
            continue
        diffs = compare_case(args.compare / sub, args.save / sub, args.tolerance)
        real = [d for d in diffs if not d.startswith("(")]
        if real:
            bad += 1
            print(f"DIFFERENT {case.name}:")
            for d in real[:8]:
                print(f"    {d}")
        elif diffs:
            print(f"same {case.name} {diffs[-1]}")
    print(f"{len(todo) - bad} of {len(todo)} cells the same (tolerance {args.tolerance:g} s)")
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
