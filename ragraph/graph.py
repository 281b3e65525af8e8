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
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ragraph.synthesis import Synthesis

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
    # the prompt's leading blocks as a chain of block ids (Mooncake's `hash_ids`): block j holds
    # tokens j*block_tokens..(j+1)*block_tokens-1, and two prompts whose ids agree up to block j
    # share those tokens (a tree of prefixes); () = none declared (`prefix` may be used instead)
    hash_ids: tuple[int, ...] = ()
    block_tokens: int = 0  # tokens per declared block (with hash_ids)

    op = Op.GENERATE

    @property
    def prefix_id(self) -> PrefixId | None:
        """The identity of its shared prefix (None: none): see `PrefixId`."""
        if self.hash_ids:
            return (self.block_tokens, *self.hash_ids)
        return self.prefix or None


PrefixId = str | tuple[int, ...]
"""A shared prefix's identity: a template's name (`Generate.prefix`), or (block_tokens, *hash_ids)."""


PREFIX_FRACTIONS: tuple[float, ...] = (0.25, 0.5, 0.75)
"""Shares of the eventual query text (by words) whose speculative retrieval a trace records."""


def query_prefix(text: str, fraction: float) -> str:
    """The first `fraction` of `text`'s words (at least one word of a non-empty text): what a
    speculative retrieval started on a partial generation embeds (`SearchTruth.prefix_same`)."""
    words = text.split()
    return " ".join(words[: max(1, int(len(words) * fraction))]) if words else ""


@dataclass(frozen=True, slots=True)
class SearchTruth:
    """What a retrieval's search finds, so that a body without the index reproduces its outcome.

    The search is the IVF search of the query over its probe list (`Retrieve.clusters`); a
    body that scans some of those clusters learns the partial result from `partial_topk`."""

    topk: tuple[int, ...]  # final top-k passage ids, best first (shorter only if the lists hold fewer)
    hits: tuple[int, ...]  # parallel to topk: the IVF list holding each id (a member of the probe list)
    top20: tuple[int, ...]  # the best 20 ids of the same search (starts with topk): the request's local cache
    # for a retrieval that follows a generation: whether the query made of the first 25%, 50%, 75%
    # of the eventual query's words (PREFIX_FRACTIONS), searched in its own probe list, finds the
    # same top-k ids in the same order; () where no generation precedes the retrieval
    prefix_same: tuple[bool, ...] = ()

    @property
    def hit_clusters(self) -> frozenset[int]:
        """The distinct lists that hold the final top-k (the paper's "hit" clusters)."""
        return frozenset(self.hits)

    def partial_topk(self, scanned: Collection[int], seed: Collection[int] = ()) -> tuple[int, ...]:
        """The running top-k after scanning the lists `scanned`, having first merged the ids `seed`
        (the request's previous top-20): the final ids whose hit list is scanned or which are
        seeded, in final order, then placeholders -1, -2, ... for the slots other candidates hold.

        Why this is exact up to the placeholders: every candidate outside the final top-k ranks
        below every final member, so the final members met so far lead the running heap in their
        final order. Hence `partial_topk(...) == topk` iff the search already has its result."""
        found = tuple(i for i, c in zip(self.topk, self.hits, strict=True) if c in scanned or i in seed)
        return found + tuple(range(-1, -1 - (len(self.topk) - len(found)), -1))


@dataclass(frozen=True, slots=True)
class Retrieve:
    """One vector search: the query's `nprobe` IVF clusters, best `k` passages kept."""

    nprobe: int  # number of IVF lists searched
    k: int  # neighbours kept
    clusters: tuple[int, ...]  # probe list in coarse-quantizer order, len == nprobe
    role: str = "retrieve"
    query: str = ""  # query text where the trace has one (real backend); "" otherwise
    truth: SearchTruth | None = None  # what the search finds, where the trace records it

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
    answers: tuple[str, ...] = ()  # its gold answers, where the trace has them (answer quality is scored on them)
    # a synthesis chosen at run time (RAGServe): the core asks the policy for its configuration
    # once every node above is done and appends the nodes it builds (ragraph.synthesis)
    synthesis: Synthesis | None = None

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


def levels(request_id: str, arrival_s: float, workflow: str, nodes: list[NodeSpec], widths: list[int],
           question: str = "") -> Request:
    """A request whose nodes run level by level (`widths[i]` nodes side by side at level i), each
    node after every node of the level before it (an AND join)."""
    if sum(widths) != len(nodes):
        raise ValueError(f"request {request_id}: levels hold {sum(widths)} nodes, got {len(nodes)}")
    deps: list[tuple[int, ...]] = []
    prev: tuple[int, ...] = ()
    for w in widths:
        level = tuple(range(len(deps), len(deps) + w))
        deps.extend(prev for _ in level)
        prev = level
    return Request(request_id, arrival_s, workflow, tuple(nodes), tuple(deps), question)
