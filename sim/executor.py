"""The simulated body: SimPy processes that run the scheduler core's lanes.

One process per lane and one for arrivals. A lane process asks the core for work, waits
the modelled duration (from the profile's latency models), hands the result back, and
wakes the other lanes; when the core has nothing for it, it sleeps on a shared wake-up
event. The processes hold no policy. Same trace, profile, policy and seed: same result.

Search results: where the trace records a retrieval's outcome (`Retrieve.truth`), a scan
returns the query's running top-k as the real search would hold it after the clusters
scanned so far (`SearchTruth.partial_topk`, seeded by its first sub-stage's `seed`); the
executor keeps the scanned clusters per query until its last sub-stage is done
(`_TruthScans`). Without truth the top-k is empty (the analytic models synthesize no
neighbour ids).
"""

from __future__ import annotations

import gc
import heapq
import math
import time
from dataclasses import dataclass, field

import simpy

from hwmodel.latency import LatencyModel, contended_s
from ragraph.core import Scheduler
from ragraph.graph import PREFIX_FRACTIONS, NodeKey, Request, Retrieve, SearchTruth
from ragraph.kvpolicy import DEFAULT_KV_POLICY, KVPolicy
from ragraph.policies.base import Policy
from ragraph.records import RunResult, StopReason
from ragraph.work import (
    SEARCH_FEATURES,
    CacheLoad,
    CacheLoadResult,
    GenStep,
    GenStepResult,
    Lane,
    QuietRun,
    SearchBatch,
    SearchResult,
    WorkItem,
)
from sim.gen_engine import GenEngineModel
from sim.heat_numpy import NumpyHeatTable
from sim.timeline import Timeline

_NO_TOPK = SearchResult()  # no scanned query has truth: no neighbour ids


@dataclass(eq=False, slots=True)
class _Scan:
    """One query's search in progress: what its completed sub-stages scanned."""

    seed: frozenset[int]  # ids merged before the first scan (ScanTask.seed)
    scanned: set[int] = field(default_factory=set)  # clusters of the completed sub-stages
    in_flight: int = 0  # sub-stages dispatched and not yet completed
    ended: bool = False  # its last sub-stage was dispatched


class _TruthScans:
    """The running top-k of queries with recorded truth (`Retrieve.truth`).

    `start` at dispatch, `finish` at completion: a sub-stage's result is the heap after its own
    scan and every scan of the query completed before it, as on the real body, where sub-stages
    on two lanes take turns on the query's heap. A query's state is dropped once its last
    sub-stage and every other one in flight have completed; a first sub-stage starts afresh
    (a retrieval redone after an aborted speculation)."""

    def __init__(self, requests: list[Request]) -> None:
        self.truth: dict[NodeKey, SearchTruth] = {
            (r.id, i): n.truth for r in requests for i, n in enumerate(r.nodes)
            if isinstance(n, Retrieve) and n.truth is not None}
        self._open: dict[NodeKey, _Scan] = {}
        self._pending: dict[int, list[_Scan | None]] = {}  # id(batch) -> its tasks' scans

    def start(self, batch: SearchBatch) -> None:
        if not self.truth:
            return
        scans: list[_Scan | None] = []
        for t in batch.tasks:
            if t.key not in self.truth or t.prefix < 1:  # a speculative search: judged whole in finish
                scans.append(None)
                continue
            scan = self._open.get(t.key)
            if t.first or scan is None:
                scan = self._open[t.key] = _Scan(frozenset(t.seed))
            scan.in_flight += 1
            scan.ended |= t.last
            scans.append(scan)
        self._pending[id(batch)] = scans

    def finish(self, batch: SearchBatch) -> SearchResult:
        scans = self._pending.pop(id(batch), None)
        if scans is None:
            return _NO_TOPK
        topk: dict[NodeKey, tuple[int, ...]] = {}
        for t, scan in zip(batch.tasks, scans, strict=True):
            if scan is None:
                if t.prefix < 1 and t.key in self.truth:
                    topk[t.key] = self._speculative(self.truth[t.key], t.prefix)
                continue
            scan.scanned.update(t.clusters)
            scan.in_flight -= 1
            topk[t.key] = self.truth[t.key].partial_topk(scan.scanned, scan.seed)
            if scan.ended and not scan.in_flight and self._open.get(t.key) is scan:
                del self._open[t.key]
        return SearchResult(topk) if topk else _NO_TOPK

    @staticmethod
    def _speculative(truth: SearchTruth, prefix: float) -> tuple[int, ...]:
        """What a search on the first `prefix` of the query finds: the final top-k where the
        trace says that prefix finds it, else ids that differ from it (placeholders)."""
        i = PREFIX_FRACTIONS.index(prefix) if prefix in PREFIX_FRACTIONS else -1
        if i >= 0 and i < len(truth.prefix_same) and truth.prefix_same[i]:
            return truth.topk
        return tuple(range(-1, -1 - max(len(truth.topk), 1), -1))


