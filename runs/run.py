"""One run of a trace on either body, from validated inputs to a `Run` (records + summary).

The one place a run is made: `hedra sim`, `hedra run`, sweeps, validation, calibration and
the benchmarks all call `simulate` or `run_real`. Both take a `PolicyChoice` (a spec parsed
and validated once, at the edge: the CLI or a sweep spec), build the policy once with the
body's cost model, run, and summarise with the same keys (`runs.summary`). Writing the
run's folder is `runs.outputs.write_run`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from hwmodel.latency import LatencyModel
from hwmodel.profile import Profile
from ragraph.costs import SearchCostModel
from ragraph.graph import Request
from ragraph.kvpolicy import KVPolicy
from ragraph.policies.base import Policy, PolicyError
from ragraph.policies.spec import PolicyChoice
from ragraph.quality import quality_summary
from ragraph.records import RunResult
from runs.quality import configuration_quality
from runs.summary import summarize
from sim.executor import Simulation

if TYPE_CHECKING:
    from backends.executor import RealExecutor
    from backends.real import RealBackend


@dataclass(frozen=True, slots=True)
class Run:
    """What one run gave, on either body."""

    result: RunResult  # the executor's records, clocks, lane busy time and timeline
    summary: dict[str, object]  # summary.json's content


def _policy_meta(choice: PolicyChoice) -> dict[str, object]:
    return {"policy": choice.spec, "policy_options": choice.resolved()}


def _accepted(policy: Policy, requests: list[Request]) -> Policy:
    """`policy`, if it can run `requests` (`Policy.accepts`: e.g. a fixed synthesis configuration
    out of a request's range or missing from its quality table); else PolicyError, before a run."""
    if why := policy.accepts(requests):
        raise PolicyError(why)
    return policy


def simulate(requests: list[Request], choice: PolicyChoice, profile: Profile, *, seed: int = 0,
             timeline: bool = True, latency: LatencyModel | None = None,
             meta: dict[str, object] | None = None, kv_policy: KVPolicy | None = None) -> Run:
    """Simulate `requests` under `choice` (and `kv_policy`, default lru) on `profile` (`latency`:
    the profile's latency model, when the caller keeps one across runs)."""
    latency = latency or LatencyModel(profile)
    policy = _accepted(choice.build(latency), requests)
    result = Simulation(requests, policy, latency, seed=seed, timeline=timeline, kv_policy=kv_policy).run()
    summary = summarize(result, {"body": "sim", **_policy_meta(choice), "profile": profile.name,
                                 "profile_kind": profile.kind, "seed": seed, **(meta or {})})
    if kv_policy is not None and isinstance(summary.get("kv_cache"), dict):
        summary["kv_cache"]["kv_policy"] = kv_policy.spec  # with its options (kvflow:no-prefetch)
    if quality := configuration_quality(result.records, requests):
        summary["quality"] = quality
    return Run(result, summary)


def run_real(backend: RealBackend, requests: list[Request], choice: PolicyChoice, costs: SearchCostModel, *,
             timeline: bool = True, meta: dict[str, object] | None = None,
             executor_hook: Callable[[RealExecutor], None] | None = None, text: bool = True,
             kv_policy: KVPolicy | None = None) -> Run:
    """Replay `requests` on the real `backend` under `choice` (and `kv_policy`, default lru: vLLM's
    own order), its time-based decisions priced by `costs` (the profile's latency model);
    `executor_hook` sees the executor before it starts (the CLI reads its progress, tests inject
    faults). `text=False`: synthetic prompts only, even for a model that answers (`RealBackend.replay`)."""
    policy = _accepted(choice.build(costs), requests)
    result = backend.replay(requests, policy, timeline=timeline, executor_hook=executor_hook, text=text,
                            kv_policy=kv_policy)
    summary = summarize(result, {"body": "real", **_policy_meta(choice), **backend.describe(), **(meta or {})})
    # answer quality against the trace's gold answers (ragraph.quality); null: nothing scored (no gold
    # answers, or a model that does not answer), never zero
    summary["quality"] = quality_summary((r.answer, r.f1, r.em) for r in result.records)
    return Run(result, summary)
