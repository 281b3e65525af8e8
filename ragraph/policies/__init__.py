"""Policy registry: build a policy from a spec string such as `hedra:no-wavefront,chunk=16`.

Spec grammar: `NAME[:OPT[,OPT...]]` where OPT is `no-TECH` (switch a technique off),
`TECH` (switch it on) or `KEY=VALUE` (a numeric or string option of that policy).
"""

from __future__ import annotations

from collections.abc import Callable

from pydantic import ValidationError

from ragraph.costs import SearchCostModel
from ragraph.policies.base import Policy, PolicyError
from ragraph.policies.flashrag import FlashRAGPolicy
from ragraph.policies.hedra import HedraPolicy
from ragraph.policies.langchain import LangChainPolicy

POLICIES: dict[str, Callable[..., Policy]] = {
    "langchain": lambda costs, **kw: LangChainPolicy(**kw),
    "flashrag": lambda costs, **kw: FlashRAGPolicy(**kw),
    "hedra": lambda costs, **kw: HedraPolicy(costs, **kw),
}
TECHNIQUES: dict[str, tuple[str, ...]] = {"hedra": HedraPolicy.techniques}

__all__ = ["POLICIES", "Policy", "PolicyError", "make_policy", "parse_policy_spec"]


def _value(text: str) -> object:
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return {"true": True, "false": False}.get(text.lower(), text)


def parse_policy_spec(spec: str) -> tuple[str, dict[str, object]]:
    """Split a policy spec into its name and keyword options; raises PolicyError."""
    name, _, rest = spec.partition(":")
    if name not in POLICIES:
        raise PolicyError(f"unknown policy {name!r} (known: {', '.join(POLICIES)})")
    options: dict[str, object] = {}
    for opt in filter(None, (o.strip() for o in rest.split(","))):
        key, eq, val = opt.partition("=")
        if eq:
            options[key.replace("-", "_")] = _value(val)
            continue
        on = not key.startswith("no-")
        tech = key.removeprefix("no-")
        if tech not in TECHNIQUES.get(name, ()):
            raise PolicyError(f"policy {name!r} has no technique {tech!r}"
                              f" (techniques: {', '.join(TECHNIQUES.get(name, ())) or 'none'})")
        options[tech] = ("dynamic" if on else "off") if tech == "substages" else on
    return name, options


def make_policy(spec: str, costs: SearchCostModel) -> Policy:
    """Build the policy named by `spec`; raises PolicyError on any bad name or option."""
    name, options = parse_policy_spec(spec)
    try:
        return POLICIES[name](costs, **options)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = f"option {'.'.join(str(p) for p in err['loc'])}" if err["loc"] else "options"
        raise PolicyError(f"policy {name!r}: {where}: {err['msg']}") from None
    except TypeError:
        raise PolicyError(f"policy {name!r} takes no options {sorted(options)}") from None
