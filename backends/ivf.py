"""A FAISS IVF index searched cluster by cluster: HedraRAG's fine-grained retrieval sub-stages.

A query's nprobe coarse clusters (`IVFRetriever.assign`) are split into sub-stages; each
sub-stage scans some of them (`IVFRetriever.scan`, one batched `search_preassigned` call for
many queries) and continues the query's running top-k (`QueryTopK`), which is kept in FAISS's
own heap layout between calls (`parallel_mode | 1024`: FAISS neither initialises nor sorts the
result heap, so the next call carries on from it). Whatever the split, order and batching, the
final `QueryTopK.result()` equals one `index.search` with the same nprobe (see "Ties" below).

FAISS facts this relies on (faiss-cpu 1.15.1, checked):

* Coarse distances. `search_preassigned(x, k, Iq, Dq)` hands `Dq[i, j]` to the list scanner as
  the query's distance to centroid `Iq[i, j]`. Only indexes that encode residuals
  (`by_residual`, e.g. IVFPQ, IVFScalarQuantizer by default) use it. IndexIVFFlat stores raw
  vectors (`by_residual` is False) and its scanner ignores it: zeros or garbage give bit-identical
  results. So for IVFFlat `scan` passes zeros; for residual indexes it passes the distance
  `assign()` returned (remembered by `start(..., coarse=...)`) and otherwise computes it from the
  centroid (exact float32 arithmetic, which may differ from the quantizer's in the last bits).
* Threads. `search_preassigned` itself parallelises only with parallel_mode 1, 2 (over one
  query's lists) or 3 (over queries); mode 0 runs single-threaded. Modes 1 and 2 do NOT work with
  the 1024 flag: they keep per-thread heaps that the flag also leaves uninitialised, and the call
  returns zeros. So `scan` uses mode 3 | 1024 (parallel over queries, heaps continued in place)
  when there are at least as many rows as threads, and otherwise (a few queries, several threads)
  mode 1 on fresh heaps, merging each row's result into its query with `QueryTopK.merge`.
* Lists are scanned in the order given in the row of `Iq`, not sorted by `Dq`; `-1` entries are
  skipped, so rows are padded with -1 and `index.nprobe` is set to the row width.

Ties. Distances of one (query, vector) pair are computed by the same kernel whatever the
batching, so they are bit-identical to `index.search`'s. Ids can differ only at an exact tie at
the k-th place (e.g. duplicate vectors): FAISS only lets a strictly better candidate replace the
heap's worst entry, so which of two equal candidates survives depends on the order they were
seen; sorting (FAISS's and `result()`) orders equal distances by id (ascending for L2,
descending for inner product). `merge` resolves ties by that same order, independent of the
order of its inputs. Tests therefore compare ids exactly except within groups of exactly equal
distances, where each returned id must carry that distance.

An `IVFRetriever` sets `nprobe`, `parallel_mode` and the OpenMP thread count on the shared index
for the duration of each call and restores them after: use one retriever (one lane) per index at
a time.
"""

from __future__ import annotations

import os
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    import faiss


class RetrieverUnavailable(RuntimeError):
    """The retrieval backend's optional dependency (faiss, torch) is not installed."""


def _faiss() -> Any:
    try:
        import faiss
    except ImportError as exc:  # pragma: no cover - exercised only without faiss
        raise RetrieverUnavailable(f"faiss is not installed: pip install faiss-cpu ({exc})") from None
    return faiss


_NO_HEAP_INIT = 1024  # IndexIVF.parallel_mode flag: do not initialise or reorder the result heaps
_PMODE_OVER_LISTS = 1  # one query at a time, its lists split between threads (not with 1024)
_PMODE_OVER_QUERIES = 3  # queries split between threads (works with 1024)


_FLT_MAX = float(np.finfo(np.float32).max)


def _neutral(inner_product: bool) -> float:
    """The distance of an empty heap slot: what FAISS fills heaps and missing results with."""
    return -_FLT_MAX if inner_product else _FLT_MAX


# --- the running top-k of one query -----------------------------------------------------------------


