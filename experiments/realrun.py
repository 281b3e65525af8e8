"""One real run from inputs to outputs: the glue behind `hedra run` and `benchmarks/real_cpu.py`.

The twin of `experiments.simulate`: same policy specs, same summary keys, the body is the
real one (`backends.real.RealBackend`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from experiments.results import summarize
from ragraph.graph import Request

if TYPE_CHECKING:
    from backends.executor import RealResult
    from backends.real import RealBackend


@dataclass
class RealRun:
    result: RealResult
    summary: dict[str, object]


def run_real(backend: RealBackend, requests: list[Request], policy: str, *, timeline: bool = True,
             meta: dict[str, object] | None = None) -> RealRun:
    """Replay `requests` on `backend` under the policy spec `policy`."""
    result = backend.replay(requests, policy, timeline=timeline)
    summary = summarize(result.records, sim_s=result.sim_s, wall_s=result.wall_s, lane_busy_s=result.lane_busy_s,
                        meta={"body": "real", "policy": policy, **backend.describe(), **(meta or {}),
                              "stopped": result.stopped, "kv_peak_blocks": result.kv_peak_blocks,
                              "kv_total_blocks": result.kv_total_blocks})
    return RealRun(result, summary)
