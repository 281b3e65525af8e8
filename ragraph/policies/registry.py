"""The policy registry: every policy by name, with its options model and build function.

Importing it imports every policy; the contract (`ragraph.policies.base`) and the spec
grammar (`ragraph.policies.spec`) import no policy, so the core and a policy module load
without the registry.

`parse_policy("hedra:no-reorder")` validates a spec without building anything;
`make_policy(spec, costs)` parses and builds. Grammar and validation: `ragraph.policies.spec`.
"""

from __future__ import annotations

from ragraph.costs import SearchCostModel
from ragraph.policies import configured, flashrag, hedra, langchain, ragserve
from ragraph.policies.base import Policy, PolicyError
from ragraph.policies.spec import PolicyChoice, PolicyType
from ragraph.policies.spec import parse_policy as _parse

POLICIES: dict[str, PolicyType] = {p.name: p for p in (langchain.POLICY, flashrag.POLICY, hedra.POLICY,
                                                       ragserve.POLICY, configured.FIXED, configured.ADAPTIVE)}

__all__ = ["POLICIES", "Policy", "PolicyChoice", "PolicyError", "PolicyType", "make_policy", "parse_policy"]


def parse_policy(spec: str) -> PolicyChoice:
    """Parse and validate a policy spec; raises PolicyError."""
    return _parse(spec, POLICIES)


def make_policy(spec: str, costs: SearchCostModel) -> Policy:
    """Build the policy named by `spec`; raises PolicyError on any bad name or option."""
    return parse_policy(spec).build(costs)
