"""The trace format: JSON Lines, one request per line, validated with pydantic.

Each line is one `TraceRequest`; its `stages` list the workflow's unrolled nodes in order
(docs/traces.md documents every field). Errors name the file, the line and the field, so
a malformed trace is refused before anything runs. The same file replays unchanged on
the simulator and, later, on the real backend.
"""

from __future__ import annotations

import enum
import gc
from dataclasses import replace
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from ragraph.graph import PREFIX_FRACTIONS, Generate, NodeSpec, Request, Retrieve, SearchTruth
from ragraph.synthesis import ConfigError, Method, QueryProfile, Synthesis, SynthesisConfig, parse_config
from ragraph.workflows import WorkflowError, WorkflowRegistry, build_request


class TraceError(ValueError):
    """A trace that cannot be read; the message names file, line and field."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)  # no "0.5" for 0.5, no true for 1


Count = Annotated[int, Field(gt=0, lt=2**31)]
DEFAULT_BLOCK_TOKENS = 512  # tokens per hash id (Mooncake's traces)


class GenerateStage(_Strict):
    op: Literal["generate"]
    role: str = "answer"
    prompt_tokens: Count
    output_tokens: Count
    prefix_tokens: int = Field(default=0, ge=0, lt=2**31)
    prefix: str = ""
    hash_ids: list[Annotated[int, Field(ge=0, lt=2**63)]] = Field(default_factory=list)
    block_tokens: Count = DEFAULT_BLOCK_TOKENS

    @model_validator(mode="after")
    def _prefix_fits(self) -> GenerateStage:
        if self.prefix_tokens > self.prompt_tokens:
            raise ValueError("prefix_tokens exceeds prompt_tokens")
        if self.hash_ids and (self.prefix or self.prefix_tokens):
            raise ValueError("a prompt declares its shared prefix by prefix/prefix_tokens or by hash_ids, not both")
        if (len(self.hash_ids) - 1) * self.block_tokens >= self.prompt_tokens:
            raise ValueError(f"hash_ids has {len(self.hash_ids)} blocks of {self.block_tokens} tokens,"
                             f" more than the prompt's {self.prompt_tokens} tokens fill")
        return self


Id = Annotated[int, Field(ge=0, lt=2**63)]
TOP_CACHE = 20  # length of `truth.top20` (HedraRAG's per-request local cache)


class TruthRecord(_Strict):
    """A retrieval's search outcome (docs/traces.md, "truth"); checked against its stage below."""

    topk: list[Id]
    hits: list[Id]
    top20: list[Id]
    prefix_same: list[bool] = Field(default_factory=list)

    @model_validator(mode="after")
    def _consistent(self) -> TruthRecord:
        if len(self.hits) != len(self.topk):
            raise ValueError(f"hits has {len(self.hits)} entries, topk {len(self.topk)}")
        if len(set(self.topk)) != len(self.topk) or len(set(self.top20)) != len(self.top20):
            raise ValueError("topk and top20 ids must be distinct")
        if len(self.top20) > TOP_CACHE:
            raise ValueError(f"top20 has {len(self.top20)} entries, at most {TOP_CACHE}")
        m = min(len(self.topk), len(self.top20))
        if self.top20[:m] != self.topk[:m]:
            raise ValueError("top20 must start with topk (both are prefixes of one ranking)")
        if len(self.prefix_same) not in (0, len(PREFIX_FRACTIONS)):
            raise ValueError(f"prefix_same has {len(self.prefix_same)} entries, need 0 or {len(PREFIX_FRACTIONS)}")
        return self

    def spec(self) -> SearchTruth:
        return SearchTruth(tuple(self.topk), tuple(self.hits), tuple(self.top20), tuple(self.prefix_same))


class RetrieveStage(_Strict):
    op: Literal["retrieve"]
    role: str = "retrieve"
    nprobe: Count
    k: Count
    clusters: list[int] = Field(default_factory=list)
    query: str = ""
    truth: TruthRecord | None = None

    @field_validator("clusters")
    @classmethod
    def _clusters_match(cls, clusters: list[int], info: ValidationInfo) -> list[int]:
        nprobe = info.data.get("nprobe")
        if nprobe is not None and len(clusters) != nprobe:
            raise ValueError(f"clusters has {len(clusters)} entries, nprobe is {nprobe}")
        if len(set(clusters)) != len(clusters) or min(clusters, default=0) < 0:
            raise ValueError("clusters must be distinct non-negative list ids")
        return clusters

    @field_validator("truth")
    @classmethod
    def _truth_fits(cls, t: TruthRecord | None, info: ValidationInfo) -> TruthRecord | None:
        """topk has k ids and top20 20, each fewer only when the probe lists hold fewer vectors
        (then both hold all of them); every hit is one of the probe lists."""
        k, clusters = info.data.get("k"), info.data.get("clusters")
        if t is None or k is None or clusters is None:
            return t
        if len(t.topk) > k:
            raise ValueError(f"topk has {len(t.topk)} ids, k is {k}")
        if len(t.topk) < k and len(t.top20) != min(TOP_CACHE, len(t.topk)):
            raise ValueError(f"topk has {len(t.topk)} ids (k is {k}): the search found no more,"
                             f" so top20 must hold {min(TOP_CACHE, len(t.topk))}, not {len(t.top20)}")
        if len(t.top20) < TOP_CACHE and len(t.topk) != min(k, len(t.top20)):
            raise ValueError(f"top20 has {len(t.top20)} ids: the search found no more,"
                             f" so topk must hold {min(k, len(t.top20))}, not {len(t.topk)}")
        # a hit missing from the probe list; most retrievals have a few hits and hundreds of lists:
        # a scan of the list per hit is cheaper than a set of the lists (the same answer)
        hits = set(t.hits)
        outside = sorted(h for h in hits if h not in clusters) if len(hits) <= 4 else sorted(hits.difference(clusters))
        if outside:
            raise ValueError(f"hits: lists {outside[:5]} are not in clusters (the probe list)")
        return t


