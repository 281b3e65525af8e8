"""`hedra sweep`: run a spec's grid of simulations, resumably, on local processes or on Ray.

The one cell engine of the project: `hedra sweep`, `hedra demo`, `hedra figure` and the
ablation benchmark all run their cells here.

Theory of operation. `experiments.expand` lists the cells. Each finished cell is stored as
`DIR/cells/<id>.json` (its key and its row), written atomically by the driver; the id is a
hash of the cell's key (`experiments.cell`), so a rerun of the same spec skips every stored
cell and a changed spec reuses the cells it shares; cells of the same key run once. Cells
run on one of three runners, all yielding (cell, row) as cells finish: in this process (one
worker), a process pool, or Ray tasks. A row is a pure function of its cell, so the table
is the same whatever the runner, the worker count or the interruptions; only `sim_wall_s`
(the simulation's own wall time) varies. At the end the driver adds each cell's tags and
policy label and writes `DIR/sweep.parquet` (one row per cell, in grid order) and the plots
the spec asks for. A spec with `[capacity]` first finds each cell's sustainable rate
(`experiments.capacity_grid`, stored under `DIR/capacity/`), sets the rates of cells given as
loads of it, and adds the capacity columns to every row.

Ctrl-C stops the runner; the cells stored by then stay, and SweepInterrupted says so.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Generator, Iterable
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from pathlib import Path

import pandas as pd

from experiments.cell import NO_RUN_FOLDERS, Cell, CellOptions, cell_id, present, run_cell
from experiments.sweepspec import SweepSpec
from runs.outdir import MARKER, atomic_file, check_output_dir


class SweepError(RuntimeError):
    """A cell or the runner failed (a bug, or an unreachable Ray cluster; not bad input)."""


class SweepInterrupted(KeyboardInterrupt):
    """Ctrl-C ended the sweep; `done` of `total` cells are stored."""

    def __init__(self, done: int, total: int) -> None:
        super().__init__(f"{done} of {total} cells done")
        self.done, self.total = done, total


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


def run_cells(cells: list[Cell], out: Path, runner: Runner, *, options: CellOptions = NO_RUN_FOLDERS,
              progress: Callable[[int, int], None] = lambda done, total: None) -> list[dict]:
    """Run the cells not stored yet under `out` (made a sweep folder), storing each as it finishes; return every
    cell's row (with its tags and label) in grid order. Cells of the same key run once. Ctrl-C raises
    SweepInterrupted (stored cells stay)."""
    prepare_out(out)
    store = CellStore(out)
    ids = [cell_id(c) for c in cells]
    rows: dict[str, dict] = {}
    for cid, cell in zip(ids, cells, strict=True):
        if cid not in rows and (row := store.get(cell)) is not None:
            rows[cid] = row
    todo = list({cid: c for cid, c in zip(ids, cells, strict=True) if cid not in rows}.values())
    total = len(set(ids))
    progress(len(rows), total)
    finished = runner(todo, options)
    try:
        for cell, row in finished:
            store.put(cell, row)
            rows[cell_id(cell)] = row
            progress(len(rows), total)
    except KeyboardInterrupt:
        raise SweepInterrupted(len(rows), total) from None
    except Exception as exc:
        raise SweepError(f"the sweep stopped ({type(exc).__name__}: {exc}); {len(rows)} finished cells are"
                         f" kept in {store.dir}") from exc
    finally:
        finished.close()  # stops the runner's workers now, not when the generator is collected
    return [present(c, rows[cid]) for cid, c in zip(ids, cells, strict=True)]


def sweep_table(rows: Iterable[dict], baseline: str | None) -> pd.DataFrame:
    """One row per cell, in grid order, with each row's P50/P99 speedup over `baseline`
    (the baseline's latency / the row's, in the same workload: tags, workflow, trace, rate,
    trace options, profile and seed)."""
    table = pd.DataFrame(list(rows))
    options = [c for c in table.columns if c.startswith("opt_")]
    first = list(table.columns[:table.columns.get_loc("seed") + 1])
    table = table[[c for c in first if c not in options] + options
                  + [c for c in table.columns if c not in first and c not in options]]
    if baseline is None or table.empty:
        return table
    match = [*table.columns[:table.columns.get_loc("policy")], "profile", "seed"]
    keys = table[match].astype(object)
    if "load" in table.columns:  # cells given as loads run at each policy's own rate: match them by load
        given = table["load"].notna()
        keys.loc[given, "rate"] = [("load", x) for x in table.loc[given, "load"]]
    workload = pd.Series([repr(w) for w in keys.itertuples(index=False)], index=table.index)
    base = table[table["policy"] == baseline].assign(_w=workload).drop_duplicates("_w").set_index("_w")
    table[f"p50_x_vs_{baseline}"] = workload.map(base["p50_s"]).astype(float) / table["p50_s"]
    table[f"p99_x_vs_{baseline}"] = workload.map(base["p99_s"]).astype(float) / table["p99_s"]
    return table


def write_table(table: pd.DataFrame, out: Path) -> Path:
    path = out / "sweep.parquet"
    with atomic_file(path) as tmp:
        table.to_parquet(tmp, index=False)
    return path


def default_workers() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def run_sweep(spec: SweepSpec, cells: list[Cell], out: Path, runner: Runner,
              progress: Callable[[int, int], None] = lambda done, total: None, *, capacity_workers: int = 1,
              capacity_progress: Callable[[int, int], None] = lambda done, total: None) -> pd.DataFrame:
    """Run a validated spec's cells into `out` and write sweep.parquet and the plots; with a
    `[capacity]` table, first the capacity searches (on `capacity_workers` processes)."""
    from experiments.study_plots import sweep_plots

    started = time.perf_counter()
    options = CellOptions(str(out / "runs") if spec.runs or spec.timeline else "", spec.timeline)
    capacities: dict[str, dict] = {}
    if spec.capacity is not None:
        from experiments.capacity_grid import CapacityError, capacity_columns, find_capacities, with_loads

        prepare_out(out)
        try:
            capacities = find_capacities(cells, spec.capacity, out, capacity_workers, capacity_progress)
            cells = with_loads(cells, spec.capacity, capacities)
        except KeyboardInterrupt:
            raise SweepInterrupted(0, len(cells)) from None
        except CapacityError as exc:
            raise SweepError(str(exc)) from None
    rows = run_cells(cells, out, runner, options=options, progress=progress)
    if spec.capacity is not None:
        rows = [{**row, **capacity_columns(cell, spec.capacity, capacities)}
                for cell, row in zip(cells, rows, strict=True)]
    table = sweep_table(rows, spec.baseline or spec.policy_specs()[0])
    write_table(table, out)
    sweep_plots(table, out, spec.plots, spec.baseline or spec.policy_specs()[0])
    meta = {"name": spec.name, "cells": len(table), "wall_s": time.perf_counter() - started,
            "spec": spec.model_dump(mode="json")}
    with atomic_file(out / "sweep.json") as tmp:
        tmp.write_text(json.dumps(meta, indent=2) + "\n")
    return table
