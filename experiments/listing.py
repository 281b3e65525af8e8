"""What a user may name: policies (with their options), workflows and shipped profiles.

The text of `hedra list policies|workflows|profiles` and of the listing at the end of
`hedra --help`, built from the registries so it never goes stale.
"""

from __future__ import annotations

import json
import types
import typing

from hwmodel.profile import DEFAULT_CPU_PROFILE, DEFAULT_PROFILE, PROFILE_DIR
from ragraph.policies import POLICIES, PolicyType
from ragraph.workflows import WorkflowRegistry

KINDS = ("policies", "workflows", "profiles")


def _kind(annotation: object) -> str:
    """An option's type as a user writes it: `int`, `dynamic|fixed|off`, `int|none`."""
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) is typing.Literal:
        return "|".join(map(str, args))
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return "|".join("none" if a is type(None) else _kind(a) for a in args)
    if typing.get_origin(annotation) is typing.Annotated:
        return _kind(args[0])
    return getattr(annotation, "__name__", str(annotation))


def option_lines(ptype: PolicyType) -> list[str]:
    """One line per option of a policy: `key: type = default  (description)`."""
    lines = []
    for key, f in ptype.options.model_fields.items():
        lines.append(f"{key.replace('_', '-')}: {_kind(f.annotation)} = {_default(f.default)}"
                     + (f"  # {f.description}" if f.description else ""))
    return lines


def policy_lines() -> list[str]:
    out = []
    for name, ptype in POLICIES.items():
        out.append(f"{name}: {ptype.summary}")
        if ptype.techniques:
            out.append(f"    techniques (TECH / no-TECH): {', '.join(ptype.techniques)}")
        out += [f"    {line}" for line in option_lines(ptype)]
    out.append("spec: NAME[:OPT,...], OPT = no-TECH, TECH or KEY=VALUE; e.g. hedra:no-reorder,budget-factor=3")
    return out


def workflow_lines(registry: WorkflowRegistry | None = None) -> list[str]:
    registry = registry or WorkflowRegistry()
    out = []
    for name in registry.names():
        spec = registry.get(name)
        data = f" [{spec.dataset}]" if spec.dataset else ""
        out.append(f"{name}: {spec.description}{data}")
    out.append("more: --workflows FILE.toml (docs/workflows.md)")
    return out


def profile_lines() -> list[str]:
    out = []
    for path in sorted(PROFILE_DIR.glob("*.json")):
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        role = {DEFAULT_PROFILE: " (default of sim, demo, figure)",
                DEFAULT_CPU_PROFILE: " (default of run, validate on cpu)"}.get(path.stem, "")
        about = str(data.get("description", "")).split(": ")[-1].split(";")[0].split(". ")[0]
        out.append(f"{path.stem}: {data.get('kind', '?')}{role}" + (f"; {about}" if about else ""))
    out.append("or a profile file: --profile PATH.json (hedra calibrate writes one)")
    return out


def lines(kind: str) -> list[str]:
    return {"policies": policy_lines, "workflows": workflow_lines, "profiles": profile_lines}[kind]()


def help_epilog() -> str:
    """The listing at the end of `hedra --help`: one paragraph per policy (its options in
    short), then the workflows and the shipped profiles (details: `hedra list KIND`)."""
    parts = ["Policies (details: hedra list policies; spec NAME[:OPT,...] with OPT no-TECH, TECH or KEY=VALUE):"]
    for name, ptype in POLICIES.items():
        options = ", ".join(f"{k.replace('_', '-')}={_default(f.default)} ({_kind(f.annotation)})"
                            for k, f in ptype.options.model_fields.items())
        parts.append(f"{name}: {ptype.summary}. " + (f"Options: {options}." if options else "No options."))
    registry = WorkflowRegistry()
    parts.append(f"Workflows: {', '.join(registry.names())} (hedra list workflows; your own with --workflows FILE).")
    profiles = sorted(p.stem for p in PROFILE_DIR.glob("*.json"))  # names only: no profile is parsed at start-up
    parts.append(f"Profiles: {', '.join(profiles)}, or a profile file (hedra list profiles).")
    return "\n\n".join(parts)


def _default(value: object) -> str:
    return "none" if value is None else str(value).lower() if isinstance(value, bool) else str(value)
