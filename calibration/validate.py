"""`hedra validate`: replay traces on the real body and on the simulator, and say how far apart they are.

For each trace and policy, the same requests run on the real body (with the profile's
engine configuration and cost model) and on the simulator with the profile. A cell per
(workflow, rate, policy) holds both bodies' latency percentiles, the relative errors
(sim - real) / real, both bodies' lane busy fractions, and per-item errors: the simulator's
latency functions re-time the real run's own engine steps and search calls (from their
timeline args), and the median |relative error| item by item says whether a gap comes from
the per-item models or from scheduling. Outputs: `validation.json`, `report.md`, plots and
`items.parquet` (every re-timed real item).

Near a policy's capacity the latency is a steep function of the items' cost, and the real
body's own speed moves from run to run (the CPU VM's: 10-20% within minutes). Each cell
therefore also says how fast the machine ran in that run (`run_speed`: the real items'
measured time over their price, per kind), how the simulator's P50 moves when every item
costs 1% more (`p50_per_cost`, from a run at +2%), and the simulator's errors once it runs
at the run's own speed (`at_run_speed`: the profile scaled by `run_speed`,
`Profile.at_speed`). The last uses the real run's timings, so it is no prediction: it
separates what the cost model misses from what the machine did that run. With
`probe_each_cell`, the stale-profile probe runs before each cell and the cell also holds the
simulator at the probe's speed (`at_probe_speed`): a prediction, made before the run, that
follows the machine's drift up to the probe's minute (`calibration.staleness`).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from calibration.staleness import at_measured_speed, check_profile, measured_over_priced
from calibration.workload import at_rate, corpus_requests
from hwmodel.latency import AfterPrefill, LatencyModel, contended_s
from hwmodel.profile import Profile
from ragraph.graph import Request
from ragraph.kvpolicy import DEFAULT_KV_POLICY, KVPolicy
from ragraph.policies import PolicyChoice
from ragraph.records import TimelineEvent
from runs.run import run_real, simulate

if TYPE_CHECKING:
    from backends.real import RealBackend

PERCENTILES = ("p50", "p95", "p99")


@dataclass(frozen=True)
class Case:
    """One trace to validate: its requests and how it was made."""

    workflow: str  # workflow name(s) of the trace, comma-joined
    rate: float  # arrivals per second (measured from the trace when it was given as a file)
    requests: list[Request]
    source: str  # the trace file, or how it was generated
    policy: PolicyChoice | None = None  # the one policy this case is for (its load is a share of its capacity)
    load: float | None = None  # the rate as a share of that policy's capacity, where it was set so


def rel_error(sim: float | None, real: float | None) -> float | None:
    if sim is None or real is None or real <= 0:
        return None
    return (sim - real) / real


ITEM_KINDS = {"GenStep": "engine_step", "SearchBatch": "search_call"}
COST_STEP = 0.02  # the extra cost of every item in the run that measures the P50's sensitivity


def run_speed(items: Sequence[dict[str, object]]) -> dict[str, float | None]:
    """Per item kind: the real run's measured seconds over their price, summed (None: no items)."""
    return measured_over_priced((str(r["kind"]), float(r["measured_s"]), float(r["predicted_s"]))  # type: ignore[arg-type]
                                for r in items)


def retimed_items(timeline: Sequence[TimelineEvent], latency: LatencyModel) -> list[dict[str, object]]:
    """The real run's engine steps and CPU search calls, each with its measured duration and
    the duration the profile's latency functions give it (from the item's timeline args), as
    the simulator would: slowed by the profile's contention over its overlap with the other
    lane's item in flight when it started (the real run's); the steps' refill and kernels as a
    warm engine's (`LatencyModel.kernel_sizes`) that ran this run's steps."""
    rows: list[dict[str, object]] = []
    free: dict[str, float] = {}  # when each lane's previous item ended
    contention = latency.profile.contention
    after_prefill, kernels = AfterPrefill(), latency.kernel_sizes()
    for lane, name, start, dur, args in sorted(timeline, key=lambda e: e[2]):
        idle = start - free.get(lane, -math.inf)
        free[lane] = start + dur
        if dur <= 0:
            continue
        if name == "GenStep" and args.get("running"):
            alone = (latency.engine_step_s(args) + latency.refill_s(*after_prefill.step(args["prefill_tokens"]))
                     + latency.kernels_s(kernels, args["computed_tokens"]))
            pred = contended_s(alone + latency.engine_cold_s(idle),
                               free.get("cpu_retrieval", -math.inf) - start, contention.gen_step_slowdown)
        elif name == "SearchBatch" and lane == "cpu_retrieval":
            pred = contended_s(latency.search_call_s(args, idle), free.get("gpu_gen", -math.inf) - start,
                               contention.cpu_search_slowdown)
        else:
            continue
        rows.append({"kind": ITEM_KINDS[name], "start_s": start, "measured_s": dur, "predicted_s": pred, **args})
    return rows


