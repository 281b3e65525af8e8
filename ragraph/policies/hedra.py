"""`hedra`: HedraRAG's coordinated CPU-GPU pipeline (Hu et al., SOSP 2025).

Generation and retrieval run at once on their own lanes. Techniques, each switchable by
name for ablations (`hedra:no-wavefront`, `hedra:substages=fixed`, ...):

- `substages` (node splitting): a retrieval is split into sub-stages of a few clusters,
  its top-k carried from one to the next.
  `dynamic` (default): each sub-stage takes clusters from the waiting queries until its
  predicted duration reaches a budget of `budget_factor` x the current generation step
  (the paper's retrieval-centric time budget; with no generation running the budget is
  `max_budget_ms`). `fill=fifo` (default) serves the oldest query first, so queries
  leave the search one by one; `fill=round_robin` gives each query `chunk` clusters a
  round.
  `fixed`: the released artifact's pairs: each of at most `max_queries` queries scans its
  next nprobe/minibatch clusters (128/32, 256/32, 512/64).
  `off`: every query's full nprobe in one call.
- `wavefront`: each sub-stage draws from the ready retrievals of all concurrent requests,
  so a query that arrives mid-search joins at the next sub-stage boundary. Without it, a
  cohort of queries runs all its sub-stages before the next cohort may start.

Similarity-aware reordering, speculation and the GPU index cache come in later modules.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Callable, Iterable
from itertools import accumulate
from typing import TYPE_CHECKING, Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from ragraph.costs import SearchCostModel
from ragraph.policies.base import Policy
from ragraph.work import Lane, ScanTask, SearchBatch

if TYPE_CHECKING:
    from ragraph.core import Scheduler
    from ragraph.runtime import NodeRun, RequestRun

ARTIFACT_MINIBATCH = {128: 32, 256: 32, 512: 64}  # nprobe -> clusters per sub-stage (artifact)
FiniteMs = Annotated[float, Field(gt=0, allow_inf_nan=False)]


class HedraOptions(BaseModel):
    """hedra's options, as `hedra:KEY=VALUE` or `no-TECH` in a policy spec (validated strictly)."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)
    substages: Literal["dynamic", "fixed", "off"] = "dynamic"  # node splitting mode
    wavefront: bool = True  # sub-stages draw from all concurrent requests (else cohorts)
    budget_factor: FiniteMs = 2.0  # sub-stage budget in moving-average engine steps
    min_budget_ms: FiniteMs = 2.0  # budget clamp
    max_budget_ms: FiniteMs = 100.0  # budget clamp; the budget when no generation runs
    chunk: int = Field(default=8, ge=1)  # clusters per query per round (fill=round_robin)
    max_queries: int = Field(default=32, ge=1)  # queries per sub-stage (substages=fixed)
    fill: Literal["fifo", "round_robin"] = "fifo"  # order in which a sub-stage takes clusters

    @model_validator(mode="after")
    def _budgets_ordered(self) -> HedraOptions:
        if self.min_budget_ms > self.max_budget_ms:
            raise ValueError("min_budget_ms exceeds max_budget_ms")
        return self


