"""`hedra`: HedraRAG's coordinated CPU-GPU pipeline (Hu et al., SOSP 2025).

Generation and retrieval run at once on their own lanes. Techniques, each switchable by
name for ablations (`hedra:no-wavefront`, `hedra:substages=fixed`, ...):

- `substages` (node splitting): a retrieval is split into sub-stages of a few clusters,
  its top-k carried from one to the next.
  `dynamic` (default): each sub-stage takes clusters, round-robin over the waiting
  queries `chunk` at a time, until its predicted duration reaches a budget of
  `budget_factor` x the current generation step (the paper's retrieval-centric time
  budget; with no generation running the budget is `max_budget_ms`).
  `fixed`: the released artifact's pairs: each of at most `max_queries` queries scans its
  next nprobe/minibatch clusters (128/32, 256/32, 512/64).
  `off`: every query's full nprobe in one call.
- `wavefront`: each sub-stage draws from the ready retrievals of all concurrent requests,
  so a query that arrives mid-search joins at the next sub-stage boundary. Without it, a
  cohort of queries runs all its sub-stages before the next cohort may start.

Similarity-aware reordering, speculation and the GPU index cache come in later modules.
"""

from __future__ import annotations

from itertools import accumulate
from typing import TYPE_CHECKING

from ragraph.costs import SearchCostModel
from ragraph.policies.base import Policy, PolicyError
from ragraph.work import Lane, ScanTask, SearchBatch

if TYPE_CHECKING:
    from ragraph.core import Scheduler
    from ragraph.runtime import NodeRun, RequestRun

ARTIFACT_MINIBATCH = {128: 32, 256: 32, 512: 64}  # nprobe -> clusters per sub-stage (artifact)
SUBSTAGE_MODES = ("dynamic", "fixed", "off")


class HedraPolicy(Policy):
    name = "hedra"
    techniques = ("substages", "wavefront")

    def __init__(self, costs: SearchCostModel, substages: str = "dynamic", wavefront: bool = True,
                 budget_factor: float = 1.0, min_budget_ms: float = 2.0, max_budget_ms: float = 100.0,
                 chunk: int = 8, max_queries: int = 32, fill: str = "fifo") -> None:
        if substages not in SUBSTAGE_MODES:
            raise PolicyError(f"hedra: substages must be one of {', '.join(SUBSTAGE_MODES)}, not {substages!r}")
        if fill not in ("fifo", "round_robin"):
            raise PolicyError(f"hedra: fill must be fifo or round_robin, not {fill!r}")
        if budget_factor <= 0 or min_budget_ms <= 0 or max_budget_ms < min_budget_ms or chunk < 1 or max_queries < 1:
            raise PolicyError("hedra: budgets, chunk and max_queries must be positive (min_budget <= max_budget)")
        self.costs = costs
        self.substages = substages
        self.wavefront = wavefront
        self.budget_factor = budget_factor
        self.min_budget_s = min_budget_ms / 1e3
        self.max_budget_s = max_budget_ms / 1e3
        self.chunk = chunk
        self.fill = fill
        self.max_queries = max_queries
        self._cohort: list[NodeRun] = []  # queries of the running cohort (wavefront off)
        self._cums: dict[NodeRun, list[int]] = {}  # per waiting query: prefix sums of list sizes

    def plan_search(self, s: Scheduler, lane: Lane, now: float) -> SearchBatch | None:
        if lane is not Lane.CPU_RETRIEVAL:
            return None
        queries = self._candidates(s)
        if not queries:
            return None
        if self.substages == "off":
            tasks = [s.take_clusters(n, n.remaining) for n in queries]
        elif self.substages == "fixed":
            tasks = [s.take_clusters(n, min(n.remaining, self._fixed_step(n))) for n in queries[: self.max_queries]]
        else:
            tasks = self._fill_budget(s, queries, self.budget_s(s))
        return SearchBatch(tuple(tasks))

    def budget_s(self, s: Scheduler) -> float:
        """Time budget of the next sub-stage: one generation step, clamped."""
        if not s.gen_in_engine or s.gen_step_s is None:
            return self.max_budget_s
        return min(self.max_budget_s, max(self.min_budget_s, self.budget_factor * s.gen_step_s))

    def _candidates(self, s: Scheduler) -> list[NodeRun]:
        if self.wavefront:
            return list(s.retr_waiting.values())
        self._cohort = [n for n in self._cohort if n.key in s.retr_waiting]
        if not self._cohort:
            self._cohort = list(s.retr_waiting.values())
        return self._cohort

    def _fixed_step(self, node: NodeRun) -> int:
        nprobe = len(node.order)
        return ARTIFACT_MINIBATCH.get(nprobe, max(1, nprobe // 4))

    def _fill_budget(self, s: Scheduler, queries: list[NodeRun], budget: float) -> list[ScanTask]:
        """Take clusters, `chunk` at a time, until the predicted call time would pass
        `budget` (at least one chunk is always taken). `fill=fifo`: the oldest query takes
        all it can before the next one starts, so queries leave the search one by one as
        they finish (continuous batching of retrieval). `fill=round_robin`: every query
        takes one chunk per round, as the artifact's fixed sub-stages do."""
        search_s = self.costs.search_s
        chunk = self.chunk
        taken: dict[NodeRun, int] = {}  # clusters taken per query, in the order first taken
        n_new = pairs = scanned = 0
        per_visit = 1 if self.fill == "round_robin" else 1 << 30  # chunks per query per round
        while True:
            progressed = False
            for node in queries:
                have = taken.get(node, 0)
                cum = self._cumulative(node)
                start = node.next_pos + have
                limit = len(cum) - 1
                if start == limit:
                    continue
                fresh = node.next_pos == 0 and not have
                q, new = len(taken) + (not have), n_new + fresh

                def cost(chunks: int, start: int = start, limit: int = limit, cum: list[int] = cum,
                         q: int = q, new: int = new, pairs: int = pairs, scanned: int = scanned) -> float:
                    end = min(start + chunks * chunk, limit)
                    return search_s(q, new, pairs + end - start, scanned + cum[end] - cum[start])

                wanted = min(per_visit, -(-(limit - start) // chunk))
                fits = wanted
                if cost(wanted) > budget:  # the largest count within budget (cost grows with it)
                    lo, hi = 0, wanted
                    while hi - lo > 1:
                        mid = (lo + hi) // 2
                        lo, hi = (mid, hi) if cost(mid) <= budget else (lo, mid)
                    fits = lo if (lo or scanned) else 1  # always make progress
                if fits:
                    end = min(start + fits * chunk, limit)
                    taken[node] = have + end - start
                    n_new += fresh
                    pairs += end - start
                    scanned += cum[end] - cum[start]
                    progressed = True
                if fits < wanted:  # the budget is spent
                    return self._take(s, taken)
            if not progressed:
                return self._take(s, taken)

    def on_request_end(self, s: Scheduler, run: RequestRun, now: float) -> None:
        for node in run.nodes:
            self._cums.pop(node, None)

    def _cumulative(self, node: NodeRun) -> list[int]:
        """Prefix sums of list sizes along the node's scan order (cached per node)."""
        cum = self._cums.get(node)
        if cum is None:
            cum = self._cums[node] = [0, *accumulate(map(self.costs.list_sizes.__getitem__, node.order))]
        return cum

    def _take(self, s: Scheduler, taken: dict[NodeRun, int]) -> list[ScanTask]:
        tasks = [s.take_clusters(n, count) for n, count in taken.items()]
        for n in taken:
            if n.remaining == 0:
                del self._cums[n]
        return tasks
