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
    workflow_files = ["workflows.toml"]  # extra workflows ([[workflow]] tables), relative to the spec

    [[workload]]
    workflow = "irg"
    rates = [2, 4, 8]
    tags = { panel = "irg" }             # columns of this workload's rows

    [[workload]]
    workflow = "one-shot"
    rates = [1000]
    requests = 1024                      # exactly the first 1024 requests generated
    offline = true                       # ... all arriving at t = 0
    policies = ["flashrag", "hedra"]     # this workload's own policies

    [[workload]]
    trace = "traces/mine.jsonl"          # relative to the spec file

    [capacity]                           # each cell's sustainable rate (calibration.capacity)
    slo_p95 = 10                         # P95 latency at most this (s)
    tolerance = 0.1                      # its bracket: high <= (1 + tolerance) x low

    [[workload]]
    workflow = "irg"
    loads = [0.3, 0.6, 0.85]             # fractions of each policy's capacity, instead of rates

This module checks structure and types (unknown keys refused); `experiments.expand` checks
what the spec names and lists its cells. A fault raises SpecError with one line naming the
file and the field, e.g. `spec.toml: field policies[2]: policy 'hedra': option chunk: ...`.
"""

from __future__ import annotations

import itertools
import re
import tomllib
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from experiments.cell import ROW_COLUMNS, ROW_PREFIXES

Plot = Literal["latency-vs-rate", "cdf", "utilisation", "speedup"]  # drawn by experiments.study_plots
Positive = Annotated[float, Field(gt=0, lt=1e6, allow_inf_nan=False)]
Load = Annotated[float, Field(gt=0, le=10, allow_inf_nan=False)]  # a fraction of a policy's capacity
TagValue = str | int | float | bool


class SpecError(ValueError):
    """A sweep spec that cannot run (message: `FILE: field F: what is wrong`)."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class PolicyGrid(_Strict):
    """`{ name = "hedra", grid = { chunk = [4, 16] } }`: one policy spec per combination;
    `{ name = "hedra:substages=off", label = "no split" }`: one spec with its label."""

    name: str  # a policy spec, options allowed: "hedra:no-reorder"
    grid: dict[str, list[int | float | bool | str]] = Field(default_factory=dict)
    label: str | None = Field(None, min_length=1)  # its name in the table's `label` column and in figures

    @model_validator(mode="after")
    def _label_names_one(self) -> PolicyGrid:
        if self.label is not None and self.grid:
            raise ValueError("a label names one policy; leave it out of a table with a grid")
        return self

    def specs(self) -> list[str]:
        keys = list(self.grid)
        out = []
        for values in itertools.product(*(self.grid[k] for k in keys)):
            pairs = zip(keys, values, strict=True)
            opts = ",".join(f"{k}={str(v).lower() if isinstance(v, bool) else v}" for k, v in pairs)
            out.append(f"{self.name}{',' if ':' in self.name else ':'}{opts}" if opts else self.name)
        return out


PolicyEntry = str | PolicyGrid


def policy_specs(entries: list[PolicyEntry]) -> list[tuple[str, str]]:
    """(spec, label) of every policy of a list, in order, without repeats (label "": the spec)."""
    out: dict[str, str] = {}
    for p in entries:
        for s in [p] if isinstance(p, str) else p.specs():
            out.setdefault(s, "" if isinstance(p, str) else p.label or "")
    return list(out.items())


class Workload(_Strict):
    """One `[[workload]]`: synthetic arrivals of `workflow` at each of `rates`, or a trace file."""

    workflow: str | None = None  # a name, or several comma-separated (an equal mix)
    rates: list[Positive] | None = Field(None, min_length=1)  # req/s, one cell each
    loads: list[Load] | None = Field(None, min_length=1)  # fractions of each policy's capacity, one cell each
    trace: str | None = None  # a trace file (JSON Lines), instead of workflow + rates
    duration_s: Positive | None = None  # overrides the spec's duration_s
    requests: int | None = Field(None, ge=1, le=1_000_000)  # exactly the first N requests generated
    offline: bool = False  # every request arrives at t = 0 (rates then only space the generated trace)
    arrival: Literal["poisson", "gamma"] = "poisson"
    cv: Positive = 1.0  # gap coefficient of variation (gamma)
    nprobe: int = Field(256, ge=1)  # IVF lists per retrieval (<= the profile's nlist)
    k: int = Field(1, ge=1)
    zipf: float = Field(0.8, ge=0, allow_inf_nan=False)
    overlap: float = Field(0.5, ge=0, le=1)
    iterations: int | None = Field(None, ge=0)
    policies: list[PolicyEntry] | None = Field(None, min_length=1)  # this workload's own (default: the spec's)
    tags: dict[str, TagValue] = Field(default_factory=dict)  # columns of its rows, e.g. { panel = "irg@256" }

    @model_validator(mode="after")
    def _one_source(self) -> Workload:
        if (self.trace is None) == (self.workflow is None):
            raise ValueError("give either workflow (with rates) or trace")
        if self.workflow is not None and not self.rates and not self.loads:
            raise ValueError("a workflow needs rates (e.g. rates = [2, 4, 8]) or loads (e.g. loads = [0.3, 0.6])")
        if self.trace is not None and (self.rates or self.loads or self.requests is not None):
            raise ValueError("a trace file has its own arrivals and requests; leave rates, loads and requests out")
        if self.loads and (self.offline or self.requests is not None):
            raise ValueError("loads are fractions of a sustainable rate: not with offline or requests")
        if self.requests is not None and self.duration_s is not None:
            raise ValueError("give requests or duration_s, not both (requests sets the trace's length)")
        return self

    @field_validator("tags")
    @classmethod
    def _tag_names(cls, tags: dict[str, TagValue]) -> dict[str, TagValue]:
        for name in tags:
            if not re.fullmatch(r"[a-z][a-z0-9_]*", name) or name in ROW_COLUMNS or name.startswith(ROW_PREFIXES):
                raise ValueError(f"tag {name!r}: a tag is a new column: lower-case letters, digits and _, and not"
                                 " a column the row already has")
        return tags