@dataclass(eq=False, slots=True)
class QueryTopK:
    """The running top-k of one query, carried between sub-stages.

    `D`/`I` hold a FAISS result heap of size k (worst entry first: a max-heap of distances for
    L2, a min-heap of similarities for inner product; empty slots are (+FLT_MAX, -1) / (-FLT_MAX, -1),
    the neutral values FAISS itself fills heaps with), so
    `search_preassigned` with `parallel_mode | 1024` can continue it in place.
    """

    vector: np.ndarray  # (d,) float32
    k: int
    inner_product: bool  # larger is better (METRIC_INNER_PRODUCT); else smaller (L2)
    D: np.ndarray  # (k,) float32, heap layout
    I: np.ndarray  # (k,) int64, heap layout  # noqa: E741
    scanned: set[int] = field(default_factory=set)  # clusters already merged in (a rescan is refused)
    coarse: dict[int, float] = field(default_factory=dict)  # cluster -> coarse distance from assign()
    # seeded candidates (ScanTask.seed, set by IVFRetriever.seed): kept beside the FAISS heap and
    # merged into every result, ids deduplicated, so that meeting a seeded id again in its list
    # neither counts it twice nor pushes a candidate out of the heap
    seed_D: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=np.float32))
    seed_I: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=np.int64))

    @classmethod
    def empty(cls, vector: np.ndarray, k: int, *, inner_product: bool) -> QueryTopK:
        if k <= 0:
            raise ValueError(f"k must be positive, got {k}")
        v = np.ascontiguousarray(vector, dtype=np.float32).reshape(-1)
        neutral = _neutral(inner_product)
        return cls(v, k, inner_product, np.full(k, neutral, dtype=np.float32), np.full(k, -1, dtype=np.int64))

    def _order(self, D: np.ndarray, I: np.ndarray) -> np.ndarray:  # noqa: E741
        """Best-first order of candidates: by distance, ties by id (as FAISS sorts its heaps)."""
        if self.inner_product:
            return np.lexsort((-I, -D.astype(np.float64)))
        return np.lexsort((I, D))

    def result(self) -> tuple[np.ndarray, np.ndarray]:
        """The top-k sorted best-first (a copy; the heap is left as it is), seeds merged in. Missing
        entries at the end are (+FLT_MAX, -1) for L2 and (-FLT_MAX, -1) for inner product, as
        `index.search` returns."""
        valid = self.I >= 0
        D, I = self.D[valid], self.I[valid]  # noqa: E741
        o = self._order(D, I)
        if len(self.seed_I):
            D = np.concatenate([D, self.seed_D])
            I = np.concatenate([I, self.seed_I])  # noqa: E741
            o = self._order(D, I)
            _, first = np.unique(I[o], return_index=True)  # an id met in its list and seeded: once
            o = o[np.sort(first)][: self.k]
        outD = np.full(self.k, _neutral(self.inner_product), dtype=np.float32)
        outI = np.full(self.k, -1, dtype=np.int64)
        outD[: len(o)] = D[o]
        outI[: len(o)] = I[o]
        return outD, outI

    def ids(self) -> tuple[int, ...]:
        """The current top-k ids, best first (no empty slots)."""
        _, I = self.result()  # noqa: E741
        return tuple(int(i) for i in I if i >= 0)

    def merge(self, D: np.ndarray, I: np.ndarray) -> None:  # noqa: E741
        """Merge candidates (sorted or not; -1 ids ignored) into the heap, keeping the best k.

        Ties are broken by id in the order `result()` sorts them, so the outcome does not depend on
        the order of the inputs. Ids are not deduplicated (an IVF may hold one id twice): merge each
        cluster's candidates once (`scanned` guards that for scan/ClusterCache.search)."""
        D = np.asarray(D, dtype=np.float32).reshape(-1)
        I = np.asarray(I, dtype=np.int64).reshape(-1)  # noqa: E741
        if D.shape != I.shape:
            raise ValueError(f"merge: D and I differ in shape ({D.shape} vs {I.shape})")
        keep = I >= 0
        valid = self.I >= 0
        allD = np.concatenate([self.D[valid], D[keep]])
        allI = np.concatenate([self.I[valid], I[keep]])
        best = self._order(allD, allI)[: self.k]
        # a sorted array is a valid heap when the worst entry comes first: write best-first reversed
        # into the tail, and pad the head with the neutral (worst) value
        n = len(best)
        self.D[: self.k - n] = _neutral(self.inner_product)
        self.I[: self.k - n] = -1
        self.D[self.k - n :] = allD[best[::-1]]
        self.I[self.k - n :] = allI[best[::-1]]