class HedraPolicy(Policy):
    name = "hedra"
    techniques = ("substages", "wavefront")

    def __init__(self, costs: SearchCostModel, **options: object) -> None:
        """`options`: the fields of `HedraOptions`; raises pydantic's ValidationError."""
        self.options = HedraOptions(**options)
        self.costs = costs
        self._cohort: list[NodeRun] = []  # queries of the running cohort (wavefront off)
        self._cums: dict[NodeRun, tuple[tuple[int, ...], list[int]]] = {}  # query -> (order, prefix sums)

    def plan_search(self, s: Scheduler, lane: Lane, now: float) -> SearchBatch | None:
        if lane is not Lane.CPU_RETRIEVAL or not s.retr_waiting:
            return None
        o = self.options
        if o.substages == "dynamic":  # reads the queue only; clusters are taken at the end
            queries = s.retr_waiting.values() if o.wavefront else self._cohort_of(s)
            return SearchBatch(tuple(self._fill_budget(s, queries, self.budget_s(s))))
        queries = list(s.retr_waiting.values()) if o.wavefront else self._cohort_of(s)
        if o.substages == "fixed":
            queries = queries[: o.max_queries]
        return SearchBatch(tuple(s.take_clusters(n, min(n.remaining, self._step_of(n))) for n in queries))

    def budget_s(self, s: Scheduler) -> float:
        """Time budget of the next sub-stage: `budget_factor` generation steps, clamped."""
        o = self.options
        if not s.gen_in_engine or s.gen_step_s is None:
            return o.max_budget_ms / 1e3
        return min(o.max_budget_ms, max(o.min_budget_ms, o.budget_factor * s.gen_step_s * 1e3)) / 1e3

    def _cohort_of(self, s: Scheduler) -> list[NodeRun]:
        """Without wavefront: the queries of the running cohort, or a new cohort of all waiting."""
        self._cohort = [n for n in self._cohort if n.key in s.retr_waiting]
        if not self._cohort:
            self._cohort = list(s.retr_waiting.values())
        return self._cohort

    def _step_of(self, node: NodeRun) -> int:
        """Clusters per sub-stage in `fixed` mode (all of them with `substages=off`)."""
        if self.options.substages == "off":
            return node.remaining
        nprobe = len(node.order)
        return ARTIFACT_MINIBATCH.get(nprobe, max(1, nprobe // 4))

    def _fill_budget(self, s: Scheduler, queries: Iterable[NodeRun], budget: float) -> list[ScanTask]:
        """Take clusters until the predicted call time would pass `budget` (at least one
        cluster is always taken). `fill=fifo`: the oldest query takes all it can before the
        next one starts, so queries leave the search one by one as they finish (continuous
        batching of retrieval). `fill=round_robin`: every query takes `chunk` clusters per
        round, as the artifact's fixed sub-stages do."""
        search_s, chunk = self.costs.search_s, self.options.chunk
        taken: dict[NodeRun, int] = {}  # clusters taken per query, in the order first taken
        n_new = pairs = scanned = longest = chars = 0  # the new queries' texts: longest and all, in characters
        per_visit = chunk if self.options.fill == "round_robin" else 1 << 30
        while True:
            progressed = False
            for node in queries:
                have = taken.get(node, 0)
                cum = self._cumulative(node)
                start = node.next_pos + have
                limit = min(len(cum) - 1, start + per_visit)
                if start == limit:
                    continue
                fresh = node.next_pos == 0 and not have
                text = s.query_chars(node) if fresh else 0
                q, new, p0, v0, c0 = len(taken) + (not have), n_new + fresh, pairs - start, scanned - cum[start], cum

                def cost(end: int, q: int = q, new: int = new, p0: int = p0, v0: int = v0, c0: list[int] = c0,
                         top: int = max(longest, text), ch: int = chars + text) -> float:
                    return search_s(q, new, p0 + end, v0 + c0[end], top, ch)

                end = _fit(cost, cum, start, limit, budget)
                if end == start and not scanned:
                    end = start + 1  # always make progress
                if end > start:
                    taken[node] = have + end - start
                    n_new += fresh
                    longest = max(longest, text)
                    chars += text
                    pairs += end - start
                    scanned += cum[end] - cum[start]
                    progressed = True
                if end < limit:  # the budget is spent
                    return self._take(s, taken)
            if not progressed:
                return self._take(s, taken)

    def on_request_end(self, s: Scheduler, run: RequestRun, now: float) -> None:
        for node in run.nodes:
            self._cums.pop(node, None)

    def _cumulative(self, node: NodeRun) -> list[int]:
        """Prefix sums of list sizes along the node's scan order (cached until it is reordered)."""
        cached = self._cums.get(node)
        if cached is not None and cached[0] is node.order:
            return cached[1]
        cum = list(accumulate(map(self.costs.list_sizes.__getitem__, node.order), initial=0))
        self._cums[node] = (node.order, cum)
        return cum

    def _take(self, s: Scheduler, taken: dict[NodeRun, int]) -> list[ScanTask]:
        tasks = [s.take_clusters(n, count) for n, count in taken.items()]
        for n in taken:
            if n.remaining == 0:
                del self._cums[n]
        return tasks


def _fit(cost: Callable[[int], float], cum: list[int], start: int, limit: int, budget: float) -> int:
    """The largest end in [start, limit] with cost(end) <= budget, for a cost that grows with
    end (start if even that is over). The cost is close to affine in the vectors scanned
    (`cum`), so the end interpolated on `cum` is tried first; bisection finishes the job."""
    hi_cost = cost(limit)
    if hi_cost <= budget:
        return limit
    lo_cost = cost(start)
    if lo_cost > budget:
        return start
    lo, hi = start, limit  # cost(lo) <= budget < cost(hi)
    target = cum[start] + (cum[limit] - cum[start]) * (budget - lo_cost) / (hi_cost - lo_cost)
    guess = bisect_right(cum, target, start, limit + 1) - 1
    for probe in (guess, guess + 1):
        if lo < probe < hi:
            lo, hi = (probe, hi) if cost(probe) <= budget else (lo, probe)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if cost(mid) <= budget else (lo, mid)
    return lo
