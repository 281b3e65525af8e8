"""Fine-grained retrieval sub-stages (HedraRAG §4.1, "node splitting").

A retrieval over nprobe IVF clusters is split into sub-stages of a few clusters each, its
running top-k carried from one to the next, so generation steps and new queries interleave
with long searches. Modes:

- `dynamic` (the paper): a sub-stage takes clusters from the waiting queries until its
  predicted duration (the body's `SearchCostModel`) reaches a budget of `budget_factor` x
  the current engine step, clamped to [min_budget_ms, max_budget_ms] (`max_budget_ms` when
  no generation runs). `fill=fifo` serves the oldest query first, so queries leave the
  search one by one; `fill=round_robin` gives each query `chunk` clusters a round.
- `fixed` (the released artifact): each of at most `max_queries` queries scans its next
  nprobe/minibatch clusters, with the artifact's pairs 128/32, 256/32, 512/64.
- `off`: every query's full nprobe in one call.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Callable, Iterable
from itertools import accumulate
from typing import TYPE_CHECKING, Literal

from ragraph.costs import SearchCostModel
from ragraph.work import ScanTask, embed_plan

if TYPE_CHECKING:
    from ragraph.runtime import NodeRun
    from ragraph.view import SchedulerView

ARTIFACT_MINIBATCH = {128: 32, 256: 32, 512: 64}  # nprobe -> clusters per sub-stage (artifact)
Mode = Literal["dynamic", "fixed", "off"]
Fill = Literal["fifo", "round_robin"]


class SubStages:
    """Plans the scans of one sub-stage (one search call) over a set of waiting queries."""

    def __init__(self, costs: SearchCostModel, mode: Mode = "dynamic", *, budget_factor: float = 2.0,
                 min_budget_ms: float = 2.0, max_budget_ms: float = 100.0, chunk: int = 8,
                 max_queries: int = 32, fill: Fill = "fifo", join_new: bool = True) -> None:
        self.costs = costs
        self.mode = mode
        self.budget_factor, self.min_budget_ms, self.max_budget_ms = budget_factor, min_budget_ms, max_budget_ms
        self.chunk, self.max_queries, self.fill, self.join_new = chunk, max_queries, fill, join_new
        self._cums: dict[NodeRun, tuple[tuple[int, ...], list[int]]] = {}  # query -> (order, prefix sums)

    def plan(self, s: SchedulerView, queries: Iterable[NodeRun]) -> list[ScanTask]:
        """Take the clusters of the next sub-stage from `queries` (oldest first)."""
        if self.mode == "dynamic":  # reads the queue only; clusters are taken at the end
            return self._fill_budget(s, queries, self.budget_s(s))
        chosen = list(queries)
        if self.mode == "fixed":
            chosen = chosen[: self.max_queries]
        return [s.take_clusters(n, min(n.remaining, self._step_of(n))) for n in chosen]

    def budget_s(self, s: SchedulerView) -> float:
        """Time budget of the next sub-stage: `budget_factor` generation steps, clamped."""
        step = s.gen_step_s
        if not s.gen_in_engine or step is None:
            return self.max_budget_ms / 1e3
        return min(self.max_budget_ms, max(self.min_budget_ms, self.budget_factor * step * 1e3)) / 1e3

    def forget(self, node: NodeRun) -> None:
        """`node` will not be planned again (its request ended)."""
        self._cums.pop(node, None)

    def cumulative(self, node: NodeRun) -> list[int]:
        """Prefix sums of list sizes along the node's scan order (cached until it is reordered)."""
        cached = self._cums.get(node)
        order = node.order
        if cached is not None and cached[0] is order:
            return cached[1]
        size = self.costs.list_sizes.__getitem__
        if cached is None:
            cum = list(accumulate(map(size, order), initial=0))
        else:  # reordered: only the clusters not yet dispatched moved, the sums before them stand
            pos = node.next_pos
            cum = cached[1][:pos]
            cum += accumulate(map(size, order[pos:]), initial=cached[1][pos])
        self._cums[node] = (order, cum)
        return cum

    def _step_of(self, node: NodeRun) -> int:
        """Clusters per sub-stage in `fixed` mode (all of them in `off` mode)."""
        if self.mode == "off":
            return node.remaining
        nprobe = len(node.order)
        return ARTIFACT_MINIBATCH.get(nprobe, max(1, nprobe // 4))

    def _fill_budget(self, s: SchedulerView, queries: Iterable[NodeRun], budget: float) -> list[ScanTask]:
        """Take clusters until the predicted call time would pass `budget` (at least one
        cluster is always taken). `fifo`: the oldest query takes all it can before the next
        one starts (continuous batching of retrieval). `round_robin`: every query takes
        `chunk` clusters per round, as the artifact's fixed sub-stages do."""
        search_s = self.costs.search_s
        taken: dict[NodeRun, int] = {}  # clusters taken per query, in the order first taken
        n_new = pairs = scanned = 0
        texts: list[int] = []  # the taken new queries' texts, in tokens
        cut = self.costs.embed_call_tokens
        plan = embed_plan(texts, cut)  # their model calls and padded tokens, as the bodies embed them
        per_visit = self.chunk if self.fill == "round_robin" else 1 << 30
        while True:
            progressed = False
            for node in queries:
                have = taken.get(node, 0)
                cum = self.cumulative(node)
                start = node.next_pos + have
                limit = min(len(cum) - 1, start + per_visit)
                if start == limit:
                    continue
                fresh = node.next_pos == 0 and not have
                text = s.query_tokens(node) if fresh else 0
                q, new, p0, v0, c0 = len(taken) + (not have), n_new + fresh, pairs - start, scanned - cum[start], cum
                mine = [*texts, text] if text else texts  # the texts the call embeds if this query joins
                with_mine = embed_plan(mine, cut) if text else plan

                def cost(end: int, q: int = q, new: int = new, p0: int = p0, v0: int = v0, c0: list[int] = c0,
                         top: int = max(mine, default=0), all_: int = sum(mine),
                         calls: tuple[int, int] = with_mine) -> float:
                    return search_s(q, new, p0 + end, v0 + c0[end], top, all_, embed_calls=calls[0],
                                    embed_padded_tokens=calls[1])

                end = _fit(cost, cum, start, limit, budget)
                if end == start and not scanned:
                    end = start + 1  # always make progress
                if end > start:
                    taken[node] = have + end - start
                    n_new += fresh
                    texts, plan = mine, with_mine
                    pairs += end - start
                    scanned += cum[end] - cum[start]
                    progressed = True
                if end < limit:  # the budget is spent
                    return self._take(s, self._join_new(queries, taken))
            if not progressed:
                return self._take(s, self._join_new(queries, taken))

    def _join_new(self, queries: Iterable[NodeRun], taken: dict[NodeRun, int]) -> dict[NodeRun, int]:
        """`taken` plus one cluster of every waiting query not started yet (`join_new`)."""
        if not self.join_new:
            return taken
        for node in queries:
            if len(taken) >= self.max_queries:
                break
            if node.next_pos == 0 and node not in taken and node.remaining:
                taken[node] = 1
        return taken

    def _take(self, s: SchedulerView, taken: dict[NodeRun, int]) -> list[ScanTask]:
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
