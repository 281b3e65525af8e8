"""Sweep specs: a TOML file declaring a grid of simulations, validated before anything runs.

A spec crosses workloads (a workflow, or an equal mix of several, at a list of Poisson
rates; or a trace file) with policy specs, profiles and seeds:

    duration_s = 60                      # seconds of arrivals per synthetic trace
    seeds = [0, 1]                       # each seed: the trace's and the simulation's
    profiles = ["analytic-h100-llama8b-ivf4096"]
    policies = ["flashrag", "hedra", "hedra:no-wavefront",
                { name = "hedra", grid = { chunk = [4, 16] } }]  # hedra:chunk=4, hedra:chunk=16
    baseline = "flashrag"                # speedups in the table and the speedup plot
    plots = ["latency-vs-rate", "cdf"]

    [[workload]]
    workflow = "irg"
    rates = [2, 4, 8]

    [[workload]]
    trace = "traces/mine.jsonl"          # relative to the spec file

Every key is checked (unknown keys refused); every policy spec is validated with
`parse_policy`, every profile loaded, every workflow looked up, every trace file read. A
fault raises SpecError with one line naming the file and the field, e.g.
`spec.toml: field policies[2]: policy 'hedra': option chunk: ...`.
"""

from __future__ import annotations

import hashlib
import itertools
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from hwmodel.profile import PROFILE_DIR, ProfileError, load_profile
from ragraph.policies import PolicyChoice, PolicyError, parse_policy
from ragraph.workflows import WorkflowError, WorkflowRegistry
from traces.schema import TraceError, load_trace

Plot = Literal["latency-vs-rate", "cdf", "utilisation", "speedup"]  # drawn by experiments.study_plots
Positive = Annotated[float, Field(gt=0, lt=1e6, allow_inf_nan=False)]


