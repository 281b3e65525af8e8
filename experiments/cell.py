"""One cell of a sweep: what it is (`Cell`), its requests, its simulation and its table row.

A cell is one simulation: a workload (synthetic arrivals of some workflows at a rate, or a
trace file), a validated policy, a profile and a seed, and nothing else a worker needs. Its
`key()` is its identity in a sweep folder's store; its row (`row_of`) is the one row schema
of every study that runs cells (`hedra sweep`, `hedra demo`, `hedra figure`, the ablation
benchmark): the cell's parameters, what the run measured, and what the policy's techniques
did. Presentation (a policy's label, a workload's tags) rides on the cell but is neither
part of its key nor of its stored row: the driver adds it to the table (`present`).

A worker keeps the few traces and profiles it used last, so a trace shared by many cells
(one per policy) is generated once per worker.
"""

from __future__ import annotations

import hashlib
import json
import statistics
from collections import OrderedDict
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from hwmodel.latency import LatencyModel
from hwmodel.profile import Profile, load_profile
from ragraph.graph import Request
from ragraph.kvpolicy import DEFAULT_KV_POLICY, KVPolicy
from ragraph.policies import PolicyChoice
from ragraph.records import RequestRecord
from ragraph.work import LANES
from ragraph.workflows import WorkflowRegistry, WorkflowSpec
from runs.outputs import write_run
from runs.run import simulate
from runs.summary import KV_COLUMNS, QUALITY_COLUMNS, table_columns
from traces.generate import TraceConfig, generate_trace
from traces.schema import TraceRequest, load_trace, to_request

ROW_SCHEMA = 4  # in every key: a stored cell of another row schema is run again, never reused
CACHED_TRACES = 4  # traces a worker keeps (cells are grouped so that a trace's cells are adjacent)
QUANTILES = np.linspace(0, 100, 101)  # the latency CDF a row keeps (for CDF plots without the records)
TRACE_OPTIONS = ("arrival", "cv", "nprobe", "k", "zipf", "overlap", "iterations")  # of a synthetic trace
ROW_COLUMNS = ("label", "workflow", "trace", "rate", "duration_s", "offline", *TRACE_OPTIONS, "policy", "policy_name",
               "profile", "seed", "requests", "completed", "failed", "mean_s", "p50_s", "p95_s", "p99_s",
               "throughput_rps", "sim_s", "sim_wall_s", "retrieval_mean_s", *QUALITY_COLUMNS, *KV_COLUMNS,
               "latency_cdf_s", "load", "capacity_rps", "capacity_low", "capacity_high")  # besides ROW_PREFIXES
LRU = KVPolicy(DEFAULT_KV_POLICY)
ROW_PREFIXES = ("opt_", "util_", "tech_", "p50_x_vs_", "p99_x_vs_")  # policy options, lanes, techniques, speedups


@dataclass(frozen=True, slots=True)
class Cell:
    """One simulation of the grid; everything a worker needs to run it (and nothing else)."""

    label: str  # the workflow name(s), comma-separated (an equal mix), or the trace file's stem
    trace: str  # absolute trace file path ("" for synthetic arrivals)
    rate: float  # req/s of synthetic arrivals; a trace file's measured rate
    duration_s: float  # seconds of synthetic arrivals (0 for a trace file)
    trace_options: tuple[tuple[str, object], ...]  # TRACE_OPTIONS of a synthetic trace, as (name, value)
    policy: PolicyChoice  # the policy, validated
    profile: str  # a shipped profile's name, or an absolute profile path
    seed: int  # the trace's seed and the simulation's
    inputs: str = ""  # digest of the files it reads: profile, trace file or truth model, extra workflows
    requests: int | None = None  # exactly the first N requests generated (None: every arrival of duration_s)
    offline: bool = False  # every request arrives at t = 0 (a batch run)
    workflows: tuple[WorkflowSpec, ...] = ()  # extra workflows (a spec's workflow_files) its trace may name
    policy_label: str = ""  # the policy's name in tables and figures ("": its spec); not part of the key
    tags: tuple[tuple[str, object], ...] = ()  # columns copied into its table row (e.g. panel); not in the key
    # a fraction of its policy's capacity (a workload's `loads`): `rate` is 0 until the sweep has found
    # that capacity (experiments.capacity_grid.with_loads), then load x capacity
    load: float | None = None
    kv_policy: KVPolicy = LRU  # the KV-cache policy, an axis beside the policy

    def trace_key(self) -> tuple:
        """What makes two cells run the same requests (cells differing only in policy share it)."""
        return (self.trace, self.label, self.rate, self.duration_s, self.trace_options, self.seed, self.inputs,
                self.requests, self.offline)

    def key(self) -> dict[str, object]:
        """What makes two cells the same simulation (the stored cell's identity)."""
        return {"row_schema": ROW_SCHEMA, "trace": self.trace, "workflow": self.label, "rate": self.rate,
                "duration_s": self.duration_s, "requests": self.requests, "offline": self.offline,
                **dict(self.trace_options), "policy": self.policy.spec, "profile": self.profile, "seed": self.seed,
                "inputs": self.inputs, "kv_policy": self.kv_policy.spec,
                **({} if self.load is None else {"load": self.load})}


def cell_id(cell: Cell) -> str:
    """The stored cell's file name: a hash of its key."""
    return hashlib.sha1(json.dumps(cell.key(), sort_keys=True).encode()).hexdigest()[:16]


