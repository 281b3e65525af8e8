"""`hedra`: HedraRAG's coordinated CPU-GPU pipeline (Hu et al., SOSP 2025).

Generation and retrieval run at once on their own lanes. The policy is composed of the
technique modules of `ragraph.techniques`, each switchable by name for ablations
(`hedra:no-wavefront`, `hedra:substages=fixed`, `hedra:no-reorder`, `hedra:no-spec-gen`,
`hedra:spec_after=2`, ...):

- `substages` (node splitting, `ragraph.techniques.substages`): retrievals split into
  sub-stages sized by a time budget against the concurrent engine step;
- `wavefront` (`ragraph.techniques.wavefront`): each sub-stage draws from the ready
  retrievals of all concurrent requests;
- `reorder` (`ragraph.techniques.reorder`): a follow-up query of a request is seeded with the
  request's previous top-20 and scans the lists near the previous result first;
- `spec_gen` (`ragraph.techniques.spec_gen`): a generation starts on a partial top-k while
  the engine has headroom (`spec_threshold`, the paper's τ), kept iff the final top-k agrees;
  `spec_after=N` speculates once after N sub-stages instead (the Fig. 17 baseline);
- `spec_retr` (`ragraph.techniques.spec_retr`): the retrieval after a generation starts on
  the first `spec_retr_at` of its text, kept iff the real query finds the same top-k;
- `gpu_cache` (`ragraph.techniques.gpu_cache`): the hottest clusters held on the GPU,
  refreshed every `refresh_every` sub-stages over `pcie`, sized by Eq. 2 (or
  `gpu_cache_clusters=N`); inert on a profile without a GPU (reported as such).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from ragraph.costs import GpuCacheCosts
from ragraph.policies.base import Policy
from ragraph.policies.spec import PolicyType
from ragraph.techniques.gpu_cache import GpuIndexCache
from ragraph.techniques.heat import HeatTableFactory
from ragraph.techniques.reorder import SimilarityReorder
from ragraph.techniques.spec_gen import SpeculativeGeneration
from ragraph.techniques.spec_retr import SpeculativeRetrieval
from ragraph.techniques.substages import SubStages
from ragraph.techniques.wavefront import Wavefront
from ragraph.work import CacheLoad, Lane, SearchBatch

if TYPE_CHECKING:
    from ragraph.runtime import NodeRun, RequestRun
    from ragraph.view import SchedulerView

FiniteMs = Annotated[float, Field(gt=0, allow_inf_nan=False)]
SPEC_THRESHOLD = 0.1  # τ: speculate while decode throughput / peak is below it (measured: docs/techniques.md)


class HedraOptions(BaseModel):
    """hedra's options, as `hedra:KEY=VALUE` or `[no-]TECH` in a policy spec (validated strictly)."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)
    substages: Literal["dynamic", "fixed", "off"] = Field(
        "dynamic", description="node splitting: time-budgeted, the artifact's fixed pairs, or off")
    wavefront: bool = Field(True, description="sub-stages draw from all concurrent requests (else cohorts)")
    reorder: bool = Field(True, description="similarity-aware reordering and the request's top-20 cache")
    spec_gen: bool = Field(True, description="speculative generation on a partial top-k")
    spec_retr: bool = Field(True, description="speculative retrieval on a partial generation")
    gpu_cache: bool = Field(True, description="partial GPU index cache (needs a profile with a GPU)")
    budget_factor: FiniteMs = Field(2.0, description="sub-stage budget in moving-average engine steps")
    min_budget_ms: FiniteMs = Field(2.0, description="sub-stage budget clamp")
    max_budget_ms: FiniteMs = Field(100.0, description="sub-stage budget clamp; the budget with no generation")
    chunk: int = Field(default=8, ge=1, description="clusters per query per round (fill=round_robin)")
    max_queries: int = Field(default=32, ge=1, description="queries per sub-stage (substages=fixed; join_new's cap)")
    fill: Literal["fifo", "round_robin"] = Field("fifo", description="order in which a sub-stage takes clusters")
    join_new: bool = Field(True, description="every waiting new query joins the next sub-stage (one embedding call)")
    spec_threshold: float = Field(SPEC_THRESHOLD, gt=0, le=1,
                                  description="τ: speculate while engine throughput / peak is below it")
    spec_after: int | None = Field(None, ge=1, description="speculate once after this many sub-stages (baseline)")
    spec_retr_threshold: float = Field(SPEC_THRESHOLD, gt=0, le=1,
                                       description="speculative retrieval while engine throughput / peak is below it")
    spec_retr_at: Literal[0.25, 0.5, 0.75] = Field(0.5, description="share of a generation decoded before "
                                                   "the next retrieval starts on it")
    gpu_cache_clusters: int | None = Field(None, ge=0, description="clusters cached (default: sized by Eq. 2)")
    refresh_every: int = Field(50, ge=1, description="sub-stages between GPU cache refreshes")
    gpu_cache_decay: float = Field(0.9, ge=0, le=1, description="access-frequency decay per refresh")

    @model_validator(mode="after")
    def _budgets_ordered(self) -> HedraOptions:
        if self.min_budget_ms > self.max_budget_ms:
            raise ValueError("min_budget_ms exceeds max_budget_ms")
        return self


