"""The retrieval lanes' real work: embed, assign and scan queries sub-stage by sub-stage.

`RetrievalService` turns the core's `SearchBatch` items into FAISS calls (cpu_retrieval)
or GPU-cache scans (gpu_retrieval), and `CacheLoad` items into cluster copies (pcie). It
keeps each query's running top-k between sub-stages (HedraRAG's node splitting): the
first sub-stage of a query embeds its text and starts its heap, every later one continues
it, whichever lane runs it. The clusters each sub-stage scans are the core's choice (the
trace's probe list, in the policy's order); nothing here decides what to search. A first
sub-stage's `seed` (the request's previous top-20) is merged into the new heap before any
scan, restricted to the ids whose list is in the query's probe list (`IVFRetriever.seed`).

Query text: the text the executor passes with the search for that node (a query built from
what the model generated, `backends.answers`), else the Retrieve node's own `query` (what
`hedra trace gen --corpus` writes), else the request's question. A trace without text (a
synthetic what-if trace) is searched with the centroid of the query's first probe list as
its vector, so the work is still real.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence
from functools import cached_property
from typing import TYPE_CHECKING

import numpy as np

from ragraph.graph import NodeKey, Request, Retrieve, query_prefix
from ragraph.work import CacheLoad, CacheLoadResult, Lane, ScanTask, SearchBatch, SearchResult, embed_groups

if TYPE_CHECKING:
    from backends.gpu_cache import ClusterCache
    from backends.ivf import IVFRetriever, QueryTopK


class RetrievalService:
    """Runs search and cache items for one replay; `requests` gives each query its text."""

    def __init__(self, retriever: IVFRetriever, encode: Callable[[list[str]], np.ndarray],
                 requests: Sequence[Request], cache: ClusterCache | None = None) -> None:
        self.retriever = retriever
        self.encode = encode
        self.cache = cache
        self._requests = {r.id: r for r in requests}
        self._topk: dict[NodeKey, QueryTopK] = {}
        self._locks: dict[NodeKey, threading.Lock] = {}  # a query may have sub-stages on two lanes at once
        self._state_lock = threading.Lock()
        self._encode_lock = threading.Lock()  # one embedding model, shared by the retrieval lanes
        self._prefix_probes: dict[NodeKey, tuple[int, ...]] = {}  # speculative searches' own probe lists
        self._queries: dict[NodeKey, str] = {}  # query texts passed with a search (generated text)

    @cached_property
    def list_sizes(self) -> list[int]:
        """Vectors per IVF list (what a search item's timeline args count); the index does not
        change during a replay, so it is read once."""
        return self.retriever.list_sizes()

    # --- lane items ------------------------------------------------------------------------

    def search(self, batch: SearchBatch, queries: Mapping[NodeKey, str] | None = None) -> SearchResult:
        """Run `batch`; `queries[key]` replaces the query text of a first sub-stage."""
        if queries:
            with self._state_lock:
                self._queries.update(queries)
        self._start_new([t for t in batch.tasks if t.first], queries or {}, batch.embed_call_tokens)
        states = [self._topk[t.key] for t in batch.tasks]
        clusters = [t.clusters if t.prefix >= 1 else self._prefix_probes.pop(t.key) for t in batch.tasks]
        locks = [self._locks[t.key] for t in sorted(batch.tasks, key=lambda t: t.key)]
        for lock in locks:
            lock.acquire()
        try:
            if batch.lane is Lane.GPU_RETRIEVAL:
                if self.cache is None:
                    raise RuntimeError("a gpu_retrieval item but no GPU cluster cache is configured")
                self.cache.search(states, clusters)
            else:
                self.retriever.scan(states, clusters)
            return SearchResult({t.key: tuple(int(i) for i in s.result()[1] if i >= 0)
                                 for t, s in zip(batch.tasks, states, strict=True)})
        finally:
            for lock in locks:
                lock.release()

    def load(self, item: CacheLoad) -> CacheLoadResult:
        if self.cache is None:
            raise RuntimeError("a pcie item but no GPU cluster cache is configured")
        return CacheLoadResult(self.cache.load(item.load, item.evict))

    def forget(self, request_id: str) -> None:
        """Drop the per-query state of a request that ended."""
        with self._state_lock:
            for key in [k for k in self._topk if k[0] == request_id]:
                del self._topk[key]
                del self._locks[key]
            for key in [k for k in self._queries if k[0] == request_id]:
                del self._queries[key]

    # --- internals ---------------------------------------------------------------------------

    def _start_new(self, tasks: list[ScanTask], given: Mapping[NodeKey, str], call_tokens: float) -> None:
        """Embed (in model calls grouped by length, cut at `call_tokens`: `embed_groups`) and start
        the heaps of queries in their first sub-stage. A speculative search (prefix < 1) embeds its
        query's prefix, unless its text was `given` (the real partial generation of a model that
        answers): then that text, whole."""
        if not tasks:
            return
        vectors: dict[NodeKey, np.ndarray] = {}
        texts: dict[NodeKey, str] = {}
        tokens: list[int] = []  # each text's tokens, as the scheduler counted them (0: not counted)
        for t in tasks:
            text = self._text(t.key) if t.prefix >= 1 or t.key in given else query_prefix(self._text(t.key), t.prefix)
            if text:
                texts[t.key] = text
                tokens.append(t.embed_tokens)
            else:
                vectors[t.key] = self.retriever.centroid(t.clusters[0])
        if texts:
            keys, values = list(texts), list(texts.values())
            with self._encode_lock:  # one model call per length group, as the search model prices the call
                for group in embed_groups(tokens, call_tokens) if any(tokens) else [range(len(keys))]:
                    emb = self.encode([values[i] for i in group])
                    vectors.update(zip((keys[i] for i in group), emb, strict=True))
        with self._state_lock:
            for t in tasks:
                q = self.retriever.start(np.asarray(vectors[t.key], dtype=np.float32), t.k)
                if t.prefix < 1:  # a speculative search on a prefix: the prefix's own probe list
                    probe = self.retriever.assign(q.vector[None, :], len(t.clusters))[1][0]
                    self._prefix_probes[t.key] = tuple(int(c) for c in probe if c >= 0)
                if t.seed:  # the local top-20 cache, filtered to the query's probe list
                    self.retriever.seed(q, t.seed, self._spec(t.key).clusters)
                self._topk[t.key] = q
                self._locks[t.key] = threading.Lock()

    def _spec(self, key: NodeKey) -> Retrieve:
        spec = self._requests[key[0]].nodes[key[1]]
        assert isinstance(spec, Retrieve), key
        return spec

    def _text(self, key: NodeKey) -> str:
        return self._queries.get(key) or self._spec(key).query or self._requests[key[0]].question