@dataclass(frozen=True, slots=True)
class CellOptions:
    """How every cell of one sweep runs (the same for all its cells)."""

    runs_dir: str = ""  # where to keep each cell's run folder ("" keeps none)
    timeline: bool = False  # with runs_dir: also write timeline.json


NO_RUN_FOLDERS = CellOptions()  # the default: rows only


# --- a cell's requests, in a worker ---------------------------------------------------------------

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


def trace_config(cell: Cell, nlist: int) -> TraceConfig:
    """The synthetic trace of a cell without a trace file."""
    return TraceConfig(tuple(cell.label.split(",")), cell.rate, cell.duration_s, seed=cell.seed, nlist=nlist,
                       **dict(cell.trace_options))


def cell_requests(cell: Cell, nlist: int) -> list[Request]:
    """The cell's requests: its trace file's, or generated (the first `requests` of them), all at
    t = 0 when offline."""
    registry = WorkflowRegistry(list(cell.workflows))
    if cell.trace:
        reqs = load_trace(cell.trace, registry, nlist=nlist)
        return [replace(r, arrival_s=0.0) for r in reqs] if cell.offline else reqs
    rows = generate_trace(trace_config(cell, nlist), registry)
    if cell.requests is not None:
        rows = rows[: cell.requests]
    if cell.offline:
        rows = [{**row, "arrival_s": 0.0} for row in rows]
    return [to_request(TraceRequest.model_validate(row), registry) for row in rows]


def _requests(cell: Cell, nlist: int) -> list[Request]:
    """The cell's requests, from this worker's cache when a neighbouring cell made them."""
    key = (*cell.trace_key(), nlist)
    if key in _traces:
        _traces.move_to_end(key)
        return _traces[key]
    reqs = cell_requests(cell, nlist)
    _traces[key] = reqs
    while len(_traces) > CACHED_TRACES:
        _traces.popitem(last=False)
    return reqs


# --- a cell's run and row ----------------------------------------------------------------------

def run_cell(cell: Cell, options: CellOptions = NO_RUN_FOLDERS) -> dict[str, object]:
    """Simulate one cell and return its row; called in a worker (or the driver)."""
    prof, latency = _profile(cell.profile)
    reqs = _requests(cell, prof.index.nlist)
    keep = bool(options.runs_dir)
    run = simulate(reqs, cell.policy, prof, seed=cell.seed, timeline=keep and options.timeline, latency=latency,
                   meta={"trace": cell.trace or f"{cell.label}@{cell.rate:g}/s seed {cell.seed}"},
                   kv_policy=cell.kv_policy)
    if keep:
        write_run(Path(options.runs_dir) / cell_id(cell), run.result.records, run.summary,
                  run.result.timeline if options.timeline else None)
    return row_of(cell, run.summary, run.result.records, run.result.techniques)


def _technique_columns(techniques: dict[str, object]) -> dict[str, object]:
    """`tech_<technique>_<figure>` for each number a technique reported (e.g. tech_speculation_accuracy)."""
    out: dict[str, object] = {}
    for name, report in techniques.items():
        for k, v in (report.items() if isinstance(report, dict) else ()):
            if isinstance(v, int | float) and not isinstance(v, bool):
                out[f"tech_{name}_{k}"] = v
    return out


def row_of(cell: Cell, summary: dict, records: list[RequestRecord], techniques: dict[str, object]) -> dict[str, object]:
    """The row schema: the cell's parameters (its KV policy before its policy: speedups over the
    baseline policy compare cells of one KV policy), resolved options, latency, throughput,
    utilisation, mean retrieval time, quality and KV cache (`runs.summary.table_columns`), what the techniques
    did and the latency CDF."""
    lat = summary["latency_s"]
    util = summary["lane_utilization"]
    done = [r for r in records if r.status == "completed"]
    retrieval = [r.retrieval_s / r.retrieve_nodes for r in done if r.retrieve_nodes]
    latencies = [r.latency_s for r in done]
    return {
        "workflow": cell.label, "trace": cell.trace, "rate": cell.rate, "duration_s": cell.duration_s,
        "offline": cell.offline, **dict(cell.trace_options), "kv_policy": cell.kv_policy.spec,
        "policy": cell.policy.spec, "policy_name": cell.policy.name, "profile": summary["profile"],
        "seed": cell.seed, **{f"opt_{k}": v for k, v in summary["policy_options"].items()},
        "requests": summary["requests"], "completed": summary["completed"], "failed": summary["failed"],
        **{f"{k}_s": lat[k] for k in ("mean", "p50", "p95", "p99")},
        "throughput_rps": summary["throughput_rps"], **{f"util_{lane}": util.get(lane, 0.0) for lane in LANES},
        "sim_s": summary["sim_s"], "sim_wall_s": summary["wall_s"],
        "retrieval_mean_s": statistics.fmean(retrieval) if retrieval else None,
        **table_columns(summary),
        **_technique_columns(techniques),
        "latency_cdf_s": [float(q) for q in np.percentile(latencies, QUANTILES)] if latencies else [],
    }


def present(cell: Cell, row: dict[str, object]) -> dict[str, object]:
    """A stored row as the table shows it: the workload's tags first, the policy's label after its spec."""
    out: dict[str, object] = dict(cell.tags)
    for k, v in row.items():
        out[k] = v
        if k == "policy":
            out["label"] = cell.policy_label or cell.policy.spec
    return out
