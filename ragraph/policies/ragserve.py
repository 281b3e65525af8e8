"""`ragserve`: METIS's per-query configuration, chosen jointly with free GPU memory.

Source: RAGServe / METIS (arXiv 2412.10543). For each request whose synthesis is chosen at
run time (`Policy.configure`, once its profile generation and retrieval are done):

1. `profiler`: read the query's profile (the trace's, produced by the profiling generation the
   request has already run) and prune the space to METIS's ranges: no joint reasoning ->
   map_rerank; joint -> stuff, or map_reduce if complex; num_chunks in [n, 3n] for n pieces of
   information; intermediate_length among `LENGTH_CHOICES` inside the summary range. Off: the
   whole space (every method, 1-35 chunks).
2. `history`: a profile with confidence below `confidence` (METIS: 0.9) is not trusted: the
   pruned ranges of the last `history_size` confident queries are used instead (the union of
   their pruned spaces: each configuration some recent query's range held).
3. `best_fit`: among the pruned configurations whose KV demand (input and output tokens of the
   calls that run at once, +2%) fits in the free KV memory now, the one needing the most. Free
   memory is the engine's free blocks (`SchedulerView.kv_free_tokens`) less what is already
   committed and not yet allocated: the Generate nodes waiting to be admitted (prompt +
   output), and what the sequences in the engine will hold at their end (prompt + output)
   beyond the blocks in use now (sequences the engine queues hold none yet).
   Off: the middle configuration of the pruned range by demand, memory-blind. Either way, a
   configuration with a call longer than the engine's `max_model_len` is never chosen (it could
   never run; the pruned range is kept whole only if none of it runs).
4. `fallback`: nothing fits -> map_rerank (no joint reasoning) or stuff, with as many chunks as
   fit (at least one): never queue for a configuration. Off: the smallest pruned configuration.
5. `feedback`: every `feedback_every` queries (METIS: 30) the request runs the golden
   configuration (map_reduce, 30 chunks, 100 words; fewer chunks if its reduce would not fit
   in `max_model_len`) and the policy compares its F1 with that of
   the configuration it would have chosen, from the request's quality table (the simulator's
   stand-in for scoring one answer against the other): a gap above `feedback_gap` widens the
   chunk ranges by 25% (up to 2x), no gap narrows them back. This rule is ours: METIS names the
   feedback round, not how it updates the profiler.
6. `batching`: the fan-out calls (map_reduce's maps, map_rerank's answers) of every request
   enter the engine as soon as they are ready, where continuous batching runs them together.
   Off: one request's fan-out at a time (a per-request batch: its calls enter together, the
   next request's fan-out enters when the last of them has left the engine); the other
   generations (profiles, stuff, reduces) are still admitted at once. `serial_fan_out` (off by
   default) also sends a request's own fan-out calls one at a time, each when the previous one
   has left the engine (a chain calling the LLM once per chunk in a loop).

A request whose quality table is *measured* (source `measured:MODEL`, `hedra quality measure`,
often over a few configurations) is chosen for among the table's configurations only, so its
F1 is always known: the pruning keeps the measured configurations inside the ranges above (a
measured length between two of `LENGTH_CHOICES` counts where the summary range holds it); where
none is inside, the fallback's method (stuff if joint, map_rerank if not; every measured one if
the table has none of it); best fit, its middle and the no-fit fallback pick among those and
the measured set; the golden round runs the golden configuration if measured, else the
costliest measured one. `report()["ragserve"]["measured_space"]` records it (requests, the
configurations, how many had none in their ranges). A table drawn from a declared model must
hold every configuration (`accepts`).

Scheduling is `hedra`'s (defaults), as for `fixed` and `adaptive` (`ragraph.policies.configured`).
Each part is switchable: `ragserve:no-best-fit`, `ragserve:no-profiler`, `ragserve:no-batching`, ...
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict, Field

from ragraph.costs import GpuCacheCosts
from ragraph.policies.configured import ConfiguringPolicy
from ragraph.policies.spec import PolicyType
from ragraph.synthesis import (
    INTERMEDIATE_LENGTH,
    LENGTH_CHOICES,
    NUM_CHUNKS,
    Method,
    QueryProfile,
    Synthesis,
    SynthesisConfig,
    demand_tokens,
    longest_call,
)

if TYPE_CHECKING:
    from ragraph.graph import Request
    from ragraph.runtime import NodeRun, RequestRun
    from ragraph.view import SchedulerView

GOLDEN = SynthesisConfig(Method.MAP_REDUCE, 30, 100)  # METIS's feedback configuration
FAN_OUT_ROLES = ("map", "rerank")  # roles of the Generate nodes a synthesis fans out (ragraph.synthesis.expand)
MEMORY_MARGIN = 1.02  # METIS: a configuration's memory is its tokens x KV bytes per token, +2%


class RagServeOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)
    profiler: bool = Field(True, description="prune to the profile's ranges (else the whole space)")
    best_fit: bool = Field(True, description="the largest pruned configuration that fits in free KV memory now")
    fallback: bool = Field(True, description="nothing fits: map_rerank or stuff with as many chunks as fit")
    history: bool = Field(True, description="low-confidence profiles use the last queries' ranges")
    feedback: bool = Field(True, description="a golden-configuration round every feedback_every queries")
    batching: bool = Field(True, description="fan-out calls of many requests batch in the engine"
                                                   " (else one request's at a time)")
    serial_fan_out: bool = Field(False, description="a request's own fan-out calls enter the engine one at a time")
    confidence: float = Field(0.9, ge=0, le=1, description="profiles below it are not trusted")
    history_size: int = Field(10, ge=1, description="confident queries whose ranges a low-confidence one uses")
    feedback_every: int = Field(30, ge=2, description="queries between golden-configuration rounds")
    feedback_gap: float = Field(0.05, ge=0, le=1, description="F1 gap to the golden configuration that widens ranges")


class Ranges:
    """A pruned configuration space: methods, a chunk range, intermediate lengths (those a policy
    enumerates, and the span of words the profile asked for, which a measured length may fall in)."""

    __slots__ = ("chunks", "length_span", "lengths", "methods")

    def __init__(self, methods: tuple[Method, ...], chunks: tuple[int, int], lengths: tuple[int, ...],
                 length_span: tuple[int, int] = (0, -1)) -> None:
        self.methods, self.chunks, self.lengths, self.length_span = methods, chunks, lengths, length_span

    def _chunk_range(self, max_chunks: int) -> tuple[int, int]:
        hi = min(self.chunks[1], max_chunks)
        return min(self.chunks[0], hi), hi

    def holds(self, config: SynthesisConfig, max_chunks: int) -> bool:
        """Whether `config` lies in these ranges (over `max_chunks` chunks)."""
        lo, hi = self._chunk_range(max_chunks)
        if config.method not in self.methods or not lo <= config.num_chunks <= hi:
            return False
        length = config.intermediate_length
        return (config.method is not Method.MAP_REDUCE or length in self.lengths
                or self.length_span[0] <= length <= self.length_span[1])

    def configs(self, max_chunks: int) -> list[SynthesisConfig]:
        lo, hi = self._chunk_range(max_chunks)
        out = []
        for m in self.methods:
            for c in range(lo, hi + 1):
                lengths = self.lengths if m is Method.MAP_REDUCE else (0,)
                out.extend(SynthesisConfig(m, c, length) for length in lengths)
        return out


def prune(profile: QueryProfile, scale: float = 1.0) -> Ranges:
    """METIS's mapping from a profile to ranges (module docstring, 1)."""
    if not profile.joint:
        methods: tuple[Method, ...] = (Method.MAP_RERANK,)
    else:
        methods = (Method.MAP_REDUCE,) if profile.complexity == "high" else (Method.STUFF,)
    n = profile.pieces
    hi = min(NUM_CHUNKS[1], max(n, round(3 * n * scale)))
    lo, top = profile.summary_range[0], min(profile.summary_range[1], INTERMEDIATE_LENGTH[1])
    lengths = tuple(x for x in LENGTH_CHOICES if lo <= x <= top) or \
        (next((x for x in LENGTH_CHOICES if x >= lo), LENGTH_CHOICES[-1]),)
    return Ranges(methods, (min(n, NUM_CHUNKS[1]), hi), lengths, (lo, top))


