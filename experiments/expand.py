"""A validated sweep spec's cells: every name and file it gives checked, then the grid listed.

`expand(spec, path)` parses every policy spec (`parse_policy`, once, here at the edge),
loads every profile, reads the extra workflow files, looks every workflow up, checks every
synthetic trace's settings and reads every trace file; a fault raises SpecError naming the
file and the field. The cells come in grid order: workload, profile, rate, seed, policy, so
that cells sharing a trace are adjacent.

Each cell's `inputs` digests the files its result depends on besides the code: the profile,
the trace file or (synthetic arrivals) the fitted truth model, and the extra workflows its
trace may name; a changed file makes new cells, never a reuse of stored ones.
"""

from __future__ import annotations

import hashlib
import math
from pathlib import Path

from experiments.cell import TRACE_OPTIONS, Cell
from experiments.sweepspec import SpecError, SweepSpec, Workload, policy_specs
from experiments.workflowfile import read_workflows
from hwmodel.profile import PROFILE_DIR, Profile, ProfileError, load_profile
from ragraph.kvpolicy import KVPolicy, KVPolicyError, parse_kv_policy
from ragraph.policies import PolicyChoice, PolicyError, parse_policy
from ragraph.workflows import WorkflowError, WorkflowRegistry, WorkflowSpec
from traces.generate import TraceConfig
from traces.schema import TraceError, load_trace
from traces.truth_model import MODEL_PATH

Choices = list[tuple[PolicyChoice, str]]  # (validated policy, label)


def _fail(path: Path, field: str, msg: str) -> SpecError:
    return SpecError(f"{path}: field {field}: {msg}")


def _digest(data: bytes) -> str:
    return hashlib.sha1(data).hexdigest()[:12]


def profile_ref(ref: str, base: Path) -> str:
    """A shipped profile's name as is; a path made absolute (relative to the spec file)."""
    if not Path(ref).suffix and (PROFILE_DIR / f"{ref}.json").is_file():
        return ref
    p = Path(ref) if Path(ref).is_absolute() else base / ref
    return str(p.resolve()) if p.suffix else ref


def offline_duration(requests: int, rate: float) -> float:
    """Seconds of arrivals that hold `requests` arrivals with near certainty (the trace is then cut)."""
    return (requests + 6 * math.sqrt(requests) + 8) / rate


def _choices(path: Path, field: str, entries: list) -> Choices:
    out = []
    for spec, label in policy_specs(entries):
        try:
            out.append((parse_policy(spec), label))
        except PolicyError as exc:
            index = next(i for i, p in enumerate(entries) if spec in ([p] if isinstance(p, str) else p.specs()))
            raise _fail(path, f"{field}[{index}]", str(exc)) from None
    return out


def _kv_policies(spec: SweepSpec, path: Path) -> list[KVPolicy]:
    out: list[KVPolicy] = []
    for i, name in enumerate(spec.kv_policies):
        try:
            out.append(parse_kv_policy(name))
        except KVPolicyError as exc:
            raise _fail(path, f"kv_policies[{i}]", str(exc)) from None
    return list(dict.fromkeys(out))


def _workflows(spec: SweepSpec, path: Path) -> tuple[WorkflowRegistry, list[WorkflowSpec]]:
    registry, extra = WorkflowRegistry(), []
    for i, ref in enumerate(spec.workflow_files):
        file = Path(ref) if Path(ref).is_absolute() else path.parent / ref
        try:
            for wf in read_workflows(file):
                registry.register(wf)
                extra.append(wf)
        except WorkflowError as exc:
            raise _fail(path, f"workflow_files[{i}]", str(exc)) from None
    return registry, extra


def _profiles(spec: SweepSpec, path: Path) -> list[tuple[str, Profile, str]]:
    out = []
    for i, ref in enumerate(spec.profiles):
        resolved = profile_ref(ref, path.parent)
        try:
            prof = load_profile(resolved)
        except ProfileError as exc:
            raise _fail(path, f"profiles[{i}]", str(exc)) from None
        out.append((resolved, prof, _digest(prof.model_dump_json().encode())))
    return out


