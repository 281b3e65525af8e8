"""A sweep's capacities: each cell's sustainable rate, and the rates of cells given as loads.

A spec with a `[capacity]` table asks, for every synthetic workload's (workflow, trace
options, profile, seed, policy), the highest Poisson rate whose P95 latency stays within
`slo_p95` (`calibration.capacity.sim_capacity`: bracketing, then geometric bisection to
`tolerance`; the HedraRAG paper's "sustainable rate"). Every row of that group gets
`capacity_rps` (the highest rate that passed), `capacity_low` / `capacity_high` (its bracket;
high is None when every rate tried passed), and, where the workload gave `loads` instead of
rates, `load`: the cell then runs at load x its own policy's capacity, so each policy is
measured at the same fraction of what it sustains (speedups against the baseline match rows
by load, not by rate). Trace-file and offline workloads get no capacity (their arrivals are
fixed): their capacity columns are empty.

The search's workload is the cell's own: the same workflows, trace options (nprobe, k, zipf,
arrival process...) and seed, generated at 1 request per second and rescaled to each rate
(`calibration.workload.at_rate`). Each search is stored as `DIR/capacity/<id>.json` (its key,
the result and every run it made), so a rerun of the sweep reuses it; searches run on a pool
of local processes when the sweep has several workers. Runs on the simulator only.

Layering: experiments imports calibration (never the reverse).
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Iterable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

from experiments.cell import LRU, Cell, trace_requests
from experiments.sweepspec import CapacitySpec
from ragraph.graph import Request
from ragraph.kvpolicy import KVPolicy
from ragraph.policies import PolicyChoice
from ragraph.workflows import WorkflowRegistry, WorkflowSpec
from runs.outdir import atomic_file
from traces.generate import TraceConfig

COLUMNS = ("load", "capacity_rps", "capacity_low", "capacity_high")


@dataclass(frozen=True, slots=True)
class CapacityTask:
    """One capacity search: a cell's workload and policy, without its rate."""

    label: str  # workflow name(s), comma-separated
    trace_options: tuple[tuple[str, object], ...]
    workflows: tuple[WorkflowSpec, ...]
    policy: PolicyChoice
    profile: str
    seed: int
    inputs: str  # the cell's input digest (profile, truth model, extra workflows)
    slo_p95_s: float
    tolerance: float
    duration_s: float | None
    kv_policy: KVPolicy = LRU  # the cell's KV policy (capacity under kvflow differs from lru's)

    def key(self) -> dict[str, object]:
        return {"workflow": self.label, **dict(self.trace_options), "policy": self.policy.spec,
                "profile": self.profile, "seed": self.seed, "inputs": self.inputs, "slo_p95_s": self.slo_p95_s,
                "tolerance": self.tolerance, "duration_s": self.duration_s,
                **({} if self.kv_policy == LRU else {"kv_policy": self.kv_policy.spec})}

    def id(self) -> str:
        return hashlib.sha1(json.dumps(self.key(), sort_keys=True).encode()).hexdigest()[:16]


def task_of(cell: Cell, spec: CapacitySpec) -> CapacityTask | None:
    """The capacity search a cell's row reports (None for a trace file or an offline batch)."""
    if cell.trace or cell.offline or cell.requests is not None:
        return None
    return CapacityTask(cell.label, cell.trace_options, cell.workflows, cell.policy, cell.profile, cell.seed,
                        cell.inputs, spec.slo_p95, spec.tolerance, spec.duration_s, cell.kv_policy)


def _requests_at_one_per_second(task: CapacityTask, nlist: int, n: int) -> list[Request]:
    """`n` requests of the task's workload, arriving at 1 per second (the template `at_rate` rescales)."""
    cfg = TraceConfig(tuple(task.label.split(",")), 1.0, n * 1.5 + 10, seed=task.seed, nlist=nlist,
                      **dict(task.trace_options))
    return trace_requests(cfg, WorkflowRegistry(list(task.workflows)))[:n]