WHOLE_SPACE = Ranges(tuple(Method), NUM_CHUNKS, LENGTH_CHOICES, INTERMEDIATE_LENGTH)


class Union:
    """Several pruned spaces together: the configurations of any of them (what a low-confidence
    query uses). Not their bounding box: a method of one query's range never meets another's
    chunk counts or lengths."""

    __slots__ = ("members",)

    def __init__(self, members: list[Ranges]) -> None:
        self.members = members

    def configs(self, max_chunks: int) -> list[SynthesisConfig]:
        return list(dict.fromkeys(c for r in self.members for c in r.configs(max_chunks)))

    def holds(self, config: SynthesisConfig, max_chunks: int) -> bool:
        return any(r.holds(config, max_chunks) for r in self.members)


def committed_tokens(s: SchedulerView) -> int:
    """KV tokens already promised but not yet allocated (module docstring, 3)."""
    ready = sum(n.spec.prompt_tokens + n.spec.output_tokens for n in s.gen_ready.values())  # type: ignore[union-attr]
    engine = sum(n.spec.prompt_tokens + n.spec.output_tokens for n in s.gen_in_engine.values())  # type: ignore[union-attr]
    return ready + max(0, engine - s.kv_used_blocks * s.kv_block_tokens)


class RagServePolicy(ConfiguringPolicy):
    name = "ragserve"

    def __init__(self, options: RagServeOptions, costs: GpuCacheCosts) -> None:
        super().__init__(costs)
        self.o = options
        self.max_model_len = costs.max_model_len
        self.recent: deque[Ranges] = deque(maxlen=options.history_size)
        self.scale = 1.0  # chunk-range widening from feedback rounds
        self.seen = 0
        self.counts = {"best_fit": 0, "fallback": 0, "low_confidence": 0, "feedback_rounds": 0,
                       "feedback_widened": 0}
        self.measured = {"requests": 0, "outside_ranges": 0}  # requests chosen for among measured configurations
        self.measured_labels: set[str] = set()
        self.measured_sources: set[str] = set()

    def choosable(self, syn: Synthesis) -> Iterable[SynthesisConfig]:
        """A measured table's configurations (module docstring); else the whole space."""
        return syn.table_configs() if syn.measured else super().choosable(syn)

    def accepts(self, requests: Sequence[Request]) -> str:
        for r in requests:
            syn = r.synthesis
            if syn is not None and syn.measured and not syn.table_configs():
                return (f"request {r.id!r}: its quality table ({syn.quality_source}) holds no configuration over at"
                        f" most {syn.max_chunks} chunks (its retrieval's k), so {self.name} has none to choose")
        return super().accepts(requests)

    def configure(self, s: SchedulerView, run: RequestRun, now: float) -> SynthesisConfig:
        syn = run.request.synthesis
        assert syn is not None
        self.seen += 1
        choice = self._choose(s, syn)
        if self.o.feedback and self.seen % self.o.feedback_every == 0:
            return self.chose(self._feedback(syn, choice))
        return self.chose(choice)

    def admit_generations(self, s: SchedulerView, now: float) -> list[NodeRun]:
        """All READY generations, with `batching` and not `serial_fan_out`; else fan-out calls are
        held back (module docstring, 6): one request's fan-out in the engine at a time (the
        oldest waiting first), and/or one call of a request's fan-out at a time."""
        ready = list(s.gen_ready.values())
        if self.o.batching and not self.o.serial_fan_out:
            return ready
        engine: dict[str, int] = {}  # request -> its fan-out calls in the engine
        for n in s.gen_in_engine.values():
            if n.spec.role in FAN_OUT_ROLES:  # type: ignore[union-attr]
                engine[n.key[0]] = engine.get(n.key[0], 0) + 1
        admit = []
        for node in ready:
            rid = node.key[0]
            if node.spec.role in FAN_OUT_ROLES:  # type: ignore[union-attr]
                if not self.o.batching and rid not in engine and engine:
                    continue  # another request's fan-out holds the engine
                if self.o.serial_fan_out and engine.get(rid):
                    continue  # its previous call has not left the engine
                engine[rid] = engine.get(rid, 0) + 1
            admit.append(node)
        return admit

    def free_tokens(self, s: SchedulerView) -> float:
        """Free KV memory now, in tokens, less what is committed (inf before the engine reports)."""
        if not s.kv_block_tokens:
            return float("inf")
        return max(0, s.kv_free_tokens - committed_tokens(s))

    def _ranges(self, syn: Synthesis) -> Ranges | Union:
        p = syn.profile
        if not self.o.profiler or p is None:
            return WHOLE_SPACE
        ranges = prune(p, self.scale)
        if p.confidence >= self.o.confidence:
            self.recent.append(ranges)
            return ranges
        self.counts["low_confidence"] += 1
        return Union(list(self.recent)) if self.o.history and self.recent else ranges

    def _runs(self, syn: Synthesis, config: SynthesisConfig) -> bool:
        """Every call of `config` fits in one engine call (`max_model_len`): else it never runs."""
        return longest_call(syn, config) <= self.max_model_len

    def _running(self, syn: Synthesis, configs: list[SynthesisConfig]) -> list[SynthesisConfig]:
        """Those of `configs` that run (`_runs`); none runs: all of them (the engine refuses it)."""
        return [c for c in configs if self._runs(syn, c)] or configs

    def _fallback_method(self, syn: Synthesis) -> Method:
        return Method.STUFF if syn.profile is not None and syn.profile.joint else Method.MAP_RERANK

    def _measured_pruned(self, syn: Synthesis, ranges: Ranges | Union) -> list[SynthesisConfig]:
        """The measured configurations in `ranges`; none: those of the fallback's method (or all)."""
        table = syn.table_configs()
        self.measured["requests"] += 1
        self.measured_labels.update(c.label for c in table)
        self.measured_sources.add(syn.quality_source)
        inside = [c for c in table if ranges.holds(c, syn.max_chunks)]
        if inside:
            return inside
        self.measured["outside_ranges"] += 1
        method = self._fallback_method(syn)
        return [c for c in table if c.method is method] or table

    def _choose(self, s: SchedulerView, syn: Synthesis) -> SynthesisConfig:
        ranges = self._ranges(syn)
        pruned = self._measured_pruned(syn, ranges) if syn.measured else ranges.configs(syn.max_chunks)
        candidates = self._running(syn, pruned)
        by_demand = sorted(candidates, key=lambda c: demand_tokens(syn, c))
        if not self.o.best_fit:
            return by_demand[len(by_demand) // 2]
        free = self.free_tokens(s)
        fits = [c for c in by_demand if demand_tokens(syn, c) * MEMORY_MARGIN <= free]
        if fits:
            self.counts["best_fit"] += 1
            return fits[-1]
        self.counts["fallback"] += 1
        if not self.o.fallback:
            return by_demand[0]
        method = self._fallback_method(syn)
        if syn.measured:  # the fallback's method over as many chunks as fit, among the measured; else the smallest
            table = sorted(syn.table_configs(), key=lambda c: demand_tokens(syn, c))
            runs = self._running(syn, table)
            fit = [c for c in runs if c.method is method and demand_tokens(syn, c) * MEMORY_MARGIN <= free]
            return fit[-1] if fit else runs[0]
        chunks = 1
        for c in range(2, syn.max_chunks + 1):
            config = SynthesisConfig(method, c)
            if demand_tokens(syn, config) * MEMORY_MARGIN > free or not self._runs(syn, config):
                break
            chunks = c
        return SynthesisConfig(method, chunks)

    def _feedback(self, syn: Synthesis, choice: SynthesisConfig) -> SynthesisConfig:
        chunks = min(GOLDEN.num_chunks, syn.max_chunks)
        golden = SynthesisConfig(GOLDEN.method, chunks, GOLDEN.intermediate_length)
        while chunks > 1 and not self._runs(syn, golden):  # the engine's context bounds the golden round
            chunks -= 1
            golden = SynthesisConfig(GOLDEN.method, chunks, GOLDEN.intermediate_length)
        if syn.measured and golden not in (table := syn.table_configs()):  # the costliest measured one that runs
            golden = max(self._running(syn, table), key=lambda c: demand_tokens(syn, c))
        self.counts["feedback_rounds"] += 1
        gold, own = syn.f1(golden), syn.f1(choice)
        if gold is not None and own is not None:
            if gold - own > self.o.feedback_gap:
                self.scale = min(2.0, self.scale * 1.25)
                self.counts["feedback_widened"] += 1
            else:
                self.scale = max(1.0, self.scale / 1.25)
        return golden

    def report(self, s: SchedulerView) -> dict[str, object]:
        out: dict[str, object] = {**self.counts, "chunk_scale": self.scale}
        if self.measured["requests"]:  # the space was restricted: say so, and to what
            out["measured_space"] = {**self.measured, "sources": sorted(self.measured_sources),
                                     "configurations": sorted(self.measured_labels)}
        return {**super().report(s), "ragserve": out}


def _build(options: RagServeOptions, costs: GpuCacheCosts) -> RagServePolicy:
    return RagServePolicy(options, costs)


POLICY = PolicyType("ragserve", RagServeOptions, _build,
                    "RAGServe/METIS: per-query configuration from a profile, best fit in free KV memory",
                    ("profiler", "best-fit", "fallback", "history", "feedback", "batching"))
