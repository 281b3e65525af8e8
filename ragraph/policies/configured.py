"""Policies that choose each request's synthesis configuration, and the two baselines.

Source: RAGServe / METIS (arXiv 2412.10543), §7's baselines. All of them schedule like `hedra`
with its default techniques (retrieval sub-stages, wavefronts, reordering, speculation), so a
comparison between them is a comparison of configuration choices alone; they differ in
`Policy.configure`, called once per request whose synthesis is chosen at run time (the
`metis` workflow) when its profile and retrieval are done. Requests of other workflows run as
under `hedra`.

- `fixed:synthesis=stuff,chunks=N[,length=L]`: vLLM with one configuration for every query
  (METIS's fixed-configuration baselines);
- `adaptive`: AdaptiveRAG*-like: the query's complexity class picks the configuration that
  gives that class its best quality (high: map_reduce over `high_chunks` chunks, summaries of
  `high_length` words; low: stuff over `low_chunks`), blind to memory and cost.

`ragserve` (`ragraph.policies.ragserve`) builds on `ConfiguringPolicy` too.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from ragraph.costs import GpuCacheCosts
from ragraph.graph import Request
from ragraph.policies.hedra import HedraOptions, HedraPolicy
from ragraph.policies.spec import PolicyType
from ragraph.synthesis import INTERMEDIATE_LENGTH, NUM_CHUNKS, Method, Synthesis, SynthesisConfig, space

if TYPE_CHECKING:
    from ragraph.runtime import RequestRun
    from ragraph.view import SchedulerView

Chunks = Field(ge=NUM_CHUNKS[0], le=NUM_CHUNKS[1])


class ConfiguringPolicy(HedraPolicy):
    """hedra's scheduling with its default options; subclasses choose configurations."""

    def __init__(self, costs: GpuCacheCosts) -> None:
        super().__init__(HedraOptions(), costs)
        self.configured: dict[str, int] = {}  # configuration label -> requests given it

    def choosable(self, syn: Synthesis) -> Iterable[SynthesisConfig]:
        """Every configuration this policy may choose for a request with `syn` (default: the
        whole space over its chunks, `ragraph.synthesis.space`)."""
        return space(syn.max_chunks)

    def accepts(self, requests: Sequence[Request]) -> str:
        """Refuse requests whose quality table lacks a configuration this policy may choose (its
        F1 could not be reported): checked at the edge, before a run."""
        for r in requests:
            syn = r.synthesis
            if syn is None or not syn.quality:
                continue
            table = {name for name, _ in syn.quality}
            if missing := next((c for c in self.choosable(syn) if c.label not in table), None):
                return (f"request {r.id!r}: its quality table ({syn.quality_source}) lacks the configuration"
                        f" {missing.label}, which {self.name} may choose")
        return ""

    def chose(self, config: SynthesisConfig) -> SynthesisConfig:
        """Count `config` for the report and return it."""
        self.configured[config.method.value] = self.configured.get(config.method.value, 0) + 1
        return config

    def report(self, s: SchedulerView) -> dict[str, object]:
        return {**super().report(s), "configurations": dict(sorted(self.configured.items()))}


class FixedOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)
    synthesis: Literal["stuff", "map_reduce", "map_rerank"] = Field("stuff", description="synthesis method")
    chunks: int = Field(10, ge=NUM_CHUNKS[0], le=NUM_CHUNKS[1], description="num_chunks for every query")
    length: int = Field(0, ge=0, le=INTERMEDIATE_LENGTH[1],
                        description="intermediate_length in words (map_reduce only)")

    @model_validator(mode="after")
    def _valid(self) -> FixedOptions:
        if why := self.config().problem():
            raise ValueError(why)
        return self

    def config(self) -> SynthesisConfig:
        return SynthesisConfig(Method(self.synthesis), self.chunks, self.length)


class FixedPolicy(ConfiguringPolicy):
    name = "fixed"

    def __init__(self, options: FixedOptions, costs: GpuCacheCosts) -> None:
        super().__init__(costs)
        self.config = options.config()

    def accepts(self, requests: Sequence[Request]) -> str:
        for r in requests:
            if r.synthesis is not None and (why := self.config.problem(r.synthesis.max_chunks)):
                return f"fixed configuration {self.config.label} cannot run request {r.id!r}: {why}"
        return super().accepts(requests)

    def choosable(self, syn: Synthesis) -> Iterable[SynthesisConfig]:
        return (self.config,)

    def configure(self, s: SchedulerView, run: RequestRun, now: float) -> SynthesisConfig:
        return self.chose(self.config)


class AdaptiveOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)
    high_chunks: int = Field(30, ge=NUM_CHUNKS[0], le=NUM_CHUNKS[1], description="chunks for complex queries")
    high_length: int = Field(100, ge=INTERMEDIATE_LENGTH[0], le=INTERMEDIATE_LENGTH[1],
                             description="map_reduce summary words for complex queries")
    low_chunks: int = Field(15, ge=NUM_CHUNKS[0], le=NUM_CHUNKS[1], description="stuff chunks for simple queries")


class AdaptivePolicy(ConfiguringPolicy):
    name = "adaptive"

    def __init__(self, options: AdaptiveOptions, costs: GpuCacheCosts) -> None:
        super().__init__(costs)
        self.classes = options

    def choice(self, syn: Synthesis) -> SynthesisConfig:
        """The configuration of the query's complexity class."""
        o = self.classes
        if syn.profile is not None and syn.profile.complexity == "high":
            return SynthesisConfig(Method.MAP_REDUCE, min(o.high_chunks, syn.max_chunks), o.high_length)
        return SynthesisConfig(Method.STUFF, min(o.low_chunks, syn.max_chunks))

    def choosable(self, syn: Synthesis) -> Iterable[SynthesisConfig]:
        return (self.choice(syn),)

    def configure(self, s: SchedulerView, run: RequestRun, now: float) -> SynthesisConfig:
        syn = run.request.synthesis
        assert syn is not None
        return self.chose(self.choice(syn))


def _build_fixed(options: FixedOptions, costs: GpuCacheCosts) -> FixedPolicy:
    return FixedPolicy(options, costs)


def _build_adaptive(options: AdaptiveOptions, costs: GpuCacheCosts) -> AdaptivePolicy:
    return AdaptivePolicy(options, costs)


FIXED = PolicyType("fixed", FixedOptions, _build_fixed,
                   "one synthesis configuration for every query (METIS's fixed baselines), hedra's scheduling")
ADAPTIVE = PolicyType("adaptive", AdaptiveOptions, _build_adaptive,
                      "AdaptiveRAG*-like: the complexity class's best-quality configuration, blind to memory")
