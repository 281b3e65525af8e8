"""Policy specs: parse and validate `NAME[:OPT[,OPT...]]` without building a policy.

A spec such as `hedra:no-reorder,gpu_cache_clusters=64` names a registered policy and its
options. OPT is `no-TECH` (switch a technique off), `TECH` (switch it on) or `KEY=VALUE`
(any field of the policy's options model; `-` and `_` are the same in names). Parsing
validates everything against the policy's pydantic options model, so the CLI and sweep
specs refuse a bad spec before anything runs, and `PolicyChoice.options` is what a run
records as its resolved options. Building (`PolicyChoice.build`) needs the body's cost
model and happens once.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ValidationError

from ragraph.costs import SearchCostModel
from ragraph.policies.base import Policy, PolicyError


@dataclass(frozen=True, slots=True)
class PolicyType:
    """One registered policy: its options model, how to build it, and what it is."""

    name: str
    options: type[BaseModel]  # validated strictly (extra fields forbidden)
    build: Callable[[Any, SearchCostModel], Policy]  # (options, costs) -> policy
    summary: str  # one line, for --help and `hedra list policies`
    techniques: tuple[str, ...] = ()  # switchable by name: `TECH` / `no-TECH`


@dataclass(frozen=True, slots=True, eq=False)
class PolicyChoice:
    """A parsed, validated policy spec: what the edge (CLI, sweep spec) hands inward, never
    the spec's text. Equal and hashed as its spec."""

    spec: str  # as the user wrote it
    type: PolicyType
    options: BaseModel  # an instance of `type.options`

    def __eq__(self, other: object) -> bool:
        return isinstance(other, PolicyChoice) and other.spec == self.spec

    def __hash__(self) -> int:
        return hash(self.spec)

    @property
    def name(self) -> str:
        return self.type.name

    def build(self, costs: SearchCostModel) -> Policy:
        """A fresh policy (policies hold per-run state: build one per run)."""
        return self.type.build(self.options, costs)

    def resolved(self) -> dict[str, object]:
        """Every option's value, defaults included (what a run records)."""
        return self.options.model_dump(mode="json")


def _value(text: str) -> object:
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return {"true": True, "false": False}.get(text.lower(), text)


def _field(name: str) -> str:
    return name.strip().replace("-", "_")


def parse_policy(spec: str, registry: dict[str, PolicyType]) -> PolicyChoice:
    """Parse and validate `spec` against `registry`; raises PolicyError naming the policy
    and the option at fault."""
    name, _, rest = spec.partition(":")
    ptype = registry.get(name.strip())
    if ptype is None:
        raise PolicyError(f"unknown policy {name!r} (known: {', '.join(registry)})")
    techniques = {_field(t): t for t in ptype.techniques}
    options: dict[str, object] = {}
    for opt in filter(None, (o.strip() for o in rest.split(","))):
        key, eq, val = opt.partition("=")
        if eq:
            options[_field(key)] = _value(val.strip())
            continue
        on = not key.startswith("no-")
        tech = _field(key.removeprefix("no-"))
        if tech not in techniques:
            raise PolicyError(f"policy {ptype.name!r} has no technique {key.removeprefix('no-')!r}"
                              f" (techniques: {', '.join(ptype.techniques) or 'none'})")
        default = ptype.options.model_fields[tech].default
        options[tech] = on if isinstance(default, bool) else (default if on else "off")
    try:
        return PolicyChoice(spec, ptype, ptype.options(**options))
    except ValidationError as exc:
        err = exc.errors()[0]
        where = f"option {'.'.join(str(p) for p in err['loc'])}" if err["loc"] else "options"
        raise PolicyError(f"policy {ptype.name!r}: {where}: {err['msg']}") from None
