"""Cells of a study: one synthetic trace simulated under several policies, run on a process pool.

A `Cell` names a trace (workflows, rate, nprobe, seed, how many arrivals) and the policies
to simulate it under; `run_cell` generates the trace once and returns one row per policy.
`run_cells` spreads cells over a local process pool. It is deliberately small and
self-contained (cells in, rows out) so that a figure can later run its cells through the
sweep engine instead.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass

from hwmodel.latency import LatencyModel
from hwmodel.profile import load_profile
from ragraph.graph import Op, Request
from ragraph.policies import PolicyChoice
from ragraph.workflows import Step, WorkflowRegistry, WorkflowSpec
from runs.run import simulate
from traces.generate import TraceConfig, generate_trace
from traces.schema import TraceRequest, to_request

# HedraRAG's Fig. 16 measures retrieval alone: a request is one search, no generation.
RETRIEVAL_ONLY = WorkflowSpec(name="retrieval-only", description="R (retrieval alone, no generation)",
                              head=(Step(op=Op.RETRIEVE),))


@dataclass(frozen=True, slots=True)
class Cell:
    """One trace and the policies it is simulated under."""

    workflows: tuple[str, ...]  # mixed in equal shares
    rate: float  # mean Poisson arrivals per second (offline: only spaces the generated trace)
    nprobe: int  # IVF lists searched per retrieval
    policies: tuple[tuple[str, PolicyChoice], ...]  # (series label, validated policy)
    duration_s: float | None = None  # seconds of arrivals; None: `requests` arrivals
    requests: int | None = None  # exactly this many requests (the first ones generated)
    offline: bool = False  # every request arrives at t = 0 (a batch run)
    seed: int = 2025  # the artifact's seed
    profile: str | None = None  # profile name or file (None: the default)
    tags: tuple[tuple[str, object], ...] = ()  # copied into every row (e.g. panel)


def cell_requests(cell: Cell, nlist: int) -> list[Request]:
    """The cell's trace, generated in memory and validated as a trace file would be."""
    registry = WorkflowRegistry([RETRIEVAL_ONLY])
    if cell.duration_s is not None:
        duration = cell.duration_s
    else:  # enough arrivals for `requests` with near certainty, then cut
        assert cell.requests is not None, "a cell needs duration_s or requests"
        duration = (cell.requests + 6 * math.sqrt(cell.requests) + 8) / cell.rate
    cfg = TraceConfig(cell.workflows, cell.rate, duration, seed=cell.seed, nprobe=cell.nprobe, nlist=nlist)
    rows = generate_trace(cfg, registry)
    if cell.requests is not None:
        rows = rows[: cell.requests]
    if cell.offline:
        rows = [{**row, "arrival_s": 0.0} for row in rows]
    return [to_request(TraceRequest.model_validate(row), registry) for row in rows]


def run_cell(cell: Cell) -> list[dict[str, object]]:
    """Simulate the cell's trace under each of its policies; one row per policy."""
    profile = load_profile(cell.profile)
    latency = LatencyModel(profile)
    requests = cell_requests(cell, profile.index.nlist)
    rows = []
    for label, choice in cell.policies:
        s = simulate(requests, choice, profile, seed=cell.seed, timeline=False, latency=latency).summary
        lat = s["latency_s"]
        rows.append({**dict(cell.tags), "workflow": "+".join(cell.workflows), "nprobe": cell.nprobe,
                     "rate": cell.rate, "policy": label, "spec": choice.spec, "requests": s["requests"],
                     "completed": s["completed"], "mean_s": lat["mean"], "p50_s": lat["p50"],
                     "p95_s": lat["p95"], "p99_s": lat["p99"], "makespan_s": s["sim_s"],
                     "throughput_rps": s["throughput_rps"], "wall_s": s["wall_s"]})
    return rows


def run_cells(cells: Sequence[Cell], workers: int | None = None,
              progress: Callable[[int, int], None] = lambda _done, _total: None) -> list[dict[str, object]]:
    """Run every cell (on `workers` processes; 1: in this process) and return their rows in
    the cells' order. `progress(done, total)` is called after each cell."""
    workers = max(1, min(workers or os.cpu_count() or 1, len(cells)))
    results: list[list[dict[str, object]]] = [[] for _ in cells]
    if workers == 1:
        for i, cell in enumerate(cells):
            results[i] = run_cell(cell)
            progress(i + 1, len(cells))
    else:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            futures = {pool.submit(run_cell, cell): i for i, cell in enumerate(cells)}
            for done, future in enumerate(as_completed(futures), start=1):
                results[futures[future]] = future.result()
                progress(done, len(cells))
    return [row for rows in results for row in rows]