class _Environment(simpy.Environment):
    """SimPy's environment with a timeout at an absolute time: a time summed step by step is not
    always `now + d` for any float d (when `now` has a finer last bit than the sum, half of the
    sums in reach round away), so a run of engine steps ends where its steps would have."""

    def timeout_at(self, at: float) -> simpy.Event:
        """An event processed at time `at` (>= now), ordered like a Timeout made now."""
        event = simpy.Event(self)
        event._ok, event._value = True, None  # (what Timeout.__init__ sets; it then schedules by delay)
        heapq.heappush(self._queue, (at, simpy.core.NORMAL, next(self._eid), event))
        return event


class Simulation:
    """Runs `requests` through `policy` on the hardware described by `latency`."""

    fold_steps = True  # advance quiet runs of engine steps with one timeout (tests switch it off: same results)
    numpy_heat = True  # the GPU index cache's heat table in numpy (sim.heat_numpy; off: the pure one, same results)

    def __init__(self, requests: list[Request], policy: Policy, latency: LatencyModel, *,
                 seed: int = 0, timeline: bool = True, kv_policy: KVPolicy | None = None) -> None:
        self.requests = sorted(requests, key=lambda r: r.arrival_s)
        kv_policy = kv_policy or KVPolicy(DEFAULT_KV_POLICY)
        if self.numpy_heat:
            policy.use_heat_table(NumpyHeatTable)
        self.sched = Scheduler(policy, kv_policy, latency.text_tokens)
        self.latency = latency
        self.seed = seed  # feeds stochastic result models; the analytic models use none
        self.engine = GenEngineModel(latency, kv_policy)
        self.env = _Environment()
        self._wake = self.env.event()
        self._keep_timeline = timeline
        self._timeline = Timeline()
        self._busy_s = dict.fromkeys((lane.value for lane in Lane), 0.0)
        self._lane_free = dict.fromkeys((lane.value for lane in Lane), -math.inf)  # when each lane's last item ended
        # lane contention (Profile.contention): when the engine's current step and the CPU search
        # call in flight end; an item started before then runs slower over the overlap
        contention = latency.profile.contention
        self._gen_slowdown, self._search_slowdown = contention.gen_step_slowdown, contention.cpu_search_slowdown
        self._gen_busy_until = self._search_busy_until = -math.inf
        self._kv_peak = 0
        self._arrived = False
        self._cache_blocks: dict[int, int] = {}  # GPU-cached cluster -> KV blocks lent for it
        self._scans = _TruthScans(self.requests)

    def run(self) -> RunResult:
        """Called once: simulate every request to its end. `stopped` is "stalled" when events
        ran out with requests active (they fail with that reason, none is lost)."""
        start = time.perf_counter()
        stopped: StopReason = ""
        env = self.env
        done = env.event()
        processes = [self._arrivals(done), *(self._gen_lane(done) if lane is Lane.GPU_GEN else
                                             self._lane(lane, done) for lane in self.sched.policy.lanes)]
        for process in processes:
            env.process(process)
        collecting = gc.isenabled()
        gc.disable()  # a run makes objects by the million (a slice per step) and few cycles: collected after it
        try:
            env.run(until=done)
        except RuntimeError as exc:  # SimPy's own "nothing left to happen"; core errors propagate
            if type(exc) is not RuntimeError or env.peek() != simpy.core.Infinity:
                raise
            self.sched.fail_all("stalled: no lane had work for this request", env.now)
            stopped = "stalled"
        finally:
            for process in processes:  # the lanes sleep in generators that hold this Simulation: a cycle
                process.close()  # (with the timeline) that only the cyclic collector would free
            if collecting:
                gc.enable()
        records = self.sched.finished()
        end = max((r.finish_s for r in records), default=0.0)
        return RunResult(records, end, time.perf_counter() - start, self._busy_s, self._timeline,
                         self._kv_peak, self.engine.total_blocks, stopped, self.sched.report(),
                         self.engine.kv_cache_report())

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

    def _gen_lane(self, done: simpy.Event):
        """The engine's lane. A run of engine steps whose outcomes are known in advance is
        advanced with one timeout: while a step is quiet (it finishes and refuses nothing), the
        core would only ask for the next step (`Scheduler.quiet_gen_steps`) and nothing else is
        due before the step ends (the next SimPy event is later), the next step is run at once;
        the quiet steps are completed with their own end times (`Scheduler.complete_quiet`) and
        timeline slices before any other event can see the core, the last one when its time
        comes. Not right after a wake-up: the other lanes woken by the same event run after this
        one at the same instant, and what they start is not yet in the event queue. The engine
        model has no clock, so the same steps in the same order give the same results; the end
        times are summed step by step as single timeouts would."""
        env, sched, engine, name = self.env, self.sched, self.engine, Lane.GPU_GEN.value
        dispatch_s = self.latency.profile.dispatch.gen_dispatch_s  # the core's own work after a step
        timeline = self._timeline if self._keep_timeline else None
        woken = False  # resumed by the shared wake-up event: lanes woken after it run at this instant too
        while True:
            now = env.now
            item = sched.next_work(Lane.GPU_GEN, now)
            if item is None:
                yield self._wake
                woken = True
                continue
            host = engine.host
            if host is not None:
                host.now = now
            engine.apply(item)  # type: ignore[arg-type]  # (the generation lane's work is a GenStep)
            seconds, res = engine.step()
            if host is not None:
                self._copies(host.drain(), timeline)
            if not seconds:  # nothing ran: the engine emptied or refused what it was handed
                sched.complete(item, res, now)
                self._step_done(res, None)
                self._notify()
                self._check_done(done)
                due = engine.loads_due()
                if due > now:  # what waits is loading from the host tier: until then, or new work
                    yield self._wake | env.timeout_at(due)
                continue
            if self.latency.engine_cold and now > self._lane_free[name]:  # the engine sat idle: it runs cold
                seconds += self.latency.engine_cold_s(now - self._lane_free[name])
            if self._gen_slowdown:
                seconds = contended_s(seconds, self._search_busy_until - now, self._gen_slowdown)
            dispatch = dispatch_s(res.running)
            end = now + (seconds + dispatch)
            allowed = sched.quiet_gen_steps() if self.fold_steps and not woken else 0
            if allowed and not (res.finished or res.rejected) and end < env.peek():
                item, seconds, res, end = self._fold(item, seconds, res, end,  # type: ignore[arg-type]
                                                      allowed, dispatch, timeline)
                dispatch = dispatch_s(res.running)
            self._gen_busy_until = end - dispatch
            yield env.timeout_at(end)
            woken = False  # resumed by its own timeout: whatever else happens now is in the event queue
            now = self._lane_free[name] = env.now
            self._step_done(res, timeline, now - seconds - dispatch, seconds)
            sched.complete(item, res, now)
            if res.finished or res.rejected:
                self._notify()
                self._check_done(done)

    def _fold(self, item: GenStep, seconds: float, res: GenStepResult, end: float, allowed: int, dispatch: float,
              timeline: Timeline | None) -> tuple[GenStep, float, GenStepResult, float]:
        """Run the steps after a quiet one that ends at `end` (`dispatch` after it: the core's work
        after that step) before the next event, up to `allowed` quiet ones (decode steps in one
        go, `GenEngineModel.decode_run`), complete the quiet ones; returns (the lane's item,
        seconds, result, end) of the last step, not completed."""
        engine, horizon = self.engine, self.env.peek()
        dispatch_s = self.latency.profile.dispatch.gen_dispatch_s
        ends: list[float] = []
        decoded: list[int] = []
        aborted = res.aborted_tokens
        while True:  # `res` (ending at `end`) is quiet and ends before the horizon
            self._step_done(res, timeline, end - seconds - dispatch, seconds)
            ends.append(end)
            decoded.append(res.decode_tokens)
            used, waiting = res.kv_used_blocks, res.waiting
            dispatch = dispatch_s(engine.n_dec)  # a decode step of the run runs all n_dec sequences
            run = engine.decode_run(allowed - len(ends), end, dispatch, horizon, self._search_busy_until,
                                    self._gen_slowdown)
            if run:
                n = engine.n_dec
                decoded += [n] * len(run)
                busy, step_end = self._busy_s["gpu_gen"], ends.append
                copies = engine.host.drain() if engine.host is not None else None
                if copies:  # evictions in the run copied KV out to the host tier
                    busy = self._fold_copies(run, copies, engine.copy_marks, dispatch, ends, timeline)
                else:
                    if timeline is not None:  # a slice per step, with GenStepResult.timeline_args of a decode step,
                        # made when the timeline is read (sim.timeline: a run's rows, not ~640 bytes a step)
                        timeline.add_decode_run(run, _decode_args(n), dispatch)
                    for s, e, _, _ in run:
                        busy += s  # summed step by step, as one timeout each would
                        step_end(e)
                self._busy_s["gpu_gen"] = busy
                end, used, waiting = run[-1][1], run[-1][3], 0
                if used > self._kv_peak:
                    self._kv_peak = used
            if engine.host is not None:
                engine.host.now = end  # (its copies start then at the earliest)
            seconds, res = engine.step()  # the next step (`apply` of a continuation changes nothing)
            if engine.host is not None:
                self._copies(engine.host.drain(), timeline)
            if not seconds:
                raise RuntimeError("engine model ran nothing after a step that left sequences running")
            if self._gen_slowdown:
                seconds = contended_s(seconds, self._search_busy_until - end, self._gen_slowdown)
            dispatch = dispatch_s(res.running)
            end = end + (seconds + dispatch)
            if len(ends) >= allowed or res.finished or res.rejected or end >= horizon:
                break
        item = self.sched.complete_quiet(item, QuietRun(ends, decoded, used, engine.total_blocks, waiting, aborted))
        return item, seconds, res, end

    def _fold_copies(self, run: list[tuple[float, float, int, int]], copies: list[tuple[str, float, float, int]],
                     marks: list[int], dispatch: float, ends: list[float],
                     timeline: Timeline | None) -> float:
        """The steps of a decode run (`GenEngineModel.decode_run`) whose evictions copied KV out to
        the host tier, as `_fold` takes them, each step's copies before its own slice (as step by
        step); returns the engine lane's busy time after them."""
        args = _decode_args(self.engine.n_dec)
        busy = self._busy_s["gpu_gen"]
        for i, (s, e, c, u) in enumerate(run):
            self._copies(copies[marks[i]:marks[i + 1] if i + 1 < len(marks) else len(copies)], timeline)
            busy += s
            ends.append(e)
            if timeline is not None:
                timeline.append(("gpu_gen", "GenStep", e - s - dispatch, s,
                                 {**args, "kv_used_blocks": u, "context_tokens": c}))
        return busy

    def _copies(self, copies: list[tuple[str, float, float, int]], timeline: Timeline | None) -> None:
        """KV copies between the GPU pool and the host tier: busy time and slices of the `pcie` lane."""
        for name, start, seconds, nbytes in copies:
            self._busy_s["pcie"] += seconds
            if timeline is not None:
                timeline.append(("pcie", name, start, seconds, {"bytes": nbytes}))

    def _step_done(self, res: GenStepResult, timeline: Timeline | None, start: float = 0.0,
                   seconds: float = 0.0) -> None:
        """An engine step ended: its busy time, the KV peak, its timeline slice."""
        if res.kv_used_blocks > self._kv_peak:
            self._kv_peak = res.kv_used_blocks
        if seconds:
            self._busy_s["gpu_gen"] += seconds
            if timeline is not None:
                timeline.append(("gpu_gen", "GenStep", start, seconds, res.timeline_args()))

    def _lane(self, lane: Lane, done: simpy.Event):
        env, sched, name = self.env, self.sched, lane.value
        dispatch = getattr(self.latency.profile.dispatch, f"{name}_s", 0.0)  # the core's own work per item
        timeline = self._timeline if self._keep_timeline else None
        busy, free, execute, timeout = self._busy_s, self._lane_free, self._execute, env.timeout  # (hot loop)
        cpu_search = lane is Lane.CPU_RETRIEVAL
        slowdown = self._search_slowdown if cpu_search else 0.0
        while True:
            now = env.now
            item = sched.next_work(lane, now)
            if item is None:
                yield self._wake
                continue
            seconds, result, args, changed = execute(item, now - free[name])
            if seconds:
                if slowdown:
                    seconds = contended_s(seconds, self._gen_busy_until - now, slowdown)
                if cpu_search:
                    self._search_busy_until = now + seconds
                yield timeout(seconds + dispatch)
                now = free[name] = env.now
                busy[name] += seconds
                if timeline is not None:
                    timeline.append((name, type(item).__name__, now - seconds - dispatch, seconds, args))
            if isinstance(item, SearchBatch):
                result = self._scans.finish(item)  # the running top-k as of now, not as of the dispatch
            sched.complete(item, result, now)
            if changed:
                self._notify()
                self._check_done(done)

    def _execute(self, item: WorkItem, idle_s: float):
        """(seconds, result, timeline args, whether other lanes may have new work) of a search or a
        copy; `idle_s`: how long the item's lane sat idle before it (a cold embedder is slower)."""
        sizes, vec_bytes = self.latency.list_sizes, self.latency.profile.index.bytes_per_vector
        if isinstance(item, SearchBatch):
            f = item.features(sizes)  # the call's features: priced here, shown on the timeline
            queries, new, pairs, vectors, tokens, longest, _, calls, padded = f
            if item.lane is Lane.GPU_RETRIEVAL:
                seconds = self.latency.gpu_search_s(vectors * vec_bytes)
            else:  # (LatencyModel.search_call_s, without building its dict)
                seconds = self.latency.search_s(queries, new, pairs, vectors, longest, tokens, idle_s, calls, padded)
            self._scans.start(item)
            return seconds, _NO_TOPK, dict(zip(SEARCH_FEATURES, f, strict=True)) if self._keep_timeline else {}, True
        assert isinstance(item, CacheLoad)
        loaded = self._lend_for_cache(item, sizes, vec_bytes)
        args = CacheLoad(loaded).timeline_args(sizes)
        return self.latency.pcie_s(args["vectors"] * vec_bytes), CacheLoadResult(loaded), args, True

    def _lend_for_cache(self, item: CacheLoad, sizes: list[int], vec_bytes: int) -> tuple[int, ...]:
        """The GPU index cache and the KV cache share GPU memory: evicted clusters give their
        blocks back to the engine, loaded ones borrow free blocks (in the load's order, hottest
        first) while the engine has them to lend; the clusters that got memory are returned."""
        engine, block_bytes = self.engine, self.latency.kv_block_bytes
        for c in item.evict:
            engine.reclaim(self._cache_blocks.pop(c, 0))
        loaded = []
        for c in item.load:
            need = -(-sizes[c] * vec_bytes // block_bytes)
            got = engine.lend(need)
            if got < need:
                engine.reclaim(got)
                break
            self._cache_blocks[c] = need
            loaded.append(c)
        return tuple(loaded)


def _decode_args(n: int) -> dict[str, int]:
    """The timeline args of a folded step where `n` sequences decode (`step()`'s result for it;
    the run's rows add its context and KV use)."""
    return GenStepResult(running=n, decode_tokens=n, computed_tokens=n).timeline_args()