class CapacitySpec(_Strict):
    """`[capacity]`: find each (workload, profile, seed, policy)'s sustainable rate on the
    simulator (`calibration.capacity.sim_capacity`), for `capacity_*` columns and `loads`."""

    slo_p95: Positive = 10.0  # the rate is sustained when the P95 latency is at most this (s)
    tolerance: Annotated[float, Field(gt=0, le=1)] = 0.1  # bracket: high <= (1 + tolerance) x low
    duration_s: Positive | None = None  # seconds of arrivals a run (default: enough for the tolerance)


class SweepSpec(_Strict):
    """The whole spec file; `workflows` + `rates` at the top level is a shorthand for one
    workload per workflow."""

    name: str = "sweep"
    duration_s: Positive = 60.0
    seeds: list[int] = Field([0], min_length=1)
    profiles: list[str] = Field(["analytic-h100-llama8b-ivf4096"], min_length=1)
    policies: list[PolicyEntry] = Field(default_factory=list)  # every workload's, unless it has its own
    baseline: str | None = None  # a policy spec of the grid; default: the first
    kv_policies: list[str] = Field(["lru"], min_length=1)  # KV policies (ragraph.kvpolicy): every cell runs under each
    workflows: list[str] = Field(default_factory=list)
    rates: list[Positive] = Field(default_factory=list)
    workload: list[Workload] = Field(default_factory=list)
    workflow_files: list[str] = Field(default_factory=list)  # files of extra [[workflow]] tables
    plots: list[Plot] = Field(default_factory=lambda: ["latency-vs-rate"])
    runs: bool = False  # keep each cell's run folder (requests.parquet, summary.json) under runs/
    timeline: bool = False  # ... and its timeline.json (slow; for a few cells)
    capacity: CapacitySpec | None = None  # each cell's sustainable rate (capacity_* columns; needed by loads)

    @model_validator(mode="after")
    def _has_workloads(self) -> SweepSpec:
        if bool(self.workflows) != bool(self.rates):
            raise ValueError("workflows and rates go together (or use [[workload]] tables)")
        if not self.workflows and not self.workload:
            raise ValueError("no workload: give workflows + rates, or [[workload]] tables")
        if not self.policies and (self.workflows or any(w.policies is None for w in self.workload)):
            raise ValueError("no policies: give policies, or policies in every [[workload]]")
        if self.capacity is None and any(w.loads for w in self.workload):
            raise ValueError("loads are fractions of each policy's capacity: add a [capacity] table"
                             " (e.g. capacity = { slo_p95 = 10 })")
        return self

    def workloads(self) -> list[Workload]:
        """The [[workload]] tables, after those of the top-level shorthand."""
        return [Workload(workflow=w, rates=self.rates) for w in self.workflows] + list(self.workload)

    def policy_specs(self) -> list[str]:
        """Every policy spec of the grid, in order (the spec's, then the workloads' own), without repeats."""
        entries = list(self.policies) + [p for w in self.workload for p in w.policies or ()]
        return [s for s, _ in policy_specs(entries)]


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
        raise SpecError(f"{path}: field {': '.join(_first_error(exc.errors(), data))}") from None


def _loc(loc: tuple) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part not in ("str", "PolicyGrid", "list[...]") and not str(part).startswith(("function-", "literal[")):
            out += f".{part}" if out else str(part)
    return out or "(top level)"


def _at(data: object, loc: tuple) -> object:
    """The value at `loc` in the raw spec (None where the path leaves it)."""
    for part in loc:
        try:
            data = data[part]  # type: ignore[index]
        except (KeyError, IndexError, TypeError):
            return None
    return data


def _first_error(errors: list, data: dict) -> tuple[str, str]:
    """(field, message) of the error to show: a policies entry that is neither a string nor a
    table says so, once; an unknown key is called one."""
    err = errors[0]
    loc = err["loc"]
    at = next((i for i in range(len(loc) - 1) if loc[i] == "policies" and isinstance(loc[i + 1], int)), None)
    if at is not None:
        entry_loc = loc[: at + 2]
        entry = _at(data, entry_loc)
        table_errors = [e for e in errors if e["loc"][: at + 2] == entry_loc and len(e["loc"]) > at + 2
                        and "PolicyGrid" in str(e["loc"][at + 2])]
        if isinstance(entry, dict) and table_errors:
            err = table_errors[0]
        elif not isinstance(entry, str | dict):
            return _loc(entry_loc), 'expected a policy spec ("hedra:no-reorder") or a table { name, grid }'
    if err["type"] == "extra_forbidden":
        return _loc(err["loc"]), "unknown key"
    return _loc(err["loc"]), err["msg"].removeprefix("Value error, ")
