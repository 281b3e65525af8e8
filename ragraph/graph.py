"""Request graphs: the nodes a RAG request is made of and their data dependencies.

A request is a small DAG of `Generate` and `Retrieve` nodes (HedraRAG §3, "RAGraph").
The trace pins every number a node needs (token counts, nprobe, k, the probe-cluster
list), so the simulated and the real body do exactly the same work. Node specs are
immutable; the scheduler keeps the mutable run state elsewhere (`ragraph.runtime`).
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from enum import StrEnum

NodeKey = tuple[str, int]
"""(request id, node index inside the request): the identity of a node everywhere."""


class Op(StrEnum):
    GENERATE = "generate"
    RETRIEVE = "retrieve"


@dataclass(frozen=True, slots=True)
class Generate:
    """One LLM generation call."""

    prompt_tokens: int  # whole prompt, shared prefix included
    output_tokens: int  # exact number of tokens to decode (the trace pins it)
    prefix_tokens: int = 0  # leading prompt tokens shared with other requests (template)
    prefix: str = ""  # identity of that shared prefix ("" = none); equal ids share KV blocks
    role: str = "answer"  # the step's role in its workflow (answer, hypothesis, compress, reason)

    op = Op.GENERATE


@dataclass(frozen=True, slots=True)
class SearchTruth:
    """What a retrieval's search really finds, as the trace records it (measured on the index
    for corpus traces, drawn from a fitted model for synthetic ones)."""

    topk: tuple[int, ...]  # final top-k ids over the probe lists, best first
    hits: tuple[int, ...]  # the IVF list holding each of them (parallel to topk)
    top20: tuple[int, ...] = ()  # the best 20 ids of the same search (the request's local cache)
    prefix_same: tuple[bool, ...] = ()  # a query from 25/50/75% of its text finds the same top-k

    @property
    def hit_clusters(self) -> frozenset[int]:
        return frozenset(self.hits)

    def partial_topk(self, scanned: Collection[int], seed: Collection[int] = ()) -> tuple[int, ...]:
        """The running top-k after scanning the lists `scanned`, the candidates `seed` merged
        first: the final ids already found, in final order, then distinct negative
        placeholders for slots still held by other candidates (any non-final candidate ranks
        below every final one), so the result equals `topk` iff the search has found it."""
        found = tuple(i for i, h in zip(self.topk, self.hits, strict=True) if h in scanned or i in seed)
        return found + tuple(range(-1, -1 - (len(self.topk) - len(found)), -1))


@dataclass(frozen=True, slots=True)
class Retrieve:
    """One vector search: the query's `nprobe` IVF clusters, best `k` passages kept."""

    nprobe: int  # number of IVF lists searched
    k: int  # neighbours kept
    clusters: tuple[int, ...]  # probe list in coarse-quantizer order, len == nprobe
    role: str = "retrieve"
    query: str = ""  # query text where the trace has one (real backend); "" otherwise
    truth: SearchTruth | None = None  # what its search finds, where the trace records it

    op = Op.RETRIEVE


NodeSpec = Generate | Retrieve


@dataclass(frozen=True, slots=True)
class Request:
    """A request as submitted: its workflow unrolled into a DAG of node specs."""

    id: str
    arrival_s: float  # arrival time, seconds from the start of the trace
    workflow: str  # workflow name, for records and grouping
    nodes: tuple[NodeSpec, ...]  # in a topological order
    deps: tuple[tuple[int, ...], ...]  # deps[i]: indices of the nodes node i waits for
    question: str = ""  # the user question, where the trace has one

    def __post_init__(self) -> None:
        if len(self.deps) != len(self.nodes):
            raise ValueError(f"request {self.id}: {len(self.nodes)} nodes but {len(self.deps)} dep lists")
        for i, ds in enumerate(self.deps):
            if any(d >= i or d < 0 for d in ds):
                raise ValueError(f"request {self.id}: node {i} depends on a later node {ds}")


def chain(request_id: str, arrival_s: float, workflow: str, nodes: list[NodeSpec], question: str = "") -> Request:
    """A request whose nodes run one after another (every built-in workflow is a chain)."""
    deps = tuple(() if i == 0 else (i - 1,) for i in range(len(nodes)))
    return Request(request_id, arrival_s, workflow, tuple(nodes), deps, question)