# --- the retriever ------------------------------------------------------------------------------------


def scan_row(q: QueryTopK, clusters: Sequence[int], *, inner_product: bool, d: int) -> list[int]:
    """`clusters` as ints, checked for a scan of `q` by a searcher of metric `inner_product` and
    dimension `d`: no cluster twice, none scanned for `q` before (the FAISS scan and the GPU cache
    both merge into the same heap, so each cluster may reach it once)."""
    row = [int(c) for c in clusters]
    if q.inner_product != inner_product or q.vector.shape != (d,):
        raise ValueError("query does not match this searcher's index (metric or dimension differs)")
    if len(set(row)) != len(row):
        raise ValueError(f"cluster listed twice for one query: {row}")
    again = sorted(q.scanned.intersection(row))
    if again:
        raise ValueError(f"clusters already scanned for this query: {again}")
    return row


class IVFRetriever:
    """An `faiss.IndexIVF` (IVFFlat at least; L2 or inner product) searched cluster by cluster."""

    def __init__(self, index: faiss.IndexIVF, *, threads: int = 1) -> None:
        faiss = _faiss()
        if not isinstance(index, faiss.IndexIVF):
            raise TypeError(f"IVFRetriever needs a faiss.IndexIVF, got {type(index).__name__} (see load_index)")
        if index.metric_type not in (faiss.METRIC_INNER_PRODUCT, faiss.METRIC_L2):
            raise ValueError(f"IVFRetriever supports inner product and L2 indexes, not metric {index.metric_type}")
        if not index.is_trained:
            raise ValueError("IVFRetriever: the index is not trained")
        if threads < 1:
            raise ValueError(f"threads must be >= 1, got {threads}")
        self.index = index
        self.threads = threads
        self.inner_product: bool = index.metric_type == faiss.METRIC_INNER_PRODUCT
        self.needs_coarse: bool = bool(index.by_residual)  # False for IVFFlat: its scanner ignores Dq
        self._centroids: np.ndarray | None = None

    # --- facts about the index

    @property
    def nlist(self) -> int:
        return int(self.index.nlist)

    @property
    def d(self) -> int:
        return int(self.index.d)

    @property
    def ntotal(self) -> int:
        return int(self.index.ntotal)

    @property
    def metric(self) -> Literal["inner_product", "l2"]:
        return "inner_product" if self.inner_product else "l2"

    def centroid(self, cluster: int) -> np.ndarray:
        """The coarse centroid of one cluster, (d,) float32 (a copy)."""
        if not 0 <= cluster < self.nlist:
            raise ValueError(f"cluster id {cluster} out of range [0, {self.nlist})")
        return self._all_centroids()[cluster].copy()

    def _all_centroids(self) -> np.ndarray:
        if self._centroids is None:
            self._centroids = np.ascontiguousarray(self.index.quantizer.reconstruct_n(0, self.nlist), dtype=np.float32)
        return self._centroids

    def list_sizes(self) -> list[int]:
        inv = self.index.invlists
        return [int(inv.list_size(c)) for c in range(self.nlist)]

    # --- searching

    def _vectors(self, x: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(x, dtype=np.float32)
        if x.ndim == 1:
            x = x.reshape(1, -1)
        if x.ndim != 2 or x.shape[1] != self.d:
            raise ValueError(f"expected vectors of dimension {self.d}, got shape {x.shape}")
        return x

    def assign(self, x: np.ndarray, nprobe: int) -> tuple[np.ndarray, np.ndarray]:
        """Coarse assignment, once per query: (Dq, Iq), each (n, nprobe), nearest centroid first."""
        faiss = _faiss()
        x = self._vectors(x)
        nprobe = max(1, min(int(nprobe), self.nlist))
        before = faiss.omp_get_max_threads()
        faiss.omp_set_num_threads(self.threads)
        try:
            Dq, Iq = self.index.quantizer.search(x, nprobe)
        finally:
            faiss.omp_set_num_threads(before)
        return Dq, Iq

    def start(self, vector: np.ndarray, k: int, *, coarse: tuple[np.ndarray, np.ndarray] | None = None) -> QueryTopK:
        """An empty top-k for one query. `coarse` = that query's row of `assign()` (Dq, Iq); only
        residual-encoding indexes (not IVFFlat) use the distances."""
        v = self._vectors(vector)
        if v.shape[0] != 1:
            raise ValueError(f"start takes one query vector, got {v.shape[0]}")
        q = QueryTopK.empty(v[0], k, inner_product=self.inner_product)
        if coarse is not None:
            Dq, Iq = (np.asarray(a).reshape(-1) for a in coarse)
            q.coarse = {int(c): float(dq) for dq, c in zip(Dq, Iq, strict=True) if c >= 0}
        return q

    @cached_property
    def id_lists(self) -> IdLists:
        """Where each stored id lives (built on first use, from the inverted lists)."""
        return IdLists(self.index)

    def seed(self, q: QueryTopK, ids: Sequence[int], probe: Collection[int]) -> None:
        """Merge candidate `ids` into `q` before its first scan (ScanTask.seed): those whose list is
        in `probe` (the query's probe list), their vectors read from the index and their distances
        computed by FAISS's own kernel (bit-identical to a scan's), so the final top-k is unchanged."""
        if q.scanned:
            raise ValueError("seed before the query's first scan")
        ids = np.unique(np.asarray(ids, dtype=np.int64))
        lists, offsets = self.id_lists.locate(ids)
        keep = (lists >= 0) & np.isin(lists, np.fromiter(probe, dtype=np.int64))
        faiss = _faiss()
        kernel = faiss.fvec_inner_product if self.inner_product else faiss.fvec_L2sqr
        vec = np.empty(self.d, dtype=np.float32)
        dist = np.empty(int(keep.sum()), dtype=np.float32)
        for j, (c, o) in enumerate(zip(lists[keep], offsets[keep], strict=True)):
            self.index.reconstruct_from_offset(int(c), int(o), faiss.swig_ptr(vec))
            dist[j] = kernel(faiss.swig_ptr(q.vector), faiss.swig_ptr(vec), self.d)
        q.seed_D, q.seed_I = dist, ids[keep]

    def _coarse_distances(self, q: QueryTopK, clusters: Sequence[int]) -> np.ndarray:
        out = np.zeros(len(clusters), dtype=np.float32)
        if not self.needs_coarse:
            return out
        missing = [j for j, c in enumerate(clusters) if c not in q.coarse]
        for j, c in enumerate(clusters):
            if c in q.coarse:
                out[j] = q.coarse[c]
        if missing:
            cen = self._all_centroids()[[clusters[j] for j in missing]]
            if self.inner_product:
                out[missing] = cen @ q.vector
            else:
                out[missing] = ((cen - q.vector) ** 2).sum(axis=1)
        return out

    def _check(self, queries: Sequence[QueryTopK], clusters: Sequence[Sequence[int]]) -> list[list[int]]:
        if len(queries) != len(clusters):
            raise ValueError(f"{len(queries)} queries but {len(clusters)} cluster lists")
        if len({id(q) for q in queries}) != len(queries):
            raise ValueError("a query appears twice in one batch: give it one row with all its clusters")
        rows: list[list[int]] = []
        for q, cs in zip(queries, clusters, strict=True):
            row = scan_row(q, cs, inner_product=self.inner_product, d=self.d)
            bad = [c for c in row if not 0 <= c < self.nlist]
            if bad:
                raise ValueError(f"cluster ids out of range [0, {self.nlist}): {bad}")
            rows.append(row)
        return rows

    def scan(self, queries: Sequence[QueryTopK], clusters: Sequence[Sequence[int]]) -> None:
        """Scan `clusters[i]` for `queries[i]`, continuing each query's top-k in place.

        One batched `search_preassigned` call (one per distinct k in the batch): rows padded with
        -1 to the longest list, `index.nprobe` set to that width, `threads` OpenMP threads."""
        rows = self._check(queries, clusters)
        by_k: dict[int, list[int]] = {}
        for i, q in enumerate(queries):
            if rows[i]:
                by_k.setdefault(q.k, []).append(i)
        for k, members in by_k.items():
            self._scan_group(k, [queries[i] for i in members], [rows[i] for i in members])
        for q, row in zip(queries, rows, strict=True):
            q.scanned.update(row)

    def _scan_group(self, k: int, queries: list[QueryTopK], rows: list[list[int]]) -> None:
        faiss = _faiss()
        n = len(queries)
        width = max(len(r) for r in rows)
        x = np.stack([q.vector for q in queries])
        Iq = np.full((n, width), -1, dtype=np.int64)
        Dq = np.zeros((n, width), dtype=np.float32)
        for i, (q, row) in enumerate(zip(queries, rows, strict=True)):
            Iq[i, : len(row)] = row
            Dq[i, : len(row)] = self._coarse_distances(q, row)
        continue_heaps = self.threads == 1 or n >= self.threads
        index = self.index
        saved = (index.nprobe, index.parallel_mode, faiss.omp_get_max_threads())
        try:
            index.nprobe = width
            faiss.omp_set_num_threads(self.threads)
            if continue_heaps:
                D = np.stack([q.D for q in queries])
                I = np.stack([q.I for q in queries])  # noqa: E741
                index.parallel_mode = _PMODE_OVER_QUERIES | _NO_HEAP_INIT
                index.search_preassigned(x, k, Iq, Dq, D=D, I=I)
            else:
                index.parallel_mode = _PMODE_OVER_LISTS
                D, I = index.search_preassigned(x, k, Iq, Dq)  # noqa: E741
        finally:
            index.nprobe, index.parallel_mode = saved[0], saved[1]
            faiss.omp_set_num_threads(saved[2])
        for i, q in enumerate(queries):
            if continue_heaps:
                q.D[:] = D[i]
                q.I[:] = I[i]
            else:
                q.merge(D[i], I[i])

    def search_full(self, x: np.ndarray, k: int, nprobe: int) -> tuple[np.ndarray, np.ndarray]:
        """Plain `index.search` with `nprobe`: the reference the cluster-by-cluster search equals."""
        faiss = _faiss()
        x = self._vectors(x)
        params = faiss.SearchParametersIVF(nprobe=max(1, min(int(nprobe), self.nlist)))
        before = faiss.omp_get_max_threads()
        faiss.omp_set_num_threads(self.threads)
        try:
            return self.index.search(x, k, params=params)
        finally:
            faiss.omp_set_num_threads(before)


class IdLists:
    """The list and offset of every id stored in an IVF index (read once from its inverted lists):
    the "hit" list of a search result, and where a seeded candidate's vector is."""

    def __init__(self, index: faiss.IndexIVF) -> None:
        faiss = _faiss()
        inv = index.invlists
        ids, lists, offsets = [], [], []
        for c in range(index.nlist):
            n = inv.list_size(c)
            if n == 0:
                continue
            ptr = inv.get_ids(c)
            ids.append(faiss.rev_swig_ptr(ptr, n).copy())
            inv.release_ids(c, ptr)
            lists.append(np.full(n, c, dtype=np.int64))
            offsets.append(np.arange(n, dtype=np.int64))
        allI = np.concatenate(ids) if ids else np.empty(0, dtype=np.int64)
        order = np.argsort(allI, kind="stable")
        self.ids = allI[order]
        self.lists = (np.concatenate(lists) if lists else np.empty(0, dtype=np.int64))[order]
        self.offsets = (np.concatenate(offsets) if offsets else np.empty(0, dtype=np.int64))[order]

    def locate(self, ids: np.ndarray | Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        """(lists, offsets) of `ids`, -1 for an id the index does not hold (an id stored twice:
        its first list)."""
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        pos = np.minimum(np.searchsorted(self.ids, ids), max(len(self.ids) - 1, 0))
        found = (len(self.ids) > 0) & (self.ids[pos] == ids) if len(self.ids) else np.zeros(len(ids), dtype=bool)
        lists = np.where(found, self.lists[pos] if len(self.ids) else -1, -1)
        offsets = np.where(found, self.offsets[pos] if len(self.ids) else -1, -1)
        return lists, offsets


# --- user-supplied indexes ------------------------------------------------------------------------------


def load_index(path: str | os.PathLike[str]) -> faiss.IndexIVF:
    """Read a FAISS index file and return its IVF index.

    Accepted: any `faiss.IndexIVF` (e.g. "IVF4096,Flat"), or an IndexIDMap/IndexIDMap2 directly
    around one (its external ids are written into the IVF's inverted lists, so the IVF alone gives
    the same results; no data is copied, the IVF keeps its wrapper alive). Refused with a one-line
    ValueError naming the file: other wrappers (IndexPreTransform, IndexRefine, ...: the IVF
    inside sees transformed queries or re-ranked results, so searching it alone would be wrong)
    and anything that is not an IVF index."""
    faiss = _faiss()
    name = os.fspath(path)
    if not os.path.isfile(name):
        raise FileNotFoundError(f"{name}: no such index file")
    try:
        index = faiss.read_index(name)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
        raise ValueError(f"{name}: not a readable FAISS index ({first})") from None
    if isinstance(index, faiss.IndexIVF):
        return index
    kind = type(index).__name__
    if isinstance(index, faiss.IndexIDMap | faiss.IndexIDMap2):
        inner = faiss.downcast_index(index.index)
        if isinstance(inner, faiss.IndexIVF):
            return _adopt_idmap(faiss, name, index, inner)
    if faiss.try_extract_index_ivf(index) is not None:
        raise ValueError(
            f"{name}: {kind} wraps an IVF index but transforms its queries or results; "
            "save the faiss.IndexIVF itself (e.g. 'IVF4096,Flat' on pre-transformed vectors)"
        )
    raise ValueError(f"{name}: {kind} is not an IVF index (need a faiss.IndexIVF, e.g. 'IVF4096,Flat')")


def _adopt_idmap(faiss: Any, name: str, wrapper: Any, ivf: Any) -> Any:
    """Move the wrapper's ids into the IVF's lists and take ownership of the IVF."""
    import faiss.contrib.inspect_tools as inspect_tools

    id_map = faiss.vector_to_array(wrapper.id_map).astype(np.int64)
    if ivf.direct_map.type != faiss.DirectMap.NoMap:
        ivf.set_direct_map_type(faiss.DirectMap.NoMap)  # built on internal ids; rebuild if needed
    inv = ivf.invlists
    try:
        for c in range(ivf.nlist):
            size = inv.list_size(c)
            if size == 0:
                continue
            internal, codes = inspect_tools.get_invlist(inv, c)
            if internal.min() < 0 or internal.max() >= len(id_map):
                raise ValueError(f"{name}: {type(wrapper).__name__} id map does not cover list {c}")
            external = np.ascontiguousarray(id_map[internal])
            inv.update_entries(c, 0, size, faiss.swig_ptr(external), faiss.swig_ptr(codes))
    except RuntimeError as exc:
        raise ValueError(f"{name}: cannot rewrite the ids of the wrapped IVF ({str(exc).strip()[:200]})") from None
    # the wrapper owns the IVF (and frees it with itself): keep it alive as long as the IVF's proxy
    ivf.referenced_objects = [wrapper]
    return ivf


def cluster_vectors(index: faiss.IndexIVF, list_id: int) -> tuple[np.ndarray, np.ndarray]:
    """The vectors stored in one inverted list of an IndexIVFFlat: (codes as float32 (n, d), ids int64 (n,))."""
    faiss = _faiss()
    if not isinstance(index, faiss.IndexIVFFlat) or index.code_size != 4 * index.d:
        raise TypeError(f"cluster_vectors needs an IndexIVFFlat (raw float32 vectors), got {type(index).__name__}")
    if not 0 <= list_id < index.nlist:
        raise ValueError(f"list id {list_id} out of range [0, {index.nlist})")
    import faiss.contrib.inspect_tools as inspect_tools

    ids, codes = inspect_tools.get_invlist(index.invlists, int(list_id))
    return codes.view(np.float32).reshape(len(ids), index.d), ids