class HedraPolicy(Policy):
    name = "hedra"

    def __init__(self, options: HedraOptions, costs: GpuCacheCosts) -> None:
        o = self.options = options
        self.embed_call_tokens = costs.embed_call_tokens  # where its search calls cut the embedding (SearchBatch)
        self.substages = SubStages(costs, o.substages, budget_factor=o.budget_factor, min_budget_ms=o.min_budget_ms,
                                   max_budget_ms=o.max_budget_ms, chunk=o.chunk, max_queries=o.max_queries,
                                   fill=o.fill, join_new=o.join_new)
        self.wavefront = Wavefront(o.wavefront)
        self.reorder = SimilarityReorder() if o.reorder else None
        self.spec_gen = SpeculativeGeneration(costs.peak_decode_tokens_s(), o.spec_threshold, o.spec_after) \
            if o.spec_gen else None
        self.spec_retr = SpeculativeRetrieval(costs.peak_decode_tokens_s(), o.spec_retr_at, o.spec_retr_threshold) \
            if o.spec_retr else None
        self.gpu = None
        if o.gpu_cache and getattr(costs, "has_gpu_cache", False):
            self.gpu = GpuIndexCache(costs, clusters=o.gpu_cache_clusters, refresh_every=o.refresh_every,
                                     decay=o.gpu_cache_decay)
            self.lanes = (Lane.GPU_GEN, Lane.CPU_RETRIEVAL, Lane.GPU_RETRIEVAL, Lane.PCIE)

    def plan_search(self, s: SchedulerView, lane: Lane, now: float) -> SearchBatch | None:
        if not s.retr_waiting and not s.retr_speculative:
            return None
        if lane is Lane.GPU_RETRIEVAL:
            return self.gpu.plan_gpu(s) if self.gpu is not None else None
        if lane is not Lane.CPU_RETRIEVAL:
            return None
        if self.spec_retr is not None and (spec := self.spec_retr.plan(s)):
            return SearchBatch(tuple(spec), embed_call_tokens=self.embed_call_tokens)
        if self.gpu is not None:
            self.gpu.defer_cached(s)  # leave the resident clusters to the GPU lane
        tasks = tuple(self.substages.plan(s, self.wavefront.queries(s)))
        if self.gpu is not None:
            self.gpu.note(tasks, lane)
        return SearchBatch(tasks, embed_call_tokens=self.embed_call_tokens)

    def plan_pcie(self, s: SchedulerView, now: float) -> CacheLoad | None:
        return self.gpu.plan_pcie(s) if self.gpu is not None else None

    def on_submit(self, s: SchedulerView, run: RequestRun, now: float) -> None:
        if self.gpu is not None:
            self.gpu.on_submit(run)
        if self.spec_retr is not None:
            self.spec_retr.on_submit(s, run)

    def on_generation_progress(self, s: SchedulerView, node: NodeRun, fraction: float, now: float) -> None:
        if self.spec_retr is not None:
            self.spec_retr.on_generation_progress(s, node, fraction, now)

    def on_node_done(self, s: SchedulerView, node: NodeRun, now: float) -> None:
        if self.spec_retr is not None and node.is_retrieve:
            self.spec_retr.on_node_done(node)

    def on_retrieve_ready(self, s: SchedulerView, node: NodeRun, now: float) -> None:
        if self.reorder is not None:
            self.reorder.on_ready(s, node)

    def on_search_progress(self, s: SchedulerView, node: NodeRun, now: float) -> None:
        if self.spec_gen is not None:
            self.spec_gen.on_progress(s, node, now)

    def keep_speculation(self, s: SchedulerView, node: NodeRun, now: float) -> bool:
        return self.spec_gen is not None and self.spec_gen.keep(s, node)

    def on_request_end(self, s: SchedulerView, run: RequestRun, now: float) -> None:
        for node in run.nodes:
            self.substages.forget(node)
            if self.spec_gen is not None:
                self.spec_gen.forget(node.key)
            if self.gpu is not None:
                self.gpu.forget(node)

    def use_heat_table(self, make: HeatTableFactory) -> None:
        if self.gpu is not None:
            self.gpu.use_heat_table(make)

    def report(self, s: SchedulerView) -> dict[str, object]:
        out: dict[str, object] = {}
        if self.spec_gen is not None:
            out["speculation"] = {**self.spec_gen.report(), "wasted_tokens": s.aborted_tokens}
        if self.spec_retr is not None:
            out["speculative_retrieval"] = self.spec_retr.report()
        if self.reorder is not None:
            out["reorder"] = self.reorder.report()
        if self.options.gpu_cache:
            out["gpu_cache"] = self.gpu.report() if self.gpu is not None else \
                {"enabled": False, "reason": "the profile has no GPU index cache (GPU, gpu_search, pcie)"}
        return out


def build(options: HedraOptions, costs: GpuCacheCosts) -> HedraPolicy:
    return HedraPolicy(options, costs)


POLICY = PolicyType("hedra", HedraOptions, build,
                    "HedraRAG: sub-stages, wavefronts, reordering, speculation (CPU-GPU overlap)",
                    ("substages", "wavefront", "reorder", "spec-gen", "spec-retr", "gpu-cache"))
