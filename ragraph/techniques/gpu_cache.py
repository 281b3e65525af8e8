"""The partial GPU index cache (HedraRAG §4.4): hot IVF clusters scanned on the GPU.

Scan work is skewed (the paper: the top 20% of clusters take over 69% of it), so a few GB of
the hottest clusters on the GPU take much of the CPU's load. This technique

- counts, per cluster, the vectors scanned in it (decayed by `decay` at each refresh: the
  access frequency the paper tracks at run time);
- every `refresh_every` sub-stages (the paper: 50) plans a refresh on the `pcie` lane: the
  hottest clusters that fit the cache's byte budget are loaded, the others evicted. The copy
  runs asynchronously; a cluster is scanned on the GPU only once it is resident (a cluster in
  flight is scanned on the CPU);
- gives the `gpu_retrieval` lane the resident clusters of every query already started on the
  CPU (its first sub-stage embeds it there): the core's action `reorder` moves them to the
  front of the query's remaining clusters and `take_clusters` dispatches them; the CPU lane's
  sub-stages take the others. Both lanes merge into the query's one running top-k, so the
  result is exactly a full search's;
- sizes the cache by the paper's Eq. 2 at every refresh, from the profile's models and the
  workload seen so far: the KV cache and the index cache share one pool of GPU memory, and the
  split maximises min(generation throughput with that KV cache, retrieval throughput with that
  index cache), both in retrievals per second. `clusters=N` fixes the size instead.

The bodies lend the cache's bytes from the KV pool (the simulator's engine loses that many
blocks while they are lent), so KV use plus the cache never exceed GPU memory.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Callable, Set
from itertools import filterfalse
from typing import TYPE_CHECKING

from ragraph.costs import GpuCacheCosts
from ragraph.graph import Generate, Retrieve
from ragraph.techniques.heat import RESCALE_AT, HeatTable, HeatTableFactory, PureHeatTable
from ragraph.work import CacheLoad, Lane, ScanTask, SearchBatch

if TYPE_CHECKING:
    from ragraph.runtime import NodeRun, RequestRun
    from ragraph.view import SchedulerView

SIZING_STEPS = 32  # candidate splits of the pool Eq. 2 compares
DEFAULT_TOKENS_PER_RETRIEVAL = 128  # output tokens per retrieval before any request arrived
DEFAULT_SEQUENCE_TOKENS = 1024  # prompt + output tokens per sequence before any arrived


def eq2_split(pool_bytes: float, gen_rps: Callable[[float], float], retr_rps: Callable[[float], float],
              steps: int = SIZING_STEPS) -> float:
    """HedraRAG Eq. 2: the index-cache bytes x in [0, pool] maximising
    min(gen_rps(pool - x), retr_rps(x)) over `steps` + 1 evenly spaced splits (the smallest x
    among ties: memory the cache does not need stays with the KV cache)."""
    best_x, best = 0.0, -1.0
    for i in range(steps + 1):
        x = pool_bytes * i / steps
        value = min(gen_rps(pool_bytes - x), retr_rps(x))
        if value > best * (1 + 1e-9):
            best_x, best = x, value
    return best_x


class GpuIndexCache:
    def __init__(self, costs: GpuCacheCosts, *, clusters: int | None = None, refresh_every: int = 50,
                 decay: float = 0.9) -> None:
        self.costs = costs
        self.sizes = list(costs.list_sizes)
        self.fixed_clusters = clusters
        self.refresh_every = refresh_every
        self.decay = decay
        self._bytes = [n * costs.bytes_per_vector for n in self.sizes]  # bytes per cluster
        # decayed vectors scanned per cluster as of the last `_tally`, in units of `_unit` (the heat
        # decays by `decay` at each refresh: rather than every heat shrinking, later scans weigh more)
        self._table: HeatTable = PureHeatTable(self.sizes, self._bytes)
        self._unit = 1.0  # the weight of a vector scanned now
        self._noted: list[tuple[int, ...]] = []  # clusters of the scans noted since (tallied when read)
        self._since = 0  # sub-stages since the last refresh
        self._vectors = 0  # vectors scanned, all retrievals
        self._retrievals = 0  # retrievals submitted
        self._out_tokens = 0  # output tokens of the generations submitted
        self._seq_tokens = 0  # their prompt + output tokens
        self._gens = 0
        self.target_bytes = 0.0  # the cache's current byte budget (Eq. 2)
        self.refreshes = 0
        self.gpu_pairs = self.cpu_pairs = 0  # (query, cluster) scans on each lane
        self.clusters_copied = 0
        self.bytes_copied = 0
        self.clusters = 0  # clusters the last refresh wanted resident
        self.bytes = 0  # their bytes
        self._arranged: dict[NodeRun, tuple[int, int]] = {}  # query -> cache version its order was arranged for

    def use_heat_table(self, make: HeatTableFactory) -> None:
        """Keep the heat in a table `make` builds (the same results, e.g. `sim.heat_numpy`'s);
        before the run starts."""
        assert not self._vectors and not self._noted, "a heat table is chosen before the run"
        self._table = make(self.sizes, self._bytes)

    # --- what the policy tells it -------------------------------------------------------------

    def on_submit(self, run: RequestRun) -> None:
        """The workload's mix, as requests arrive (Eq. 2's conversion to retrievals per second)."""
        for spec in run.request.nodes:
            if isinstance(spec, Retrieve):
                self._retrievals += 1
            elif isinstance(spec, Generate):
                self._gens += 1
                self._out_tokens += spec.output_tokens
                self._seq_tokens += spec.prompt_tokens + spec.output_tokens

    def note(self, tasks: tuple[ScanTask, ...], lane: Lane) -> None:
        """A sub-stage was planned on `lane` with these scans."""
        noted, pairs = self._noted, 0
        for t in tasks:
            pairs += len(t.clusters)
            noted.append(t.clusters)
        if lane is Lane.GPU_RETRIEVAL:
            self.gpu_pairs += pairs
        else:
            self.cpu_pairs += pairs
        self._since += 1

    # --- planning -----------------------------------------------------------------------------

    def plan_pcie(self, s: SchedulerView) -> CacheLoad | None:
        """A refresh every `refresh_every` sub-stages (never while a GPU scan runs: its clusters
        must stay resident)."""
        if self._since < self.refresh_every or s.busy(Lane.GPU_RETRIEVAL):
            return None
        self._since = 0
        self._tally()
        if self.fixed_clusters is not None:
            ranked = self._table.ranked(None, False)  # cum_bytes[i]: bytes of the hottest i
            desired = ranked.order[: self.fixed_clusters]
        else:  # (the prefixes within the KV pool: no larger one is ever resident)
            ranked = self._table.ranked(self.costs.kv_pool_bytes(), True)
            self.target_bytes = self._size_bytes(ranked.cum_heat, ranked.total_heat, ranked.cum_bytes)
            desired = ranked.order[: bisect_right(ranked.cum_bytes, self.target_bytes) - 1]
        cum_bytes = ranked.cum_bytes
        self._decay()
        self.clusters = len(desired)
        self.bytes = cum_bytes[len(desired)]
        cache = s.gpu_cache
        load = tuple(filterfalse(cache.__contains__, desired))
        evict = tuple(sorted(cache.difference(desired)))  # type: ignore[attr-defined]  # (a set: the core's)
        if not load and not evict:
            return None
        self.refreshes += 1
        self.clusters_copied += len(load)
        self.bytes_copied += sum(map(self.sizes.__getitem__, load)) * self.costs.bytes_per_vector
        return CacheLoad(load, evict)

    def plan_gpu(self, s: SchedulerView) -> SearchBatch | None:
        """The resident clusters of the started queries, as one GPU scan call."""
        cache = s.gpu_cache
        if not cache:
            return None
        tasks = []
        for node in list(s.retr_waiting.values()):
            if node.next_pos == 0:
                continue  # not embedded yet: its first sub-stage runs on the CPU
            rest = node.order[node.next_pos:]
            if cache.isdisjoint(rest):
                continue
            s.partition_remaining(node, (cache,))  # the resident ones first, each side in its order
            tasks.append(s.take_clusters(node, sum(map(cache.__contains__, rest))))
        if not tasks:
            return None
        batch = SearchBatch(tuple(tasks), lane=Lane.GPU_RETRIEVAL)
        self.note(batch.tasks, Lane.GPU_RETRIEVAL)
        return batch

    def defer_cached(self, s: SchedulerView) -> None:
        """Move each started query's resident clusters behind its others, so the CPU lane's
        sub-stages leave them to the GPU lane (once per query and cache content)."""
        cache = s.gpu_cache
        if not cache:
            return
        version = (self.refreshes, len(cache))
        for node in s.retr_waiting.values():
            if node.next_pos and self._arranged.get(node) != version:
                self._arranged[node] = version
                self._defer(s, node, cache)

    def forget(self, node: NodeRun) -> None:
        self._arranged.pop(node, None)

    @staticmethod
    def _defer(s: SchedulerView, node: NodeRun, cache: Set[int]) -> None:
        s.sort_remaining(node, cache.__contains__)  # the resident ones last

    # --- Eq. 2 ----------------------------------------------------------------------------------

    def _tally(self) -> None:
        """Add the scans noted since the last call to the heat (and the vectors scanned): per
        cluster, its vectors times its scans, in the units of the current refresh (`_decay`)."""
        self._vectors += self._table.tally(self._noted, self._unit)
        self._noted = []

    def _decay(self) -> None:
        """Every heat decays by `decay`, lazily: later scans count 1/decay times more (`_unit`);
        the stored heats are rescaled only when the unit grows large."""
        if self.decay <= 0:
            self._table.clear()
            return
        self._unit /= self.decay
        if self._unit > RESCALE_AT:
            self._table.rescale(self._unit)
            self._unit = 1.0

    def _size_bytes(self, cum_heat: list[float], total_heat: float, cum_bytes: list[int]) -> float:
        """The index cache's share of the KV pool by Eq. 2, for the workload seen so far, given
        the cumulative heats and bytes of the hottest clusters (every prefix within the pool, the
        heats summed in order) and the total heat."""
        costs = self.costs
        pool = costs.kv_pool_bytes()
        retrievals = max(self._retrievals, 1)
        out_per_retrieval = self._out_tokens / retrievals if self._out_tokens else DEFAULT_TOKENS_PER_RETRIEVAL
        seq_tokens = self._seq_tokens / self._gens if self._gens else DEFAULT_SEQUENCE_TOKENS
        vectors_per_retrieval = self._vectors / retrievals
        # hot share of scan work covered by the hottest clusters within x bytes (a ratio of heats,
        # so their common unit cancels)
        total_heat = total_heat or 1.0

        def gen_rps(kv_bytes: float) -> float:
            seqs = min(costs.max_num_seqs, int(kv_bytes // (seq_tokens * costs.kv_bytes_per_token)))
            if seqs < 1:
                return 0.0
            tokens_s = seqs / costs.gen_step_s(0, seqs, int(seqs * seq_tokens / 2))
            return tokens_s / out_per_retrieval

        def retr_rps(cache_bytes: float) -> float:
            i = bisect_right(cum_bytes, cache_bytes) - 1  # the last prefix within cache_bytes (it ascends)
            hot = cum_heat[i] / total_heat
            cpu = costs.scan_s(int(vectors_per_retrieval * (1 - hot)))
            gpu = costs.gpu_search_s(int(vectors_per_retrieval * hot * costs.bytes_per_vector)) if hot else 0.0
            busiest = max(cpu, gpu)
            return 1 / busiest if busiest > 0 else float("inf")

        return eq2_split(pool, gen_rps, retr_rps)

    def report(self) -> dict[str, float]:
        """hit_rate: share of (query, cluster) scans served on the GPU; clusters, bytes: what the
        last refresh kept resident; refreshes: copies planned."""
        pairs = self.gpu_pairs + self.cpu_pairs
        return {"hit_rate": self.gpu_pairs / pairs if pairs else 0.0, "clusters": self.clusters, "bytes": self.bytes,
                "refreshes": self.refreshes, "clusters_copied": self.clusters_copied,
                "bytes_copied": self.bytes_copied, "eq2_target_bytes": self.target_bytes}