def find_capacity(task: CapacityTask) -> dict[str, object]:
    """Run one search (in a worker or the driver); `calibration.capacity.Capacity.to_json()`."""
    from calibration.capacity import sim_capacity
    from calibration.workload import Template
    from hwmodel.profile import load_profile

    prof = load_profile(task.profile)
    template = Template(lambda n: _requests_at_one_per_second(task, prof.index.nlist, n))
    return sim_capacity(template, task.policy, prof, slo_p95_s=task.slo_p95_s, tolerance=task.tolerance,
                        duration_s=task.duration_s, kv_policy=task.kv_policy).to_json()


class CapacityStore:
    """DIR/capacity/<id>.json: one finished search each, written atomically."""

    def __init__(self, out: Path) -> None:
        self.dir = out / "capacity"

    def get(self, task: CapacityTask) -> dict | None:
        try:
            stored = json.loads((self.dir / f"{task.id()}.json").read_text())
        except (OSError, ValueError):
            return None
        return stored["capacity"] if stored.get("key") == json.loads(json.dumps(task.key())) else None

    def put(self, task: CapacityTask, found: dict) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        with atomic_file(self.dir / f"{task.id()}.json") as tmp:
            tmp.write_text(json.dumps({"key": task.key(), "capacity": found}, indent=1) + "\n")


def find_capacities(cells: Iterable[Cell], spec: CapacitySpec, out: Path, workers: int = 1,
                    progress: Callable[[int, int], None] = lambda done, total: None) -> dict[str, dict]:
    """Every capacity the cells' rows need, by task id: stored ones reused, the others searched
    (on `workers` processes) and stored."""
    store = CapacityStore(out)
    tasks = {t.id(): t for c in cells if (t := task_of(c, spec)) is not None}
    found = {tid: f for tid, t in tasks.items() if (f := store.get(t)) is not None}
    todo = [t for tid, t in tasks.items() if tid not in found]
    progress(len(found), len(tasks))
    if workers > 1 and len(todo) > 1:
        with ProcessPoolExecutor(max_workers=min(workers, len(todo))) as pool:
            results = zip(todo, pool.map(find_capacity, todo), strict=True)
            for task, result in results:
                store.put(task, result)
                found[task.id()] = result
                progress(len(found), len(tasks))
    else:
        for task in todo:
            found[task.id()] = result = find_capacity(task)
            store.put(task, result)
            progress(len(found), len(tasks))
    return found


class CapacityError(ValueError):
    """A load cannot become a rate: its policy sustained no rate at all."""


def _rate(load: float, rps: float) -> float:
    return float(f"{load * rps:.6g}")  # a short, stable number for the cell's key


def with_loads(cells: list[Cell], spec: CapacitySpec, capacities: dict[str, dict]) -> list[Cell]:
    """The cells, those given as loads at load x their policy's capacity."""
    out = []
    for cell in cells:
        if cell.load is not None:
            task = task_of(cell, spec)
            assert task is not None  # loads are refused with trace files and offline runs (sweepspec)
            rps = float(capacities[task.id()]["rps"])  # type: ignore[arg-type]
            if rps <= 0:
                raise CapacityError(f"{cell.label} under {cell.policy.spec} on {cell.profile}: no rate sustains"
                                    f" P95 <= {spec.slo_p95:g} s, so load {cell.load:g} has no rate")
            cell = replace(cell, rate=_rate(cell.load, rps))
        out.append(cell)
    return out


def capacity_columns(cell: Cell, spec: CapacitySpec, capacities: dict[str, dict]) -> dict[str, object]:
    """The capacity columns of a cell's row (None where the cell has no capacity)."""
    task = task_of(cell, spec)
    found = capacities.get(task.id()) if task is not None else None
    if found is None:
        return dict.fromkeys(COLUMNS)
    high = found["high"]
    return {"load": cell.load, "capacity_rps": found["rps"], "capacity_low": found["low"],
            "capacity_high": None if high is None or (isinstance(high, float) and math.isinf(high)) else high}