class SpecError(ValueError):
    """A sweep spec that cannot run (message: `FILE: field F: what is wrong`)."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Workload(_Strict):
    """One `[[workload]]`: synthetic arrivals of `workflow` at each of `rates`, or a trace file."""

    workflow: str | None = None  # a name, or several comma-separated (an equal mix)
    rates: list[Positive] | None = Field(None, min_length=1)  # req/s, one cell each
    trace: str | None = None  # a trace file (JSON Lines), instead of workflow + rates
    duration_s: Positive | None = None  # overrides the spec's duration_s
    arrival: Literal["poisson", "gamma"] = "poisson"
    cv: Positive = 1.0  # gap coefficient of variation (gamma)
    nprobe: int = Field(256, ge=1)  # IVF lists per retrieval (<= the profile's nlist)
    k: int = Field(1, ge=1)
    zipf: float = Field(0.8, ge=0, allow_inf_nan=False)
    overlap: float = Field(0.5, ge=0, le=1)
    iterations: int | None = Field(None, ge=0)

    @model_validator(mode="after")
    def _one_source(self) -> Workload:
        if (self.trace is None) == (self.workflow is None):
            raise ValueError("give either workflow (with rates) or trace")
        if self.workflow is not None and not self.rates:
            raise ValueError("a workflow needs rates, e.g. rates = [2, 4, 8]")
        if self.trace is not None and self.rates:
            raise ValueError("a trace file has its own arrivals; leave rates out")
        return self


class PolicyGrid(_Strict):
    """`{ name = "hedra", grid = { chunk = [4, 16] } }`: one policy spec per combination."""

    name: str  # a policy spec, options allowed: "hedra:no-reorder"
    grid: dict[str, list[int | float | bool | str]] = Field(default_factory=dict)

    def specs(self) -> list[str]:
        keys = list(self.grid)
        out = []
        for values in itertools.product(*(self.grid[k] for k in keys)):
            pairs = zip(keys, values, strict=True)
            opts = ",".join(f"{k}={str(v).lower() if isinstance(v, bool) else v}" for k, v in pairs)
            out.append(f"{self.name}{',' if ':' in self.name else ':'}{opts}" if opts else self.name)
        return out


class SweepSpec(_Strict):
    """The whole spec file; `workflows` + `rates` at the top level is a shorthand for one
    workload per workflow."""

    name: str = "sweep"
    duration_s: Positive = 60.0
    seeds: list[int] = Field([0], min_length=1)
    profiles: list[str] = Field(["analytic-h100-llama8b-ivf4096"], min_length=1)
    policies: list[str | PolicyGrid] = Field(min_length=1)
    baseline: str | None = None  # a policy spec of the grid; default: the first
    workflows: list[str] = Field(default_factory=list)
    rates: list[Positive] = Field(default_factory=list)
    workload: list[Workload] = Field(default_factory=list)
    plots: list[Plot] = Field(default_factory=lambda: ["latency-vs-rate"])
    runs: bool = False  # keep each cell's run folder (requests.parquet, summary.json) under runs/
    timeline: bool = False  # ... and its timeline.json (slow; for a few cells)

    @model_validator(mode="after")
    def _has_workloads(self) -> SweepSpec:
        if bool(self.workflows) != bool(self.rates):
            raise ValueError("workflows and rates go together (or use [[workload]] tables)")
        if not self.workflows and not self.workload:
            raise ValueError("no workload: give workflows + rates, or [[workload]] tables")
        return self

    def workloads(self) -> list[Workload]:
        """The [[workload]] tables, after those of the top-level shorthand."""
        return [Workload(workflow=w, rates=self.rates) for w in self.workflows] + list(self.workload)

    def policy_specs(self) -> list[str]:
        """Every policy spec of the grid, in order, without repeats."""
        out: list[str] = []
        for p in self.policies:
            out += [p] if isinstance(p, str) else p.specs()
        return list(dict.fromkeys(out))


@dataclass(frozen=True, slots=True)
class Cell:
    """One simulation of the grid; everything a worker needs to run it (and nothing else)."""

    label: str  # the workflow name(s), or the trace file's stem
    trace: str  # absolute trace file path ("" for synthetic arrivals)
    rate: float  # req/s of synthetic arrivals; a trace file's measured rate
    duration_s: float  # seconds of synthetic arrivals (0 for a trace file)
    trace_options: tuple[tuple[str, object], ...]  # arrival, cv, nprobe, k, zipf, overlap, iterations
    policy: PolicyChoice  # the policy, validated
    profile: str  # a shipped profile's name, or an absolute profile path
    seed: int  # the trace's seed and the simulation's
    inputs: str = ""  # digest of the profile's and the trace file's contents (a changed file is a new cell)

    def trace_key(self) -> tuple:
        """What makes two cells run the same requests (cells differing only in policy share it)."""
        return self.trace, self.label, self.rate, self.duration_s, self.trace_options, self.seed, self.inputs

    def key(self) -> dict[str, object]:
        """What makes two cells the same simulation (the stored cell's identity)."""
        return {"trace": self.trace, "workflow": self.label, "rate": self.rate, "duration_s": self.duration_s,
                **dict(self.trace_options), "policy": self.policy.spec, "profile": self.profile, "seed": self.seed,
                "inputs": self.inputs}


def _fail(path: Path, field: str, msg: str) -> SpecError:
    return SpecError(f"{path}: field {field}: {msg}")


def _loc(loc: tuple) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part not in ("str", "PolicyGrid", "list[...]") and not str(part).startswith(("function-", "literal[")):
            out += f".{part}" if out else str(part)
    return out or "(top level)"


def load_spec(path: str | Path) -> SweepSpec:
    """Read and validate a spec file (structure and types); raises SpecError."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise SpecError(f"{path}: cannot read the sweep spec ({exc.strerror})") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise SpecError(f"{path}: not valid TOML ({exc})") from None
    try:
        return SweepSpec.model_validate(data)
    except ValidationError as exc:
        raise _fail(path, *_first_error(exc.errors(), data)) from None


def _first_error(errors: list, data: dict) -> tuple[str, str]:
    """(field, message) of the error to show: a policies entry that is neither a string nor a
    table says so, once; an unknown key is called one."""
    err = errors[0]
    loc = err["loc"]
    if loc[:1] == ("policies",) and len(loc) >= 2 and isinstance(loc[1], int):
        entry = data["policies"][loc[1]]
        table_errors = [e for e in errors if e["loc"][:3] == ("policies", loc[1], "PolicyGrid")]
        if isinstance(entry, dict) and table_errors:
            err = table_errors[0]
        elif not isinstance(entry, str | dict):
            return f"policies[{loc[1]}]", 'expected a policy spec ("hedra:no-reorder") or a table { name, grid }'
    if err["type"] == "extra_forbidden":
        return _loc(err["loc"]), "unknown key"
    return _loc(err["loc"]), err["msg"].removeprefix("Value error, ")


def profile_ref(ref: str, base: Path) -> str:
    """A shipped profile's name as is; a path made absolute (relative to the spec file)."""
    if not Path(ref).suffix and (PROFILE_DIR / f"{ref}.json").is_file():
        return ref
    p = Path(ref) if Path(ref).is_absolute() else base / ref
    return str(p.resolve()) if p.suffix else ref


def expand(spec: SweepSpec, path: str | Path, registry: WorkflowRegistry | None = None) -> list[Cell]:
    """Check what the spec names (policies, profiles, workflows, trace files) and list its cells,
    grouped so that cells sharing a trace are adjacent; raises SpecError."""
    path = Path(path)
    base = path.parent
    registry = registry or WorkflowRegistry()
    choices: dict[str, PolicyChoice] = {}
    for i, p in enumerate(spec.policies):
        for s in [p] if isinstance(p, str) else p.specs():
            try:
                choices.setdefault(s, parse_policy(s))
            except PolicyError as exc:
                raise _fail(path, f"policies[{i}]", str(exc)) from None
    policies = list(choices.values())
    if spec.baseline is not None and spec.baseline not in choices:
        raise _fail(path, "baseline", f"{spec.baseline!r} is not one of the policies ({', '.join(choices)})")
    profiles = []
    for i, ref in enumerate(spec.profiles):
        resolved = profile_ref(ref, base)
        try:
            prof = load_profile(resolved)
            profiles.append((resolved, prof, _digest(prof.model_dump_json().encode())))
        except ProfileError as exc:
            raise _fail(path, f"profiles[{i}]", str(exc)) from None
    cells: list[Cell] = []
    for w, wl in enumerate(spec.workloads()):
        field = f"workload[{w - len(spec.workflows)}]" if w >= len(spec.workflows) else f"workflows[{w}]"
        options = tuple((k, getattr(wl, k)) for k in ("arrival", "cv", "nprobe", "k", "zipf", "overlap", "iterations"))
        for ref, prof, prof_digest in profiles:
            if wl.trace is not None:
                trace = Path(wl.trace) if Path(wl.trace).is_absolute() else base / wl.trace
                try:
                    reqs = load_trace(trace, registry, nlist=prof.index.nlist)
                except TraceError as exc:
                    raise _fail(path, f"{field}.trace", str(exc)) from None
                span = max(r.arrival_s for r in reqs) - min(r.arrival_s for r in reqs)
                rate = round((len(reqs) - 1) / span, 3) if span > 0 else float(len(reqs))
                sources = [(str(trace.resolve()), trace.stem, rate, 0.0, ())]
                digest = _digest(prof_digest.encode() + trace.read_bytes())
            else:
                names = [n.strip() for n in (wl.workflow or "").split(",") if n.strip()]
                try:
                    for n in names or [""]:
                        registry.get(n)
                except WorkflowError as exc:
                    raise _fail(path, f"{field}.workflow", str(exc)) from None
                if wl.nprobe > prof.index.nlist:
                    raise _fail(path, f"{field}.nprobe", f"{wl.nprobe} exceeds the {prof.index.nlist} lists"
                                                         f" of profile {prof.name}")
                sources = [("", ",".join(names), float(r), float(wl.duration_s or spec.duration_s), options)
                           for r in wl.rates or ()]
                digest = prof_digest
            for trace_path, label, rate, duration, opts in sources:
                for seed in spec.seeds:
                    cells += [Cell(label, trace_path, rate, duration, opts, p, ref, seed, digest)
                              for p in policies]
    return list(dict.fromkeys(cells))


def _digest(data: bytes) -> str:
    return hashlib.sha1(data).hexdigest()[:12]