Stage = Annotated[GenerateStage | RetrieveStage, Field(discriminator="op")]


class ConfigRecord(_Strict):
    """A synthesis configuration (ragraph.synthesis): method, num_chunks, intermediate_length."""

    method: Literal["stuff", "map_reduce", "map_rerank"]
    num_chunks: int
    intermediate_length: int = 0

    @model_validator(mode="after")
    def _in_range(self) -> ConfigRecord:
        if why := self.spec().problem():
            raise ValueError(why)
        return self

    def spec(self) -> SynthesisConfig:
        return SynthesisConfig(Method(self.method), self.num_chunks, self.intermediate_length)


class ProfileRecord(_Strict):
    """METIS's query profile (docs/traces.md, "synthesis"), with where it came from."""

    complexity: Literal["high", "low"]
    joint: bool
    pieces: int = Field(ge=1, le=10)
    summary_range: list[int] = Field(min_length=2, max_length=2)
    confidence: float = Field(ge=0, le=1)
    source: str = Field(min_length=1)

    @field_validator("summary_range")
    @classmethod
    def _range(cls, r: list[int]) -> list[int]:
        if not 1 <= r[0] <= r[1]:
            raise ValueError(f"summary_range {list(r)} must be [lo, hi] with 1 <= lo <= hi")
        return r


class QualityRecord(_Strict):
    """F1 per configuration label (`stuff:chunks=10`, `map_reduce:chunks=5,length=50`)."""

    source: str = Field(min_length=1)  # "model:metis-curves-v1", "measured", ...
    f1: dict[str, Annotated[float, Field(ge=0, le=1)]]

    @field_validator("f1")
    @classmethod
    def _labels(cls, f1: dict[str, float]) -> dict[str, float]:
        for label in f1:
            try:
                parse_config(label)
            except ConfigError as exc:
                raise ValueError(str(exc)) from None
        return f1


class SynthesisRecord(_Strict):
    """The synthesis a policy chooses at run time (a workflow whose last step is `auto`)."""

    question_tokens: Count
    chunk_tokens: Count
    template_tokens: int = Field(default=0, ge=0, lt=2**31)
    answer_tokens: Count
    answer_source: str = ""  # "gold-answer": answer_tokens from the question's gold answers; "": drawn
    default: ConfigRecord
    profile: ProfileRecord | None = None
    quality: QualityRecord | None = None

    def spec(self, max_chunks: int) -> Synthesis:
        p = self.profile
        profile = None if p is None else QueryProfile(p.complexity, p.joint, p.pieces, tuple(p.summary_range),
                                                      p.confidence, p.source)
        q = self.quality
        return Synthesis(self.question_tokens, self.chunk_tokens, self.template_tokens, self.answer_tokens,
                         max_chunks, self.default.spec(), profile, tuple(q.f1.items()) if q else (),
                         q.source if q else "")


class TraceRequest(_Strict):
    id: str = Field(min_length=1)
    arrival_s: float = Field(ge=0, allow_inf_nan=False)
    workflow: str
    iterations: int = Field(default=0, ge=0, lt=2**31)
    question: str = ""
    answers: list[str] = Field(default_factory=list)  # gold answers to the question ([]: none; quality is not scored)
    dataset: str = ""
    index: str = ""  # identity of the index whose probe lists `stages` carry (backends.corpus); "": synthetic
    stages: list[Stage] = Field(min_length=1)
    synthesis: SynthesisRecord | None = None  # a synthesis chosen at run time (ragraph.synthesis)

    @model_validator(mode="after")
    def _synthesis_fits(self) -> TraceRequest:
        if self.synthesis is not None:
            chunks = self.max_chunks()
            if chunks == 0:
                raise ValueError("synthesis: a fan-out over zero chunks (no retrieve stage before it)")
            if why := self.synthesis.default.spec().problem(chunks):
                raise ValueError(f"synthesis.default: {why}")
        return self

    def max_chunks(self) -> int:
        """Chunks the last retrieval returns (its k): the most a synthesis may use."""
        return next((s.k for s in reversed(self.stages) if isinstance(s, RetrieveStage)), 0)

    def synthesis_spec(self) -> Synthesis | None:
        return self.synthesis.spec(self.max_chunks()) if self.synthesis is not None else None

    def node_specs(self) -> list[NodeSpec]:
        out: list[NodeSpec] = []
        for s in self.stages:
            if isinstance(s, GenerateStage):
                out.append(Generate(s.prompt_tokens, s.output_tokens, s.prefix_tokens, s.prefix, s.role,
                                    tuple(s.hash_ids), s.block_tokens if s.hash_ids else 0))
            else:
                truth = s.truth.spec() if s.truth is not None else None
                out.append(Retrieve(s.nprobe, s.k, tuple(s.clusters), s.role, s.query, truth))
        return out