def _synthetic(spec: SweepSpec, wl: Workload, field: str, path: Path, registry: WorkflowRegistry,
               extra: list[WorkflowSpec], prof: Profile) -> list[dict]:
    """The cells' fields of a synthetic workload at each of its rates, its settings checked."""
    names = [n.strip() for n in (wl.workflow or "").split(",") if n.strip()]
    try:
        for n in names or [""]:
            registry.get(n)
    except WorkflowError as exc:
        raise _fail(path, f"{field}.workflow", str(exc)) from None
    if wl.nprobe > prof.index.nlist:
        raise _fail(path, f"{field}.nprobe", f"{wl.nprobe} exceeds the {prof.index.nlist} lists of profile {prof.name}")
    used = tuple(w for w in extra if w.name in names)
    options = tuple((k, getattr(wl, k)) for k in TRACE_OPTIONS)
    out = []
    for i, rate in enumerate(wl.rates or ()):
        duration = offline_duration(wl.requests, rate) if wl.requests else float(wl.duration_s or spec.duration_s)
        try:
            TraceConfig(tuple(names), float(rate), duration, nlist=prof.index.nlist, **dict(options))
        except ValueError as exc:
            raise _fail(path, f"{field}.rates[{i}]", str(exc)) from None
        out.append({"label": ",".join(names), "trace": "", "rate": float(rate), "duration_s": duration,
                    "trace_options": options, "requests": wl.requests, "workflows": used})
    duration = float(wl.duration_s or spec.duration_s)
    if wl.loads:
        try:
            TraceConfig(tuple(names), 1.0, duration, nlist=prof.index.nlist, **dict(options))
        except ValueError as exc:
            raise _fail(path, f"{field}.loads", str(exc)) from None
    for load in wl.loads or ():  # the rate comes from the policy's capacity (experiments.capacity_grid)
        out.append({"label": ",".join(names), "trace": "", "rate": 0.0, "duration_s": duration,
                    "trace_options": options, "requests": None, "workflows": used, "load": float(load)})
    return out


def _trace_file(wl: Workload, field: str, path: Path, registry: WorkflowRegistry, extra: list[WorkflowSpec],
                prof: Profile) -> tuple[dict, bytes]:
    trace = Path(wl.trace or "") if Path(wl.trace or "").is_absolute() else path.parent / (wl.trace or "")
    try:
        reqs = load_trace(trace, registry, nlist=prof.index.nlist)
    except TraceError as exc:
        raise _fail(path, f"{field}.trace", str(exc)) from None
    span = max(r.arrival_s for r in reqs) - min(r.arrival_s for r in reqs)
    rate = round((len(reqs) - 1) / span, 3) if span > 0 else float(len(reqs))
    return ({"label": trace.stem, "trace": str(trace.resolve()), "rate": rate, "duration_s": 0.0,
             "trace_options": (), "requests": None, "workflows": tuple(extra)}, trace.read_bytes())


def expand(spec: SweepSpec, path: str | Path) -> list[Cell]:
    """Check what the spec names (policies, profiles, workflows, trace files) and list its cells,
    grouped so that cells sharing a trace are adjacent; raises SpecError."""
    path = Path(path)
    shared = _choices(path, "policies", list(spec.policies))
    if spec.baseline is not None and spec.baseline not in spec.policy_specs():
        raise _fail(path, "baseline", f"{spec.baseline!r} is not one of the policies"
                                      f" ({', '.join(spec.policy_specs())})")
    kv_policies = _kv_policies(spec, path)
    registry, extra = _workflows(spec, path)
    truth = MODEL_PATH.read_bytes() if MODEL_PATH.is_file() else b""
    profiles = _profiles(spec, path)
    cells: list[Cell] = []
    for w, wl in enumerate(spec.workloads()):
        field = f"workload[{w - len(spec.workflows)}]" if w >= len(spec.workflows) else f"workflows[{w}]"
        choices = shared if wl.policies is None else _choices(path, f"{field}.policies", list(wl.policies))
        tags = tuple(wl.tags.items())
        for ref, prof, prof_digest in profiles:
            if wl.trace is not None:
                source, data = _trace_file(wl, field, path, registry, extra, prof)
                sources = [source]
            else:
                sources, data = _synthetic(spec, wl, field, path, registry, extra, prof), truth
            for src in sources:
                used = "".join(w.model_dump_json() for w in src["workflows"]).encode()
                digest = _digest(prof_digest.encode() + data + used)
                for seed in spec.seeds:
                    cells += [Cell(**src, policy=choice, profile=ref, seed=seed, inputs=digest, offline=wl.offline,
                                   policy_label=label, tags=tags, kv_policy=kv)
                              for kv in kv_policies for choice, label in choices]
    return list(dict.fromkeys(cells))
