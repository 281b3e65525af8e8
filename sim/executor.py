"""The simulated body: SimPy processes that run the scheduler core's lanes.

One process per lane and one for arrivals. A lane process asks the core for work, waits
the modelled duration (from the profile's latency models), hands the result back, and
wakes the other lanes; when the core has nothing for it, it sleeps on a shared wake-up
event. The processes hold no policy. Same trace, profile, policy and seed: same result.
"""

from __future__ import annotations

import math
import time

import simpy

from hwmodel.latency import LatencyModel
from ragraph.core import Scheduler
from ragraph.graph import Request
from ragraph.policies.base import Policy
from ragraph.records import RunResult, StopReason, TimelineEvent
from ragraph.work import (
    CacheLoad,
    CacheLoadResult,
    GenStep,
    Lane,
    SearchBatch,
    SearchResult,
    WorkItem,
    may_open_work,
)
from sim.gen_engine import GenEngineModel

_NO_TOPK = SearchResult()  # the analytic models synthesize no neighbour ids


class Simulation:
    """Runs `requests` through `policy` on the hardware described by `latency`."""

    def __init__(self, requests: list[Request], policy: Policy, latency: LatencyModel, *,
                 seed: int = 0, timeline: bool = True) -> None:
        self.requests = sorted(requests, key=lambda r: r.arrival_s)
        self.sched = Scheduler(policy)
        self.latency = latency
        self.seed = seed  # feeds stochastic result models; the analytic models use none
        self.engine = GenEngineModel(latency)
        self.env = simpy.Environment()
        self._wake = self.env.event()
        self._keep_timeline = timeline
        self._timeline: list[TimelineEvent] = []
        self._busy_s = dict.fromkeys((lane.value for lane in Lane), 0.0)
        self._lane_free = dict.fromkeys((lane.value for lane in Lane), -math.inf)  # when each lane's last item ended
        self._kv_peak = 0
        self._arrived = False

    def run(self) -> RunResult:
        """Called once: simulate every request to its end. `stopped` is "stalled" when events
        ran out with requests active (they fail with that reason, none is lost)."""
        start = time.perf_counter()
        stopped: StopReason = ""
        env = self.env
        done = env.event()
        env.process(self._arrivals(done))
        for lane in self.sched.policy.lanes:
            env.process(self._lane(lane, done))
        try:
            env.run(until=done)
        except RuntimeError as exc:  # SimPy's own "nothing left to happen"; core errors propagate
            if type(exc) is not RuntimeError or env.peek() != simpy.core.Infinity:
                raise
            self.sched.fail_all("stalled: no lane had work for this request", env.now)
            stopped = "stalled"
        records = self.sched.finished()
        end = max((r.finish_s for r in records), default=0.0)
        return RunResult(records, end, time.perf_counter() - start, self._busy_s, self._timeline,
                         self._kv_peak, self.engine.total_blocks, stopped)

    # --- processes ------------------------------------------------------------------------

    def _notify(self) -> None:
        if self._wake.callbacks:  # some lane sleeps on it
            self._wake.succeed()
            self._wake = self.env.event()

    def _check_done(self, done: simpy.Event) -> None:
        if self._arrived and not self.sched.active and not done.triggered:
            done.succeed()

    def _arrivals(self, done: simpy.Event):
        env = self.env
        for req in self.requests:
            if req.arrival_s > env.now:
                yield env.timeout(req.arrival_s - env.now)
            self.sched.submit(req, env.now)
            self._notify()
        self._arrived = True
        self._check_done(done)

    def _lane(self, lane: Lane, done: simpy.Event):
        env, sched, name = self.env, self.sched, lane.value
        dispatch = getattr(self.latency.profile.dispatch, f"{name}_s", 0.0)  # the core's own work per item
        timeline = self._timeline if self._keep_timeline else None
        busy, free, execute, timeout = self._busy_s, self._lane_free, self._execute, env.timeout  # (hot loop)
        while True:
            now = env.now
            item = sched.next_work(lane, now)
            if item is None:
                yield self._wake
                continue
            seconds, result, args, changed = execute(item, now - free[name])
            if seconds:
                yield timeout(seconds + dispatch)
                now = free[name] = env.now
                busy[name] += seconds
                if timeline is not None:
                    timeline.append((name, type(item).__name__, now - seconds - dispatch, seconds, args))
            sched.complete(item, result, now)
            if changed:
                self._notify()
                self._check_done(done)

    def _execute(self, item: WorkItem, idle_s: float):
        """(seconds, result, timeline args, whether other lanes may have new work); `idle_s`:
        how long the item's lane sat idle before it (a cold embedder is slower)."""
        if isinstance(item, GenStep):
            self.engine.apply(item)
            seconds, res = self.engine.step()
            if res.kv_used_blocks > self._kv_peak:
                self._kv_peak = res.kv_used_blocks
            args = res.timeline_args() if self._keep_timeline else {}
            return seconds, res, args, may_open_work(res) or not seconds
        sizes, vec_bytes = self.latency.list_sizes, self.latency.profile.index.bytes_per_vector
        if isinstance(item, SearchBatch):
            f = item.timeline_args(sizes)  # the call's features: priced here, shown on the timeline
            if item.lane is Lane.GPU_RETRIEVAL:
                seconds = self.latency.gpu_search_s(f["vectors"] * vec_bytes)
            else:
                seconds = self.latency.search_call_s(f, idle_s)
            return seconds, _NO_TOPK, f, True
        assert isinstance(item, CacheLoad)
        f = item.timeline_args(sizes)
        return self.latency.pcie_s(f["vectors"] * vec_bytes), CacheLoadResult(item.load), f, True