def to_request(tr: TraceRequest, registry: WorkflowRegistry) -> Request:
    """The request graph of a validated trace line (with its gold answers); raises WorkflowError."""
    request = build_request(registry.get(tr.workflow), tr.id, tr.arrival_s, tr.iterations, tr.node_specs(),
                            tr.question, tr.synthesis_spec())
    return replace(request, answers=tuple(tr.answers)) if tr.answers else request


def _where(err: dict) -> str:
    return ".".join(str(p) for p in err["loc"] if p not in ("generate", "retrieve")) or "(line)"


class IndexCheck(enum.Enum):
    ANY = "any"


ANY_INDEX = IndexCheck.ANY  # load_trace(index=ANY_INDEX): the trace runs against no index (trace stats)


def read_lines(path: Path) -> list[str]:
    """A trace file's lines; a file that cannot be read, or is not UTF-8, is a TraceError."""
    try:
        return path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise TraceError(f"{path}: cannot read trace ({exc.strerror})") from None
    except UnicodeDecodeError as exc:
        raise TraceError(f"{path}: not UTF-8 text (byte {exc.start})") from None


def load_trace(path: str | Path, workflows: WorkflowRegistry | None = None, nlist: int | None = None, *,
               index: str | IndexCheck | None = ANY_INDEX, target: str = "") -> list[Request]:
    """Read and validate a trace; raises TraceError naming file, line and field.

    `nlist`, when given, bounds every cluster id (the index the trace will run against).
    `index` is the identity of that index (None: unknown, e.g. an analytic profile's); a line
    whose `index` is set and differs from it is refused, a line without one (synthetic) is not.
    The default, ANY_INDEX, checks nothing. `target` ends the refusal: what the trace runs
    against and what to do, e.g. "the profile describes index IVF4096,Flat (no identity); ..."."""
    path = Path(path)
    registry = workflows or WorkflowRegistry()
    lines = read_lines(path)
    collecting = gc.isenabled()
    gc.disable()  # millions of objects and no cycle: the cyclic collector would only walk them (~15% of a load)
    try:
        return _requests(path, lines, registry, nlist, index, target)
    finally:
        if collecting:
            gc.enable()


def _requests(path: Path, lines: list[str], registry: WorkflowRegistry, nlist: int | None,
              index: str | IndexCheck | None, target: str) -> list[Request]:
    """load_trace's validation of `lines`, line by line."""
    requests: list[Request] = []
    seen: set[str] = set()
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"{path}:{lineno}"
        try:
            tr = TraceRequest.model_validate_json(line)
        except ValidationError as exc:
            err = exc.errors()[0]
            raise TraceError(f"{where}: field {_where(err)}: {err['msg']}") from None
        if tr.id in seen:
            raise TraceError(f"{where}: field id: duplicate request id {tr.id!r}")
        seen.add(tr.id)
        if tr.index and tr.index != index and index is not ANY_INDEX:
            made = tr.index if tr.index.isprintable() else repr(tr.index)  # the message stays one line
            raise TraceError(f"{where}: field index: made against index {made}, but "
                             + (target or f"it runs against {f'index {index}' if index else 'an unknown index'}"))
        if nlist is not None:
            for i, st in enumerate(tr.stages):
                if isinstance(st, RetrieveStage) and max(st.clusters, default=0) >= nlist:
                    raise TraceError(f"{where}: field stages.{i}.clusters: list id {max(st.clusters)}"
                                     f" is outside the index's {nlist} lists")
        try:
            spec = registry.get(tr.workflow)
        except WorkflowError as exc:
            raise TraceError(f"{where}: field workflow: {exc}") from None
        try:
            request = build_request(spec, tr.id, tr.arrival_s, tr.iterations, tr.node_specs(), tr.question,
                                    tr.synthesis_spec())
        except WorkflowError as exc:
            raise TraceError(f"{where}: field stages: {exc}") from None
        requests.append(replace(request, answers=tuple(tr.answers)) if tr.answers else request)
    if not requests:
        raise TraceError(f"{path}: the trace has no requests")
    return requests