def _per_cost(costlier: float | None, base: float | None) -> float | None:
    """The P50's relative change per relative change of every item's cost (1.0: in proportion)."""
    return None if costlier is None or not base else (costlier / base - 1) / COST_STEP


def item_errors(items: Sequence[dict[str, object]]) -> dict[str, dict[str, float | int | None]]:
    """Per item kind: the median and P90 |relative error| of the predicted durations, and the
    median signed error (its bias: < 0 when the model is too fast)."""
    out = {}
    for kind in ITEM_KINDS.values():
        rel = np.array([(r["predicted_s"] - r["measured_s"]) / r["measured_s"] for r in items  # type: ignore[operator]
                        if r["kind"] == kind])
        out[kind] = ({"items": len(rel), "median_abs_rel_error": float(np.median(np.abs(rel))),
                      "p90_abs_rel_error": float(np.percentile(np.abs(rel), 90)),
                      "median_rel_error": float(np.median(rel))} if len(rel) else
                     {"items": 0, "median_abs_rel_error": None, "p90_abs_rel_error": None, "median_rel_error": None})
    return out


def _body_figures(summary: dict) -> dict[str, object]:
    lat = summary["latency_s"]
    return {**{p: lat[p] for p in ("mean", *PERCENTILES)}, "completed": summary["completed"],
            "failed": summary["failed"], "lane_busy": summary["lane_utilization"]}


def policy_label(policy: PolicyChoice, kv_policy: KVPolicy) -> str:
    """A cell's policy as tables and plots show it: the spec, and the KV policy unless it is lru."""
    return policy.spec if kv_policy.spec == DEFAULT_KV_POLICY else f"{policy.spec} kv={kv_policy.spec}"


def validate_case(body: RealBackend, profile: Profile, case: Case, policy: PolicyChoice,
                  progress: Callable[[str], None] = lambda msg: None, kv_policy: KVPolicy | None = None,
                  probe_speed: dict[str, float | None] | None = None
                  ) -> tuple[dict, dict[str, list[float]], list[dict[str, object]]]:
    """One cell: (the cell's figures, the two bodies' completed latencies for plots, the real
    run's items re-timed); both bodies run `kv_policy` (default lru); `probe_speed`: the
    machine's speed a probe measured just before (`Staleness.speed`), also simulated at."""
    kv = kv_policy or KVPolicy(DEFAULT_KV_POLICY)
    latency = LatencyModel(profile)
    label = policy_label(policy, kv)
    progress(f"real body: {case.workflow} at {case.rate:g} req/s under {label} ({len(case.requests)} requests)")
    # synthetic prompts, as the simulator replays them (a model that answers would otherwise get real text,
    # whose lengths are not the trace's)
    real = run_real(body, case.requests, policy, latency, timeline=True, text=False, kv_policy=kv)
    progress(f"simulator: {case.workflow} at {case.rate:g} req/s under {label}")
    sim = simulate(case.requests, policy, profile, timeline=False, latency=latency, kv_policy=kv)
    r, s = _body_figures(real.summary), _body_figures(sim.summary)
    items = retimed_items(real.result.timeline, latency)
    speed = run_speed(items)

    def at(speeds: dict[str, float | None]) -> dict[str, float | None]:
        """The simulator's percentiles and errors with every item `speeds` times its price."""
        figures = _body_figures(simulate(case.requests, policy, at_measured_speed(profile, speeds), timeline=False,
                                         kv_policy=kv).summary)
        return {**{p: figures[p] for p in PERCENTILES},  # type: ignore[misc]
                **{f"{p}_error": rel_error(figures[p], r[p]) for p in PERCENTILES}}  # type: ignore[arg-type]

    costlier = at({"engine_step": 1 + COST_STEP, "search_call": 1 + COST_STEP})
    cell = {"workflow": case.workflow, "rate": case.rate, "policy": policy.spec, "kv_policy": kv.spec,
            "label": label, "requests": len(case.requests),
            "trace": case.source, **({"load": case.load} if case.load is not None else {}), "real": r, "sim": s,
            **{f"{p}_error": rel_error(s[p], r[p]) for p in PERCENTILES},  # type: ignore[arg-type]
            "item_errors": item_errors(items), "run_speed": speed, "at_run_speed": at(speed),
            **({"probe_speed": probe_speed, "at_probe_speed": at(probe_speed)} if probe_speed else {}),
            "p50_per_cost": _per_cost(costlier["p50"], s["p50"]),  # type: ignore[arg-type]
            "kv_cache": {"real": real.summary.get("kv_cache"), "sim": sim.summary.get("kv_cache")}}
    latencies = {"real": [x.latency_s for x in real.result.records if x.status == "completed"],
                 "sim": [x.latency_s for x in sim.result.records if x.status == "completed"]}
    return cell, latencies, items


