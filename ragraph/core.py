"""The scheduler core: a deterministic, sans-IO state machine over requests and lanes.

Over 500 lines: the three calls, the policies' actions and the engine-run shortcut
(`quiet_gen_steps` / `complete_quiet`) all change the same request and lane state.

Theory of operation
-------------------
Both bodies drive the core with three calls and nothing else::

    sched.submit(request, now)            # a request arrives
    item = sched.next_work(lane, now)     # an idle lane asks what to do (None: nothing)
    sched.complete(item, result, now)     # the lane finished that item

The core owns the run state of every active request (`ragraph.runtime`) and moves nodes
through the transition table of `ragraph.state`. *What* to run is the policy's decision
(`ragraph.policies`): `next_work` asks the policy's planner for that lane and records the
dispatch. The core knows no clock (time is passed in), runs no threads and does no I/O;
the same calls, in the same order, give the same decisions.

Invariants the core enforces: a lane holds at most one item (asking a busy lane raises);
a result must match the lane's current item; every submitted request ends COMPLETED or
FAILED with a reason, and appears once in `finished()`.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable
from math import ceil

from ragraph import cluster_order
from ragraph.graph import Generate, NodeKey, PrefixId, Request, Retrieve, query_prefix
from ragraph.kvpolicy import DEFAULT_KV_POLICY, KVPolicy, prefix_steps
from ragraph.policies.base import Policy
from ragraph.records import RequestRecord, record_of
from ragraph.runtime import NodeRun, RequestRun, SchedulerError, generate_spec, retrieve_spec
from ragraph.state import NodeEvent, NodeState, RequestEvent, RequestState, advance_request
from ragraph.synthesis import ConfigError, expand
from ragraph.view import SchedulerView
from ragraph.work import (
    LANES,
    CacheLoadResult,
    GenStep,
    GenStepResult,
    GenTask,
    Lane,
    QuietRun,
    Result,
    ScanTask,
    SearchBatch,
    SearchResult,
    WorkItem,
)


def _no_tokens(text: str) -> int:
    """No token counter: query texts are not priced (0 tokens)."""
    return 0


class LaneBusy(RuntimeError):
    """next_work was called for a lane that still holds an item."""


GEN_STEP_EMA = 0.2  # weight of the newest generation-step duration in its moving average
_CONTINUE = GenStep()  # an engine step with nothing to add or drop
_RESULT_OF = {GenStep: GenStepResult, SearchBatch: SearchResult}  # result type per item type (else CacheLoadResult)


class Scheduler:
    """Owns request state; asks the policy what each idle lane should run."""

    def __init__(self, policy: Policy, kv_policy: KVPolicy | None = None,
                 text_tokens: Callable[[str], int] | None = None) -> None:
        self.policy = policy
        # a query text's length in the embedder's tokens (what its embedding is priced by); None: 0
        self._text_tokens = text_tokens or _no_tokens
        self.kv_policy = kv_policy or KVPolicy(DEFAULT_KV_POLICY)
        self._kv_dirty = self.kv_policy.wants_steps  # the graphs in flight changed since the last kv_steps
        self.requests: dict[str, RequestRun] = {}  # active requests by id
        # Generate nodes READY (or SPECULATIVE) and not yet handed to the engine, oldest first
        self.gen_ready: dict[NodeKey, NodeRun] = {}
        # Generate nodes handed to the engine and not finished
        self.gen_in_engine: dict[NodeKey, NodeRun] = {}
        # Retrieve nodes with clusters not yet dispatched, oldest first (the retrieval wavefront)
        self.retr_waiting: dict[NodeKey, NodeRun] = {}
        # Retrieve nodes started speculatively on a partial generation, not yet dispatched
        self.retr_speculative: dict[NodeKey, NodeRun] = {}
        self.gpu_cache: set[int] = set()  # clusters resident in the GPU index cache
        self.gen_step_s: float | None = None  # moving average of engine step durations
        self.decode_tokens_s = 0.0  # moving average of decode tokens per second of engine steps
        self.aborted_tokens = 0  # output tokens decoded by aborted (speculative) sequences, all steps
        self.kv_used_blocks = 0  # as last reported by the engine
        self.kv_total_blocks = 0
        self.kv_block_tokens = 0  # tokens per KV block, as the engine reports it (0 before its first step)
        self.engine_waiting = 0  # sequences the engine reports as queued
        self._aborts: list[NodeKey] = []  # speculative sequences to drop at the next step
        self._gen_steps = 0  # engine steps that ran sequences
        self._watch: dict[NodeKey, float] = {}  # Generate node -> share of its output to report
        self._due: list[tuple[int, int, NodeKey]] = []  # (engine step, tie-break, node) of watched generations
        self._busy: dict[Lane, WorkItem | None] = dict.fromkeys(LANES)
        self._dispatched_s: dict[Lane, float] = dict.fromkeys(LANES, 0.0)
        self._finished: list[RequestRecord] = []
        self._submitted = 0
        self.view = SchedulerView(self)  # what the policy is handed

    # --- the three calls ------------------------------------------------------------------

    def submit(self, request: Request, now: float) -> None:
        """Called by a body when `request` arrives; its source nodes become READY.

        Raises SchedulerError for a duplicate id (state unchanged)."""
        if request.id in self.requests:
            raise SchedulerError(f"request id {request.id!r} is already active")
        run = RequestRun.start(request)
        self.requests[request.id] = run
        self._kv_dirty = self.kv_policy.wants_steps
        self._submitted += 1
        self.policy.on_submit(self.view, run, now)
        for node in run.nodes:
            if node.deps_left == 0:
                self._make_ready(node, now)

    def next_work(self, lane: Lane, now: float) -> WorkItem | None:
        """Called by a body when `lane` is idle: the item it should run now, or None.

        The lane is busy with the returned item until `complete` (or `fail_item`). Raises
        LaneBusy, with nothing changed, if the lane still holds an item."""
        if self._busy[lane] is not None:
            raise LaneBusy(f"lane {lane.value} is still running an item")
        self._now = now
        if lane is Lane.GPU_GEN:
            item: WorkItem | None = self._plan_gen(now)
        elif lane is Lane.PCIE:
            item = self.policy.plan_pcie(self.view, now)
        else:
            item = self.policy.plan_search(self.view, lane, now)
        if item is not None:
            if item.lane is not lane:
                raise SchedulerError(f"{type(self.policy).__name__} planned a {item.lane.value} item"
                                     f" when {lane.value} asked")
            self._busy[lane] = item
            self._dispatched_s[lane] = now
        return item

    def complete(self, item: WorkItem, result: Result, now: float) -> None:
        """Called by a body when `item` finished on its lane, with what it produced. Raises
        SchedulerError, with nothing changed, if the lane does not hold `item`."""
        self._release_lane(item)
        self._now = now
        expected = _RESULT_OF.get(type(item), CacheLoadResult)
        if not isinstance(result, expected):
            self._busy[item.lane] = item  # nothing changed
            raise SchedulerError(f"a {type(item).__name__} completed with a {type(result).__name__}")
        if isinstance(item, GenStep):
            self._complete_gen(item, result, now)  # type: ignore[arg-type]
        elif isinstance(item, SearchBatch):
            self._complete_search(item, result, now)  # type: ignore[arg-type]
        else:
            self.gpu_cache.difference_update(item.evict)
            self.gpu_cache.update(result.loaded)  # type: ignore[union-attr]

    def quiet_gen_steps(self) -> int:
        """Called by a body after `next_work` handed `gpu_gen` an item: how many engine steps, this
        one first, the core would complete with nothing to decide, if each is quiet (finishes and
        refuses nothing, runs something: not `may_open_work`): after each it would ask for a plain
        continuation step and tell the policy nothing (nothing waits to be admitted or aborted,
        the KV policy's steps are current, no watched generation is due). A body may then run up
        to that many steps and one more before their times and hand the quiet ones to
        `complete_quiet`."""
        if self._aborts or self._kv_dirty or not self.gen_in_engine or \
                (self.gen_ready and not self.policy.holds_generations(self.view)):
            return 0
        due = self._due
        return due[0][0] - self._gen_steps - 1 if due else 1 << 62

    def complete_quiet(self, item: GenStep, run: QuietRun) -> GenStep:
        """Called by a body in place of `complete(item, r, t)` and `next_work(gpu_gen, t)` for each
        step of `run`, in order: engine steps that ran while `quiet_gen_steps` allowed them, each
        quiet; the core's state after it is the same as after those calls. Returns the
        continuation step the lane now runs (complete it as usual). Raises SchedulerError, with
        nothing changed, if the lane does not hold `item` or more steps are handed than allowed."""
        lane = Lane.GPU_GEN
        if self._busy[lane] is not item:
            raise SchedulerError(f"lane {lane.value} is not running that item")
        if len(run.ends) > self.quiet_gen_steps():
            raise SchedulerError(f"complete_quiet was handed {len(run.ends)} steps, {self.quiet_gen_steps()} allowed")
        ema, rate, last = self.gen_step_s, self.decode_tokens_s, self._dispatched_s[lane]
        for now, tokens in zip(run.ends, run.decode_tokens, strict=True):  # _complete_gen's moving averages
            took = now - last
            ema = took if ema is None else ema + GEN_STEP_EMA * (took - ema)
            if took > 0:
                rate += GEN_STEP_EMA * (tokens / took - rate)
            last = now
        self.gen_step_s, self.decode_tokens_s = ema, rate
        self._gen_steps += len(run.ends)
        self.kv_used_blocks, self.kv_total_blocks = run.kv_used_blocks, run.kv_total_blocks
        self.aborted_tokens += run.aborted_tokens
        self.engine_waiting = run.waiting
        self._dispatched_s[lane] = self._now = last
        self._busy[lane] = _CONTINUE
        return _CONTINUE

    def fail_item(self, item: WorkItem, reason: str, now: float) -> None:
        """Called by a body when running `item` raised: every request it touched fails."""
        self._release_lane(item)
        if isinstance(item, GenStep):
            keys = [*self.gen_in_engine, *(t.key for t in item.admit)]
        elif isinstance(item, SearchBatch):
            keys = [t.key for t in item.tasks]
        else:
            return
        for rid in dict.fromkeys(k[0] for k in keys):
            if rid in self.requests:
                self.fail_request(rid, reason, now)

    def report(self) -> dict[str, object]:
        """What the policy's techniques did so far (`Policy.report`), for summary.json."""
        return self.policy.report(self.view)

    def finished(self) -> list[RequestRecord]:
        """Records of every request that ended, in the order they ended."""
        return self._finished

    # --- queries for bodies and policies ----------------------------------------------------

    @property
    def active(self) -> int:
        """Requests submitted and not yet ended."""
        return len(self.requests)

    def busy(self, lane: Lane) -> bool:
        return self._busy[lane] is not None

    # --- actions for policies ---------------------------------------------------------------

    # the order of a retrieval's clusters not yet dispatched: the node's alone (`ragraph.cluster_order`)
    reorder = staticmethod(cluster_order.reorder)
    sort_remaining = staticmethod(cluster_order.sort_remaining)
    partition_remaining = staticmethod(cluster_order.partition_remaining)

    def take_clusters(self, node: NodeRun, count: int) -> ScanTask:
        """Dispatch the next `count` clusters of a waiting Retrieve node as one scan.

        The query's first scan carries the length of the text the body embeds for it (the
        node's `query`, else its request's `question`; 0 where there is none) and the
        candidates seeded by `reorder`."""
        spec = retrieve_spec(node)
        if count <= 0 or count > node.remaining:
            raise SchedulerError(f"{node.key}: cannot take {count} of {node.remaining} clusters")
        first = node.next_pos == 0
        if node.state is NodeState.READY:
            node.fire(NodeEvent.DISPATCH)
            node.start_s = self._now
        clusters = node.order[node.next_pos:node.next_pos + count]
        node.next_pos += count
        node.in_flight += 1
        node.substages += 1
        if node.remaining == 0:
            del self.retr_waiting[node.key]
        tokens = self.query_tokens(node) if first else 0
        return ScanTask(node.key, clusters, spec.k, first, node.remaining == 0, tokens, node.seed if first else ())

    def query_tokens(self, node: NodeRun) -> int:
        """Tokens of the text a body embeds for a Retrieve node's query, as its embedder counts
        them (0: no text, and the body embeds nothing; or no counter was given)."""
        text = self._query_text(node)
        return self._text_tokens(text) if text else 0

    def _query_text(self, node: NodeRun) -> str:
        """A Retrieve node's query text: its own `query`, else its request's `question`."""
        return retrieve_spec(node).query or self.requests[node.key[0]].request.question

    def speculate(self, node: NodeRun, now: float) -> None:
        """Start a BLOCKED Generate node early on partial inputs (edge addition)."""
        generate_spec(node)
        if node.state is not NodeState.BLOCKED:
            raise SchedulerError(f"{node.key}: only a BLOCKED node may start speculatively ({node.state.value})")
        node.fire(NodeEvent.SPECULATE)
        node.speculated = True
        node.ready_s = node.ready_s if node.ready_s is not None else now
        self.gen_ready[node.key] = node

    def watch_generation(self, node: NodeRun, fraction: float) -> None:
        """Have the policy told (`on_generation_progress`) when Generate `node` has decoded about
        `fraction` of its output: estimated as admission + one prefill step + that many engine
        steps (an engine runs each admitted sequence about once a step)."""
        spec = generate_spec(node)
        if not 0 < fraction < 1:
            raise SchedulerError(f"{node.key}: watch a fraction in (0, 1), not {fraction}")
        self._watch[node.key] = fraction
        if node.key in self.gen_in_engine:
            self._schedule_watch(node.key, spec)

    def speculate_retrieval(self, node: NodeRun, fraction: float, now: float) -> None:
        """Start a BLOCKED Retrieve node, whose one input is a running generation, on the first
        `fraction` of its query (edge addition): `take_speculative` dispatches it as one search."""
        retrieve_spec(node)
        if node.state is not NodeState.BLOCKED or node.deps_left != 1:
            raise SchedulerError(f"{node.key}: only a BLOCKED retrieval waiting on one node may speculate")
        if not 0 < fraction < 1:
            raise SchedulerError(f"{node.key}: speculate on a fraction in (0, 1), not {fraction}")
        node.fire(NodeEvent.SPECULATE)
        node.speculated = True
        node.spec_prefix = fraction
        self.retr_speculative[node.key] = node

    def take_speculative(self, node: NodeRun) -> ScanTask:
        """Dispatch the speculative search of `node` (whole, on its query's prefix)."""
        if self.retr_speculative.pop(node.key, None) is None:
            raise SchedulerError(f"{node.key}: no speculative retrieval waits to be dispatched")
        spec = retrieve_spec(node)
        node.in_flight += 1
        prefix = query_prefix(self._query_text(node), node.spec_prefix)
        return ScanTask(node.key, spec.clusters, spec.k, True, True, self._text_tokens(prefix) if prefix else 0,
                        (), node.spec_prefix)

    def restart_speculation(self, node: NodeRun, now: float) -> None:
        """Throw away a speculative Generate node's work and start it again (its partial
        inputs changed); it stays SPECULATIVE."""
        generate_spec(node)
        if node.state not in (NodeState.SPECULATIVE, NodeState.SPEC_DONE):
            raise SchedulerError(f"{node.key}: only a speculative node may restart ({node.state.value})")
        if self.gen_in_engine.pop(node.key, None) is not None:
            self._aborts.append(node.key)
        node.fire(NodeEvent.RESTART)
        node.aborted += 1
        self.gen_ready.pop(node.key, None)
        self.gen_ready[node.key] = node

    def fail_request(self, request_id: str, reason: str, now: float) -> None:
        """End an active request as FAILED; its unfinished nodes are cancelled."""
        run = self.requests.pop(request_id)
        for node in run.nodes:
            if node.state in (NodeState.DONE, NodeState.FAILED):
                continue
            node.fire(NodeEvent.FAIL)
            self.gen_ready.pop(node.key, None)
            self.retr_waiting.pop(node.key, None)
            self.retr_speculative.pop(node.key, None)
            self._watch.pop(node.key, None)
            if self.gen_in_engine.pop(node.key, None) is not None:
                self._aborts.append(node.key)
        run.state = advance_request(run.state, RequestEvent.FAIL)
        run.reason = reason
        self._end(run, now)

    def fail_all(self, reason: str, now: float) -> None:
        """End every active request as FAILED (shutdown, horizon reached, Ctrl-C)."""
        for rid in list(self.requests):
            self.fail_request(rid, reason, now)

    # --- internals ------------------------------------------------------------------------------

    _now = 0.0  # time of the call being served, for timestamps set by policy actions

    def _release_lane(self, item: WorkItem) -> None:
        lane = item.lane
        if self._busy[lane] is not item:
            raise SchedulerError(f"lane {lane.value} is not running that item")
        self._busy[lane] = None

    def _node(self, key: NodeKey) -> NodeRun | None:
        run = self.requests.get(key[0])
        return run.nodes[key[1]] if run is not None else None

    def _make_ready(self, node: NodeRun, now: float) -> None:
        node.fire(NodeEvent.DEPS_DONE)
        self._kv_dirty = self.kv_policy.wants_steps
        self._queue_ready(node, now)

    def _queue_ready(self, node: NodeRun, now: float) -> None:
        """A READY node joins its queue (a retrieval's policy may reorder it first)."""
        node.ready_s = now
        if isinstance(node.spec, Retrieve):
            self.retr_waiting[node.key] = node
            self.policy.on_retrieve_ready(self.view, node, now)
        else:
            self.gen_ready[node.key] = node

    def _plan_gen(self, now: float) -> GenStep | None:
        if not self.gen_ready and not self._aborts:  # the common case: keep stepping
            if not self.gen_in_engine:
                return None
            return _CONTINUE if not self._kv_dirty else GenStep(kv_steps=self._kv_steps())
        admit_nodes = self.policy.admit_generations(self.view, now)
        admit: list[GenTask] = []
        for node in admit_nodes:
            spec: Generate = generate_spec(node)
            del self.gen_ready[node.key]
            if node.state is NodeState.READY:
                node.fire(NodeEvent.DISPATCH)
            if node.start_s is None:
                node.start_s = now
            self.gen_in_engine[node.key] = node
            if node.key in self._watch:
                self._schedule_watch(node.key, spec)
            admit.append(GenTask(node.key, spec.prompt_tokens, spec.output_tokens, spec.prefix,
                                 spec.prefix_tokens, node.state is NodeState.SPECULATIVE, spec.hash_ids,
                                 spec.block_tokens))
        if not admit and not self.gen_in_engine and not self._aborts:
            return None
        step = GenStep(tuple(admit), tuple(self._aborts), self._kv_steps() if self._kv_dirty else None)
        self._aborts.clear()
        return step

    def _kv_steps(self) -> tuple[tuple[PrefixId, int], ...]:
        """Steps to execution of the declared prefixes of the requests in flight (ragraph.kvpolicy)."""
        self._kv_dirty = False
        return prefix_steps(self.requests.values())

    def _complete_gen(self, step: GenStep, res: GenStepResult, now: float) -> None:
        took = now - self._dispatched_s[Lane.GPU_GEN]
        if res.running:
            ema = self.gen_step_s
            self.gen_step_s = took if ema is None else ema + GEN_STEP_EMA * (took - ema)
            if took > 0:
                self.decode_tokens_s += GEN_STEP_EMA * (res.decode_tokens / took - self.decode_tokens_s)
            self._gen_steps += 1
            due = self._due
            while due and due[0][0] <= self._gen_steps:
                key = heapq.heappop(due)[2]
                node = self.gen_in_engine.get(key)
                if node is not None and key in self._watch:
                    self.policy.on_generation_progress(self.view, node, self._watch[key], now)
        self.kv_used_blocks, self.kv_total_blocks = res.kv_used_blocks, res.kv_total_blocks
        if res.kv_block_tokens:
            self.kv_block_tokens = res.kv_block_tokens
        self.aborted_tokens += res.aborted_tokens
        self.engine_waiting = res.waiting
        for key, reason in res.rejected:
            self.gen_in_engine.pop(key, None)
            if key[0] in self.requests:
                self.fail_request(key[0], reason, now)
        for key in res.finished:
            node = self.gen_in_engine.pop(key, None)
            if node is None:  # aborted or failed after the step was dispatched
                continue
            node.fire(NodeEvent.FINISH)
            if node.state is NodeState.DONE:
                self._finish_node(node, now)

    def _schedule_watch(self, key: NodeKey, spec: Generate) -> None:
        steps = self._gen_steps + 1 + ceil(self._watch[key] * spec.output_tokens)
        heapq.heappush(self._due, (steps, len(self._due), key))

    def _complete_search(self, batch: SearchBatch, res: SearchResult, now: float) -> None:
        for task in batch.tasks:
            node = self._node(task.key)
            if node is None or node.state is NodeState.FAILED:
                continue
            node.in_flight -= 1
            if task.prefix < 1:
                self._complete_speculative_search(node, res.topk.get(task.key, ()), now)
                continue
            node.topk = res.topk.get(task.key, node.topk)
            if batch.lane is Lane.GPU_RETRIEVAL:
                node.gpu_clusters += len(task.clusters)
            if node.remaining == 0 and node.in_flight == 0:
                node.fire(NodeEvent.FINISH)
                self._finish_node(node, now)
            else:
                self.policy.on_search_progress(self.view, node, now)

    def _complete_speculative_search(self, node: NodeRun, topk: tuple[int, ...], now: float) -> None:
        node.spec_topk = topk
        if node.redo_when_landed:  # its generation finished meanwhile: search the real query now
            node.redo_when_landed = False
            self._redo_retrieval(node, now)
            return
        node.fire(NodeEvent.FINISH)  # SPEC_DONE: its result is speculative
        node.topk = topk
        self.policy.on_search_progress(self.view, node, now)  # a generation may speculate on it

    def _finish_node(self, node: NodeRun, now: float) -> None:
        node.end_s = now
        run = self.requests[node.key[0]]
        run.done += 1
        self._watch.pop(node.key, None)
        self.policy.on_node_done(self.view, node, now)
        for ci in node.children:
            child = run.nodes[ci]
            child.deps_left -= 1
            if child.deps_left:
                continue
            if child.state is NodeState.BLOCKED:
                self._make_ready(child, now)
            else:  # it was started speculatively: the policy keeps or redoes it
                self._resolve_speculation(child, now)
        if run.done == len(run.nodes) and run.config is None and run.request.synthesis is not None \
                and run.state is RequestState.ACTIVE:
            self._configure(run, now)
        # a confirmed speculative child may have finished the request already, recursively
        if run.done == len(run.nodes) and run.state is RequestState.ACTIVE:
            run.state = advance_request(run.state, RequestEvent.ALL_DONE)
            del self.requests[run.request.id]
            self._end(run, now)

    def _configure(self, run: RequestRun, now: float) -> None:
        """Every fixed node of `run` is done: the policy fixes its synthesis configuration, and
        the nodes that configuration needs join the graph (their fan-out on its last node)."""
        syn = run.request.synthesis
        assert syn is not None
        config = self.policy.configure(self.view, run, now)
        first = len(run.nodes)
        try:
            specs, deps = expand(syn, config, first, (first - 1,), run.request.workflow)
        except ConfigError as exc:
            raise SchedulerError(f"{type(self.policy).__name__} configured request {run.request.id!r}"
                                 f" with {config.label}: {exc}") from None
        run.config = config
        for i, (spec, ds) in enumerate(zip(specs, deps, strict=True), start=first):
            run.nodes.append(NodeRun(key=(run.request.id, i), spec=spec, deps_left=sum(d >= first for d in ds)))
            run.deps.append(ds)
            for d in ds:
                if d >= first:
                    run.nodes[d].children.append(i)
        for node in run.nodes[first:]:
            if node.deps_left == 0:
                self._make_ready(node, now)

    def _resolve_speculation(self, node: NodeRun, now: float) -> None:
        if node.is_retrieve:  # the real query is known now: search it (seeded with the speculative result)
            if self.retr_speculative.pop(node.key, None) is not None or node.state is NodeState.SPEC_DONE:
                self._redo_retrieval(node, now)
            else:  # its speculative search is in flight: redo when it lands
                node.redo_when_landed = True
            return
        if self.policy.keep_speculation(self.view, node, now):
            node.fire(NodeEvent.CONFIRM)
            if node.state is NodeState.DONE:
                self._finish_node(node, now)
            return
        if node.state is NodeState.SPECULATIVE and self.gen_in_engine.pop(node.key, None) is not None:
            self._aborts.append(node.key)
        self.gen_ready.pop(node.key, None)
        node.fire(NodeEvent.ABORT)
        node.aborted += 1
        self._queue_ready(node, now)

    def _redo_retrieval(self, node: NodeRun, now: float) -> None:
        """A speculatively started Retrieve node's query is final: it searches that query like
        a node that just became READY, its heap seeded with what the speculation found."""
        node.fire(NodeEvent.ABORT)
        node.topk = ()
        node.seed = tuple(i for i in node.spec_topk or () if i >= 0)
        self._queue_ready(node, now)

    def _end(self, run: RequestRun, now: float) -> None:
        run.finish_s = now
        self._kv_dirty = self.kv_policy.wants_steps
        assert run.state is not RequestState.ACTIVE
        self._finished.append(record_of(run, self.policy.name))
        self.policy.on_request_end(self.view, run, now)
