"""`hedra sweep`: run a spec's grid of simulations, resumably, on local processes or on Ray.

Theory of operation. `sweepspec.expand` lists the cells. Each finished cell is stored as
`DIR/cells/<id>.json` (its key and its table row), written atomically by the driver; the id
is a hash of the cell's key, so a rerun of the same spec skips every stored cell and a
changed spec reuses the cells it shares. Cells run on one of three runners, all yielding
(cell, row) as cells finish: in this process (one worker), a process pool, or Ray tasks;
a worker keeps the few traces and profiles it used last, so a trace shared by many cells
(one per policy) is generated once per worker. A row is a pure function of its cell, so
the table is the same whatever the runner, the worker count or the interruptions; only
`sim_wall_s` (the simulation's own wall time) varies. At the end the driver writes
`DIR/sweep.parquet` (one row per cell, in grid order) and the plots the spec asks for.

Ctrl-C stops the runner; the cells stored by then stay, and SweepInterrupted says so.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Generator, Iterable
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from experiments.sweepspec import Cell, SweepSpec
from hwmodel.latency import LatencyModel
from hwmodel.profile import Profile, load_profile
from ragraph.graph import Request
from ragraph.work import LANES
from ragraph.workflows import WorkflowRegistry
from runs.outdir import MARKER, atomic_file, check_output_dir
from runs.outputs import write_run
from runs.run import simulate
from traces.generate import TraceConfig, generate_trace
from traces.schema import TraceRequest, load_trace, to_request

CACHED_TRACES = 4  # traces a worker keeps (cells are grouped so that a trace's cells are adjacent)
QUANTILES = np.linspace(0, 100, 101)  # the latency CDF a row keeps (for CDF plots without the records)


class SweepError(RuntimeError):
    """A cell or the runner failed (a bug, or an unreachable Ray cluster; not bad input)."""


class SweepInterrupted(KeyboardInterrupt):
    """Ctrl-C ended the sweep; `done` of `total` cells are stored."""

    def __init__(self, done: int, total: int) -> None:
        super().__init__(f"{done} of {total} cells done")
        self.done, self.total = done, total


@dataclass(frozen=True, slots=True)
class CellOptions:
    """How every cell of one sweep runs (the same for all its cells)."""

    runs_dir: str = ""  # where to keep each cell's run folder ("" keeps none)
    timeline: bool = False  # with runs_dir: also write timeline.json


# --- one cell, in a worker ------------------------------------------------------------------

_traces: OrderedDict[tuple, list[Request]] = OrderedDict()
_profiles: dict[str, tuple[Profile, LatencyModel]] = {}


def _profile(ref: str) -> tuple[Profile, LatencyModel]:
    if ref not in _profiles:
        prof = load_profile(ref)
        _profiles[ref] = (prof, LatencyModel(prof))
    return _profiles[ref]


def trace_requests(cfg: TraceConfig, registry: WorkflowRegistry) -> list[Request]:
    """Generate a trace in memory and turn it into requests (validated as a file would be)."""
    return [to_request(TraceRequest.model_validate(row), registry) for row in generate_trace(cfg, registry)]


def _requests(cell: Cell, nlist: int) -> list[Request]:
    """The cell's requests, from this worker's cache when a neighbouring cell made them."""
    key = (*cell.trace_key(), nlist)
    if key in _traces:
        _traces.move_to_end(key)
        return _traces[key]
    registry = WorkflowRegistry()
    if cell.trace:
        reqs = load_trace(cell.trace, registry, nlist=nlist)
    else:
        cfg = TraceConfig(tuple(cell.label.split(",")), cell.rate, cell.duration_s, seed=cell.seed, nlist=nlist,
                          **dict(cell.trace_options))
        reqs = trace_requests(cfg, registry)
    _traces[key] = reqs
    while len(_traces) > CACHED_TRACES:
        _traces.popitem(last=False)
    return reqs


def run_cell(cell: Cell, options: CellOptions = CellOptions()) -> dict[str, object]:
    """Simulate one cell and return its table row; called in a worker (or the driver)."""
    prof, latency = _profile(cell.profile)
    reqs = _requests(cell, prof.index.nlist)
    keep = bool(options.runs_dir)
    run = simulate(reqs, cell.policy, prof, seed=cell.seed, timeline=keep and options.timeline, latency=latency,
                   meta={"trace": cell.trace or f"{cell.label}@{cell.rate:g}/s seed {cell.seed}"})
    if keep:
        write_run(Path(options.runs_dir) / cell_id(cell), run.result.records, run.summary,
                  run.result.timeline if options.timeline else None)
    return row_of(cell, run.summary, [r.latency_s for r in run.result.records if r.status == "completed"])


def row_of(cell: Cell, summary: dict, latencies: list[float]) -> dict[str, object]:
    """A table row: the cell's parameters, resolved options, latency, throughput, utilisation."""
    lat = summary["latency_s"]
    util = summary["lane_utilization"]
    row: dict[str, object] = {
        "workflow": cell.label, "trace": cell.trace, "rate": cell.rate, "duration_s": cell.duration_s,
        "policy": cell.policy.spec, "policy_name": cell.policy.name, "profile": summary["profile"],
        "seed": cell.seed, **{f"opt_{k}": v for k, v in summary["policy_options"].items()},
        "requests": summary["requests"], "completed": summary["completed"], "failed": summary["failed"],
        **{f"{k}_s": lat[k] for k in ("mean", "p50", "p95", "p99")},
        "throughput_rps": summary["throughput_rps"], **{f"util_{lane}": util.get(lane, 0.0) for lane in LANES},
        "sim_s": summary["sim_s"], "sim_wall_s": summary["wall_s"],
        "latency_cdf_s": [float(q) for q in np.percentile(latencies, QUANTILES)] if latencies else [],
    }
    return row


