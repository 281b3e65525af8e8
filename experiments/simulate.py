"""One simulated run from inputs to outputs: the glue behind `hedra sim` and the demo."""

from __future__ import annotations

from dataclasses import dataclass

from experiments.results import summarize
from hwmodel.latency import LatencyModel
from hwmodel.profile import Profile
from ragraph.graph import Request
from ragraph.policies import parse_policy
from ragraph.records import RunResult
from sim.executor import Simulation


@dataclass
class SimRun:
    result: RunResult
    summary: dict[str, object]


def simulate(requests: list[Request], policy: str, profile: Profile, *, seed: int = 0,
             timeline: bool = True, latency: LatencyModel | None = None,
             meta: dict[str, object] | None = None) -> SimRun:
    """Simulate `requests` under the policy spec `policy` on `profile`."""
    latency = latency or LatencyModel(profile)
    choice = parse_policy(policy)
    sim = Simulation(requests, choice.build(latency), latency, seed=seed, timeline=timeline)
    result = sim.run()
    summary = summarize(result, {"body": "sim", "policy": policy, "policy_options": choice.resolved(),
                                 "profile": profile.name,
                                 "profile_kind": profile.kind, "seed": seed, **(meta or {})})
    return SimRun(result, summary)
