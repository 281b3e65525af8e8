"""The real body's executor: one thread per lane, all calling the shared scheduler core.

This is the real twin of `sim.executor` (DESIGN §3): the same `submit` / `next_work` /
`complete` calls, the same policy objects, but every lane item runs on real engines and
the clock is the wall clock. Threads:

- `arrivals` submits each request at its trace arrival time (open loop: a late submit
  still counts latency from the trace arrival);
- one thread per lane the policy uses (`gpu_gen`: vLLM steps; `cpu_retrieval`: FAISS
  sub-stages, which release the GIL; `gpu_retrieval` / `pcie`: the GPU cluster cache).

Lanes hold the core's lock only while they ask for work or hand a result back, never
while they run an item. Each lane thread may be pinned to its own CPU cores, so that on a
CPU-only machine generation and retrieval are a small but real heterogeneous pipeline.

Text: with an `AnswerFlow` (`backends.answers`: a model that answers, a trace with
questions), each engine step carries the chat prompts of the tasks it admits, each finished
generation's text is kept, and the first sub-stage of a retrieval that follows a generation
carries its query built from that text; all three under the core's lock, when the item is
taken or its result handed back.

Faults: an item that raises fails the requests it touched (`Scheduler.fail_item`) and its
lane carries on; when every lane is idle, all arrivals are in and requests are still
active, they fail as "stalled"; Ctrl-C (or `stop()`) ends the run and fails what is left
as "interrupted". Every submitted request ends completed or failed, with a reason.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Protocol

from ragraph.core import Scheduler
from ragraph.graph import NodeKey, Request
from ragraph.kvpolicy import DEFAULT_KV_POLICY, KVPolicy
from ragraph.policies.base import Policy
from ragraph.records import RunResult, StopReason, TimelineEvent
from ragraph.work import (
    CacheLoad,
    CacheLoadResult,
    GenStep,
    GenStepResult,
    Lane,
    Result,
    SearchBatch,
    SearchResult,
    WorkItem,
    may_open_work,
)

if TYPE_CHECKING:
    from backends.answers import AnswerFlow

IDLE_POLL_S = 0.05  # an idle lane re-asks at least this often (new work also wakes it at once)
STOP_GRACE_S = 30.0  # how long a stop waits for lanes to finish the item they run


class GenerationBody(Protocol):
    """What the gpu_gen lane drives (backends.vllm_engine.VLLMEngine)."""

    def apply(self, step: GenStep, prompts: Mapping[NodeKey, list[dict[str, str]]] | None = None) -> None: ...
    def step(self) -> GenStepResult: ...
    def abort_all(self) -> None: ...
    # optional: set_kv_policy(KVPolicy) before a run, kv_report() -> {"evicted_blocks": n, ...} after it


class RetrievalBody(Protocol):
    """What the retrieval and pcie lanes drive (backends.retrieval.RetrievalService)."""

    @property
    def list_sizes(self) -> Sequence[int]: ...  # vectors per IVF list, for the timeline's search args
    def search(self, batch: SearchBatch, queries: Mapping[NodeKey, str] | None = None) -> SearchResult: ...
    def load(self, item: CacheLoad) -> CacheLoadResult: ...
    def forget(self, request_id: str) -> None: ...


def pin_current_thread(cores: Iterable[int] | None) -> None:
    """Pin the calling thread (Linux: pid 0 is the calling thread) to `cores`, if given."""
    if cores:
        with contextlib.suppress(AttributeError, OSError):  # not Linux, or a core we may not use
            os.sched_setaffinity(0, set(cores))


class RealExecutor:
    """Runs `requests` through `policy` on real engines.

    `lane_setup[lane]` is called first thing in that lane's thread (pin cores, set thread
    counts); `on_request_end` tells the retrieval body a request's per-query state can go.
    `text_tokens` counts a query text's tokens as the embedder does (the search features the
    timeline records; a sub-stage budget's prices); None: 0.
    """

    def __init__(self, requests: list[Request], policy: Policy, gen: GenerationBody, retrieval: RetrievalBody,
                 *, lane_setup: dict[Lane, Callable[[], None]] | None = None, timeline: bool = True,
                 clock: Callable[[], float] = time.monotonic, answers: AnswerFlow | None = None,
                 kv_policy: KVPolicy | None = None, text_tokens: Callable[[str], int] | None = None) -> None:
        self.requests = sorted(requests, key=lambda r: r.arrival_s)
        self.kv_policy = kv_policy or KVPolicy(DEFAULT_KV_POLICY)
        # kvflow: the core attaches steps to execution to the steps (GenStep.kv_steps); the engine orders by them
        self.sched = Scheduler(policy, self.kv_policy, text_tokens)  # text_tokens: the embedder's token count
        self.gen, self.retrieval = gen, retrieval
        self.answers = answers  # real text through the run (None: synthetic prompts, trace queries)
        self._lane_setup = lane_setup or {}
        self._keep_timeline = timeline
        self._clock = clock
        self._cond = threading.Condition()  # the one lock around the core, and the wake-up signal
        self._stop = threading.Event()
        self._stopped: StopReason = ""
        self._arrived = False
        self._submitted = 0  # requests[:_submitted] were handed to the core
        self._idle: set[Lane] = set()
        self._t0 = 0.0
        self._timeline: list[TimelineEvent] = []
        self._busy_s = dict.fromkeys((lane.value for lane in Lane), 0.0)
        self._kv_peak = self._kv_total = 0
        self._prompt_cached = self._prompt_computed = self._preempted = 0  # the run's KV-cache counts
        self._ended = 0  # records already told to the retrieval body
        self._errors: list[BaseException] = []  # core errors (bugs): re-raised by run()

    def now(self) -> float:
        return self._clock() - self._t0

    def progress(self) -> tuple[int, int]:
        """(requests ended, requests in the run): for a progress display, from any thread."""
        return self._ended, len(self.requests)

    def stop(self, reason: StopReason = "interrupted") -> None:
        """End the run early (Ctrl-C does this): lanes finish their item, the rest fails."""
        with self._cond:
            self._stopped = self._stopped or reason
            self._stop.set()
            self._cond.notify_all()

    def run(self) -> RunResult:
        lanes = self.sched.policy.lanes
        set_kv_policy = getattr(self.gen, "set_kv_policy", None)  # (a test's fake engine may have none)
        if set_kv_policy is not None:
            set_kv_policy(self.kv_policy)
        self._t0 = self._clock()
        start = time.perf_counter()
        threads = [threading.Thread(target=self._guard, args=(self._arrivals,), name="arrivals", daemon=True)]
        threads += [threading.Thread(target=self._guard, args=(self._lane, lane), name=lane.value, daemon=True)
                    for lane in lanes]
        for t in threads:
            t.start()
        try:
            with self._cond:
                while not self._stop.is_set():
                    if self._arrived and not self.sched.active:
                        break
                    if self._arrived and self._idle.issuperset(lanes):
                        self._stopped = "stalled"
                        break
                    self._cond.wait(0.5)  # a bounded wait keeps Ctrl-C responsive in the main thread
        except KeyboardInterrupt:
            self._stopped = self._stopped or "interrupted"
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        deadline = time.monotonic() + STOP_GRACE_S
        for t in threads:
            t.join(max(0.0, deadline - time.monotonic()))
        with self._cond:
            now = self.now()
            if self.sched.active:
                reason = {"stalled": "stalled: no lane had work for this request",
                          "interrupted": "interrupted before it finished"}.get(self._stopped, self._stopped)
                self.sched.fail_all(reason, now)
            for req in self.requests[self._submitted:]:  # stopped before they arrived: they end too
                at = max(now, req.arrival_s)
                self.sched.submit(req, at)
                self.sched.fail_request(req.id, f"{self._stopped}: the run stopped before it arrived", at)
            self._forget_ended()
        with contextlib.suppress(Exception):  # leave the engine empty for the next run
            self.gen.abort_all()
        if self._errors:
            raise self._errors[0]
        records = self.sched.finished()
        end = max((r.finish_s for r in records), default=0.0)
        return RunResult(records, end, time.perf_counter() - start, self._busy_s, self._timeline,
                         self._kv_peak, self._kv_total, self._stopped, self.sched.report(), self._kv_cache_report())

    def _kv_cache_report(self) -> dict[str, object]:
        """summary.json `kv_cache`, with the simulator's keys: the engine's counts of cached blocks
        evicted (None where the engine does not report them) and, under kvflow, of blocks it moved
        in vLLM's free queue (`backends.kv_order`)."""
        cached, computed = self._prompt_cached, self._prompt_computed
        report = getattr(self.gen, "kv_report", None)
        engine = dict(report()) if report is not None else {}
        return {"kv_policy": self.kv_policy.spec, "prompt_tokens_cached": cached, "prompt_tokens_computed": computed,
                "hit_rate": round(cached / (cached + computed), 6) if cached + computed else 0.0,
                "evicted_blocks": engine.pop("evicted_blocks", None), "preemptions": self._preempted, **engine}

    # --- threads ------------------------------------------------------------------------------

    def _guard(self, body: Callable[..., None], *args: object) -> None:
        """A thread's body; an exception escaping it is a bug in the core or the executor:
        stop the run and let run() re-raise it."""
        try:
            body(*args)
        except BaseException as exc:
            self._errors.append(exc)
            self.stop("internal error")

    def _arrivals(self) -> None:
        for req in self.requests:
            wait = req.arrival_s - self.now()
            if wait > 0 and self._stop.wait(wait):
                return
            with self._cond:
                if self._stop.is_set():
                    return
                self.sched.submit(req, self.now())
                self._submitted += 1
                self._idle.clear()
                self._cond.notify_all()
        with self._cond:
            self._arrived = True
            self._cond.notify_all()

    def _lane(self, lane: Lane) -> None:
        setup = self._lane_setup.get(lane)
        if setup is not None:
            setup()
        name = lane.value
        while not self._stop.is_set():
            with self._cond:
                item = self.sched.next_work(lane, self.now())
                if item is None:
                    self._idle.add(lane)
                    self._cond.notify_all()  # the main thread checks for a stall
                    self._cond.wait(IDLE_POLL_S)
                    continue
                self._idle.discard(lane)
                text = self._text_of(item)
            began = self.now()
            try:
                result: Result | None = self._execute(item, text)
                error = ""
            except Exception as exc:  # an engine or search failure fails the requests it touched
                result, error = None, f"{name} error: {type(exc).__name__}: {exc}".splitlines()[0]
                if isinstance(item, GenStep):
                    with contextlib.suppress(Exception):
                        self.gen.abort_all()
            ended = self.now()
            self._busy_s[name] += ended - began
            if self._keep_timeline:
                self._timeline.append((name, type(item).__name__, began, ended - began, self._args(item, result)))
            with self._cond:
                if result is None:
                    self.sched.fail_item(item, error, ended)
                else:
                    if self.answers is not None and isinstance(result, GenStepResult):
                        self.answers.record(result)
                    self.sched.complete(item, result, ended)
                self._forget_ended()
                if may_open_work(result):
                    self._idle.clear()  # other lanes may have work now
                    self._cond.notify_all()

    # --- items -------------------------------------------------------------------------------

    def _text_of(self, item: WorkItem) -> dict | None:
        """An item's text (caller holds the lock): chat prompts of a step's admissions, query
        texts of a search's first sub-stages; None without an AnswerFlow or where there is none."""
        if self.answers is None:
            return None
        if isinstance(item, GenStep):
            return self.answers.prompts(item, self.sched) if item.admit else None
        if isinstance(item, SearchBatch):
            return self.answers.queries(item)
        return None

    def _execute(self, item: WorkItem, text: dict | None = None) -> Result:
        if isinstance(item, GenStep):
            if text:
                self.gen.apply(item, text)
            else:
                self.gen.apply(item)
            res = self.gen.step()
            self._kv_peak = max(self._kv_peak, res.kv_used_blocks)
            self._kv_total = res.kv_total_blocks
            self._prompt_cached += res.cached_prompt_tokens
            self._prompt_computed += res.prefill_tokens
            self._preempted += res.preempted
            return res
        if isinstance(item, SearchBatch):
            return self.retrieval.search(item, text) if text else self.retrieval.search(item)
        return self.retrieval.load(item)

    def _args(self, item: WorkItem, result: Result | None) -> dict[str, int]:
        if isinstance(result, GenStepResult):
            return result.timeline_args()
        if isinstance(item, SearchBatch | CacheLoad):
            return item.timeline_args(self.retrieval.list_sizes)
        return {}

    def _forget_ended(self) -> None:
        """Per-query retrieval state of requests that ended can go (caller holds the lock)."""
        records = self.sched.finished()
        for rec in records[self._ended:]:
            self.retrieval.forget(rec.id)
        self._ended = len(records)