def _quiet_worker() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the driver's to handle


# --- runners: each yields (cell, row) as cells finish ------------------------------------------

Finished = Generator[tuple[Cell, dict], None, None]
Runner = Callable[[list[Cell], CellOptions], Finished]


def inline_runner(cells: list[Cell], options: CellOptions) -> Finished:
    for cell in cells:
        yield cell, run_cell(cell, options)


def pool_runner(workers: int) -> Runner:
    """Cells on `workers` local processes, one cell at a time each. A process that finishes a
    cell takes the next of the same trace (it has that trace cached), else the first trace no
    other process is on, else the trace with the most cells left: each trace is generated
    about once, and no process idles while cells are left."""

    def run(cells: list[Cell], options: CellOptions) -> Finished:
        groups: OrderedDict[tuple, deque[Cell]] = OrderedDict()
        for cell in cells:
            groups.setdefault(cell.trace_key(), deque()).append(cell)
        pools = [ProcessPoolExecutor(max_workers=1, initializer=_quiet_worker) for _ in range(min(workers, len(cells)))]
        on: list[tuple | None] = [None] * len(pools)  # the trace each process works on
        running: dict[Future, tuple[int, Cell]] = {}

        def submit(i: int) -> None:
            if on[i] not in groups:
                free = [k for k in groups if k not in on]
                if not groups:
                    return
                on[i] = free[0] if free else max(groups, key=lambda k: len(groups[k]))
            key = on[i]
            cell = groups[key].popleft()
            if not groups[key]:
                del groups[key]
            running[pools[i].submit(run_cell, cell, options)] = (i, cell)

        try:
            for i in range(len(pools)):
                submit(i)
            while running:
                done, _ = wait(running, return_when=FIRST_COMPLETED)
                for fut in done:
                    i, cell = running.pop(fut)
                    row = fut.result()
                    submit(i)  # before the driver stores this one: the process stays busy
                    yield cell, row
        finally:
            for pool in pools:
                procs = list((getattr(pool, "_processes", None) or {}).values())
                pool.shutdown(wait=False, cancel_futures=True)
                if running:  # interrupted: a running cell need not finish
                    for proc in procs:
                        proc.terminate()
    return run


def ray_runner(address: str, workers: int) -> Runner:
    """Cells as Ray tasks: on the instance this process already started, on a new local
    instance of `workers` CPUs (address "local"), or on the cluster at `address` ("auto",
    "ray://head:10001")."""

    def run(cells: list[Cell], options: CellOptions) -> Finished:
        import ray

        started = not ray.is_initialized()
        if started:
            local = {"num_cpus": workers} if address == "local" else {}
            ray.init(address=address, include_dashboard=False, log_to_driver=False, **local)
        task = ray.remote(num_cpus=1)(run_cell)
        pending = {task.remote(c, options): c for c in cells}
        try:
            while pending:
                done, _ = ray.wait(list(pending), num_returns=1)
                for ref in done:
                    yield pending.pop(ref), ray.get(ref)
        finally:
            for ref in pending:
                ray.cancel(ref, force=True)
            if started:
                ray.shutdown()
    return run


# --- the driver ---------------------------------------------------------------------------

def cell_id(cell: Cell) -> str:
    return hashlib.sha1(json.dumps(cell.key(), sort_keys=True).encode()).hexdigest()[:16]


