"""One real run from inputs to outputs: the glue behind `hedra run` and `benchmarks/real_cpu.py`.

The twin of `experiments.simulate`: same policy specs, same summary keys, the body is the
real one (`backends.real.RealBackend`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from experiments.results import summarize
from ragraph.costs import SearchCostModel
from ragraph.graph import Request
from ragraph.policies import parse_policy
from ragraph.records import RunResult

if TYPE_CHECKING:
    from backends.executor import RealExecutor
    from backends.real import RealBackend


@dataclass
class RealRun:
    result: RunResult
    summary: dict[str, object]


def run_real(backend: RealBackend, requests: list[Request], policy: str, costs: SearchCostModel, *,
             timeline: bool = True, meta: dict[str, object] | None = None,
             executor_hook: Callable[[RealExecutor], None] | None = None) -> RealRun:
    """Replay `requests` on `backend` under the policy spec `policy` (its time-based decisions
    priced by `costs`, the profile's latency model); `executor_hook` sees the executor before
    it starts (the CLI reads its progress)."""
    result = backend.replay(requests, policy, costs, timeline=timeline, executor_hook=executor_hook)
    options = parse_policy(policy).resolved()
    summary = summarize(result, {"body": "real", "policy": policy, "policy_options": options, **backend.describe(),
                                 **(meta or {})})
    return RealRun(result, summary)