def run_validation(body: RealBackend, profile: Profile, cases: Sequence[Case], policies: Sequence[PolicyChoice],
                   out: Path, progress: Callable[[str], None] = lambda msg: None,
                   extra: dict[str, object] | None = None, kv_policies: Sequence[KVPolicy] = (),
                   probe_each_cell: bool = False) -> dict:
    """Validate every (case, policy, KV policy) (a case made for one policy: under that policy
    alone; `kv_policies` default: lru alone; `probe_each_cell`: the stale-profile probe first); write
    validation.json, report.md and plots into `out` (an existing, empty folder: the caller makes
    it atomic); `extra` joins validation.json's top level (e.g. `profile_check`, `capacities`)."""
    import pandas as pd

    from calibration.report import write_plots, write_report

    cells: list[dict] = []
    latencies: dict[tuple[str, float, str], dict[str, list[float]]] = {}
    items: list[dict[str, object]] = []
    for case in cases:
        for policy in ([case.policy] if case.policy else policies):
            for kv in kv_policies or [KVPolicy(DEFAULT_KV_POLICY)]:
                speed = None
                if probe_each_cell:
                    progress(f"probing the machine's speed before {case.workflow} at {case.rate:g} req/s")
                    speed = check_profile(body, profile).speed
                cell, lat, cell_items = validate_case(body, profile, case, policy, progress, kv, speed)
                cells.append(cell)
                latencies[(case.workflow, case.rate, cell["label"])] = lat
                items += [{"workflow": case.workflow, "rate": case.rate, "policy": policy.spec, "kv_policy": kv.spec,
                           **r} for r in cell_items]
    result = {"profile": profile.name, "profile_kind": profile.kind, "body": body.describe(), "cells": cells,
              "worst": worst_errors(cells), **(extra or {})}
    (out / "validation.json").write_text(json.dumps(result, indent=2) + "\n")
    pd.DataFrame(items).to_parquet(out / "items.parquet", index=False)  # every re-timed real item, for diagnosis
    write_report(out / "report.md", result)
    write_plots(out, cells, latencies)
    return result


def worst_errors(cells: Sequence[dict]) -> dict[str, float | None]:
    """Largest |error| over the cells, per percentile and per item kind."""
    out: dict[str, float | None] = {}
    for p in PERCENTILES:
        vals = [abs(c[f"{p}_error"]) for c in cells if c[f"{p}_error"] is not None]
        out[f"{p}_error"] = max(vals) if vals else None
    for kind in ("engine_step", "search_call"):
        vals = [c["item_errors"][kind]["median_abs_rel_error"] for c in cells
                if c["item_errors"][kind]["median_abs_rel_error"] is not None]
        out[f"{kind}_median_error"] = max(vals) if vals else None
    return out


def generated_cases(body: RealBackend, workflows: Sequence[str], rates: Sequence[float], duration_s: float, *,
                    seed: int = 0, nprobe: int | None = None,
                    progress: Callable[[str], None] = lambda msg: None) -> list[Case]:
    """One case per (workflow, rate): requests made from the body's corpus (`corpus_requests`),
    `duration_s` seconds of arrivals at each rate."""
    cases = []
    for wf in workflows:
        template = corpus_requests(body, wf, int(max(rates) * duration_s * 1.3) + 10, seed=seed, nprobe=nprobe,
                                   progress=progress)
        cases += [Case(wf, rate, at_rate(template, rate, duration_s),
                       f"generated: {wf} {rate:g} req/s {duration_s:g} s seed {seed}") for rate in rates]
    return cases