class CellStore:
    """DIR/cells/<id>.json: one finished cell each, written atomically."""

    def __init__(self, out: Path) -> None:
        self.dir = out / "cells"

    def get(self, cell: Cell) -> dict | None:
        path = self.dir / f"{cell_id(cell)}.json"
        try:
            stored = json.loads(path.read_text())
        except (OSError, ValueError):
            return None
        return stored["row"] if stored.get("key") == json.loads(json.dumps(cell.key())) else None

    def put(self, cell: Cell, row: dict) -> None:
        with atomic_file(self.dir / f"{cell_id(cell)}.json") as tmp:
            tmp.write_text(json.dumps({"key": cell.key(), "row": row}) + "\n")


def prepare_out(out: Path) -> None:
    """Create (or reuse) a sweep folder: absent, empty, or one Hedra wrote; refuses anything else."""
    if not (out.is_dir() and not any(out.iterdir())):
        check_output_dir(out)
    (out / "cells").mkdir(parents=True, exist_ok=True)
    marker = out / MARKER
    if not marker.exists():
        marker.write_text("written by hedra sweep; finished cells under cells/ are reused by a rerun\n")


def run_cells(cells: list[Cell], out: Path, runner: Runner, *, options: CellOptions = CellOptions(),
              progress: Callable[[int, int], None] = lambda done, total: None) -> list[dict]:
    """Run the cells not stored yet under `out` (made a sweep folder), storing each as it finishes; return every
    cell's row in grid order. Ctrl-C raises SweepInterrupted (stored cells stay)."""
    prepare_out(out)
    store = CellStore(out)
    rows: dict[Cell, dict] = {}
    for cell in cells:
        if (row := store.get(cell)) is not None:
            rows[cell] = row
    todo = list(dict.fromkeys(c for c in cells if c not in rows))
    progress(len(rows), len(set(cells)))
    finished = runner(todo, options)
    try:
        for cell, row in finished:
            store.put(cell, row)
            rows[cell] = row
            progress(len(rows), len(set(cells)))
    except KeyboardInterrupt:
        raise SweepInterrupted(len(rows), len(set(cells))) from None
    except Exception as exc:
        raise SweepError(f"the sweep stopped ({type(exc).__name__}: {exc}); {len(rows)} finished cells are"
                         f" kept in {store.dir}") from exc
    finally:
        finished.close()  # stops the runner's workers now, not when the generator is collected
    return [rows[c] for c in cells]


def sweep_table(rows: Iterable[dict], baseline: str | None) -> pd.DataFrame:
    """One row per cell, in grid order, with each row's P50/P99 speedup over `baseline`
    (the baseline's latency / the row's, at the same workflow, trace, rate, profile and seed)."""
    table = pd.DataFrame(list(rows))
    options = [c for c in table.columns if c.startswith("opt_")]
    first = list(table.columns[:table.columns.get_loc("seed") + 1])
    table = table[[c for c in first if c not in options] + options
                  + [c for c in table.columns if c not in first and c not in options]]
    if baseline is None or table.empty:
        return table
    match = ["workflow", "trace", "rate", "profile", "seed"]
    base = table[table["policy"] == baseline].set_index(match)[["p50_s", "p99_s"]]
    ratio = base.rename(columns={"p50_s": "base_p50", "p99_s": "base_p99"})
    joined = table.join(ratio, on=match)
    table[f"p50_x_vs_{baseline}"] = joined["base_p50"] / table["p50_s"]
    table[f"p99_x_vs_{baseline}"] = joined["base_p99"] / table["p99_s"]
    return table


def write_table(table: pd.DataFrame, out: Path) -> Path:
    path = out / "sweep.parquet"
    with atomic_file(path) as tmp:
        table.to_parquet(tmp, index=False)
    return path


def default_workers() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def run_sweep(spec: SweepSpec, cells: list[Cell], out: Path, runner: Runner,
              progress: Callable[[int, int], None] = lambda done, total: None) -> pd.DataFrame:
    """Run a validated spec's cells into `out` and write sweep.parquet and the plots."""
    from experiments.study_plots import sweep_plots

    started = time.perf_counter()
    options = CellOptions(str(out / "runs") if spec.runs or spec.timeline else "", spec.timeline)
    rows = run_cells(cells, out, runner, options=options, progress=progress)
    table = sweep_table(rows, spec.baseline or spec.policy_specs()[0])
    write_table(table, out)
    sweep_plots(table, out, spec.plots, spec.baseline or spec.policy_specs()[0])
    meta = {"name": spec.name, "cells": len(table), "wall_s": time.perf_counter() - started,
            "spec": spec.model_dump(mode="json")}
    with atomic_file(out / "sweep.json") as tmp:
        tmp.write_text(json.dumps(meta, indent=2) + "\n")
    return table
