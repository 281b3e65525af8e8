"""A partial GPU index cache: HedraRAG's hot IVF clusters held on the GPU.

`ClusterCache` keeps some clusters of an IndexIVFFlat as torch tensors on a device. Each loaded
cluster has a host copy (pinned when the device is CUDA) copied with `copy_(non_blocking=True)`
on a side CUDA stream, so a refresh overlaps with searches on the search stream (the stream
current when `search` is called); the copy records an event and a search waits on it
(`wait_event`, on the GPU, not the host) before using the cluster. On device "cpu" the same code
runs with plain synchronous copies (no streams, no events): that is what the tests exercise.

`search` scans resident clusters for queries whose other clusters are scanned by FAISS on the
CPU (`backends.ivf.IVFRetriever.scan`): the clusters asked for, in chunks of up to `chunk_vectors`
vectors, each chunk one matmul against the queries that scan any of its clusters (inner product, or
L2 as |q|^2 - 2 q.x + |x|^2 with |x|^2 kept per cluster), the places of clusters a query did not
ask for masked, one `torch.topk`; two device-to-host transfers for the whole call, then
`QueryTopK.merge` into each query's running heap.

On CUDA the distances assume full fp32 matmuls (torch's default `float32_matmul_precision`
"highest"); if the process enables TF32 (e.g. `torch.set_float32_matmul_precision("high")`),
they lose about three decimal digits and near neighbours may be reordered.

Precision: these distances are fp32 matmul results, not FAISS's kernels, so they can differ from
`index.search`'s in the last bits: observed up to 4e-7 for inner product on unit vectors, and for
L2 (through the expansion, which cancels) up to ~1e-6 relative to |q|^2 + |x|^2 (4e-4 absolute on
squared distances of a few hundred). Candidates closer than that may come out in another order
than FAISS's; the tests compare ids only where neighbouring distances differ by more than 1e-5
relative to that scale.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from backends.ivf import QueryTopK, RetrieverUnavailable, _faiss, cluster_vectors, scan_row

if TYPE_CHECKING:  # pragma: no cover
    import faiss


def _torch() -> Any:
    try:
        import torch
    except ImportError as exc:  # pragma: no cover - exercised only without torch
        raise RetrieverUnavailable(f"torch is not installed: pip install torch ({exc})") from None
    return torch


@dataclass(slots=True)
class _Resident:
    """One cluster held in the cache."""

    size: int
    host: Any  # (n, d) float32 host tensor (pinned on CUDA); kept while resident
    vectors: Any  # (n, d) float32 on the device
    ids: Any  # (n,) int64 on the device
    sqnorms: Any | None  # (n,) |x|^2 on the device (L2 only)
    ready: Any | None  # CUDA event recorded after the copy (None on cpu)


class ClusterCache:
    """Hot clusters of an IndexIVFFlat on `device`, up to `capacity_vectors` vectors in all.

    `search` scores the clusters asked for in chunks of up to `chunk_vectors` vectors: one matmul
    of the chunk's queries against all its vectors, the places of clusters a query did not ask for
    masked out, one topk. A few large kernels instead of several small ones per cluster (what
    matters on a GPU); the price is scoring some (query, cluster) pairs that are then masked."""

    def __init__(self, index: faiss.IndexIVF, *, device: str = "cuda", capacity_vectors: int,
                 chunk_vectors: int = 1 << 17) -> None:
        faiss = _faiss()
        torch = _torch()
        if not isinstance(index, faiss.IndexIVFFlat):
            raise TypeError(f"ClusterCache needs an IndexIVFFlat (raw vectors), got {type(index).__name__}")
        if index.metric_type not in (faiss.METRIC_INNER_PRODUCT, faiss.METRIC_L2):
            raise ValueError(f"ClusterCache supports inner product and L2 indexes, not metric {index.metric_type}")
        if chunk_vectors < 1:
            raise ValueError(f"chunk_vectors must be >= 1, got {chunk_vectors}")
        self.chunk_vectors = int(chunk_vectors)  # vectors scored by one matmul (bounds its (queries x vectors) scores)
        if capacity_vectors < 0:
            raise ValueError(f"capacity_vectors must be >= 0, got {capacity_vectors}")
        self.index = index
        self.device = torch.device(device)
        self.cuda = self.device.type == "cuda"
        if self.cuda and not torch.cuda.is_available():
            raise RetrieverUnavailable(f"device {device!r} requested but torch has no CUDA device")
        self.inner_product: bool = index.metric_type == faiss.METRIC_INNER_PRODUCT
        self.d = int(index.d)
        self._capacity = int(capacity_vectors)
        self._used = 0
        self._entries: dict[int, _Resident] = {}
        self._lock = threading.Lock()  # the pcie lane loads while the gpu_retrieval lane searches
        self._copy_stream = torch.cuda.Stream(device=self.device) if self.cuda else None

    # --- state

    @property
    def resident(self) -> frozenset[int]:
        return frozenset(self._entries)

    @property
    def used_vectors(self) -> int:
        return self._used

    @property
    def capacity_vectors(self) -> int:
        return self._capacity

    def ready(self, cluster: int) -> bool:
        """Whether a resident cluster's copy has finished (always True on cpu)."""
        with self._lock:
            e = self._entries[cluster]
        return e.ready is None or bool(e.ready.query())

    def synchronize(self) -> None:
        """Block the host until every pending copy has finished."""
        with self._lock:
            entries = list(self._entries.values())
        for e in entries:
            if e.ready is not None:
                e.ready.synchronize()

    # --- refresh

    def evict(self, clusters: Sequence[int]) -> None:
        """Drop clusters from the cache (ids not resident are ignored). A search already running
        keeps its own references to the tensors, so evicting under it is safe."""
        with self._lock:
            self._evict(clusters)

    def _evict(self, clusters: Sequence[int]) -> None:
        for c in clusters:
            e = self._entries.pop(int(c), None)
            if e is not None:
                self._used -= e.size

    def load(self, load: Sequence[int], evict: Sequence[int] = ()) -> tuple[int, ...]:
        """Drop `evict`, then copy `load` in (in order; already resident ones stay). A cluster that
        does not fit in the remaining capacity is skipped. Returns the clusters of `load` resident
        now. On CUDA the copies are asynchronous: `ready`/`synchronize` tell when they are done,
        and `search` orders itself after them on the GPU."""
        torch = _torch()
        with self._lock:
            return self._load(torch, load, evict)

    def _load(self, torch: Any, load: Sequence[int], evict: Sequence[int]) -> tuple[int, ...]:
        self._evict(evict)
        nlist = int(self.index.nlist)
        resident: list[int] = []
        for raw in load:
            c = int(raw)
            if not 0 <= c < nlist:
                raise ValueError(f"cluster id {c} out of range [0, {nlist})")
            if c in self._entries:
                resident.append(c)
                continue
            size = int(self.index.invlists.list_size(c))
            if self._used + size > self._capacity:
                continue
            vecs, ids = cluster_vectors(self.index, c)
            host = torch.from_numpy(vecs)
            host_ids = torch.from_numpy(ids)
            if self.cuda:
                host, host_ids = host.pin_memory(), host_ids.pin_memory()
            stream = torch.cuda.stream(self._copy_stream) if self.cuda else nullcontext()
            with stream:  # allocations and copies are ordered on the side stream
                dev = torch.empty(host.shape, dtype=host.dtype, device=self.device)
                dev.copy_(host, non_blocking=self.cuda)
                dev_ids = torch.empty(host_ids.shape, dtype=host_ids.dtype, device=self.device)
                dev_ids.copy_(host_ids, non_blocking=self.cuda)
                sq = None if self.inner_product else (dev * dev).sum(dim=1)
                event = None
                if self.cuda:
                    event = torch.cuda.Event()
                    event.record(self._copy_stream)
            self._entries[c] = _Resident(size, host, dev, dev_ids, sq, event)
            self._used += size
            resident.append(c)
        return tuple(resident)

    # --- search

    def search(self, queries: Sequence[QueryTopK], clusters: Sequence[Sequence[int]]) -> None:
        """Scan `clusters[i]` (all resident) for `queries[i]` and merge into its running top-k."""
        torch = _torch()
        if len(queries) != len(clusters):
            raise ValueError(f"{len(queries)} queries but {len(clusters)} cluster lists")
        if len({id(q) for q in queries}) != len(queries):
            raise ValueError("a query appears twice in one batch: give it one row with all its clusters")
        with self._lock:  # the entries this search uses, whatever a concurrent load/evict does
            entries = dict(self._entries)
        by_cluster: dict[int, list[int]] = {}
        rows: list[list[int]] = []
        for i, (q, cs) in enumerate(zip(queries, clusters, strict=True)):
            row = scan_row(q, cs, inner_product=self.inner_product, d=self.d)
            missing = [c for c in row if c not in entries]
            if missing:
                raise ValueError(f"clusters not resident in the cache: {missing}")
            rows.append(row)
            for c in row:
                if entries[c].size:
                    by_cluster.setdefault(c, []).append(i)
        if by_cluster:
            self._search(torch, queries, {c: entries[c] for c in by_cluster}, by_cluster)
        for q, row in zip(queries, rows, strict=True):
            q.scanned.update(row)

    def _chunks(self, entries: dict[int, _Resident]) -> list[list[int]]:
        """Group the clusters to scan into chunks of at most `chunk_vectors` vectors (a bigger
        cluster is a chunk of its own)."""
        chunks: list[list[int]] = []
        rows = 0
        for c, e in entries.items():
            size = e.size
            if not chunks or rows + size > self.chunk_vectors:
                chunks.append([])
                rows = 0
            chunks[-1].append(c)
            rows += size
        return chunks

    def _search(self, torch: Any, queries: Sequence[QueryTopK], entries: dict[int, _Resident],
                by_cluster: dict[int, list[int]]) -> None:
        kmax = max(q.k for q in queries)
        worst = float("-inf") if self.inner_product else float("inf")
        stream = torch.cuda.current_stream(self.device) if self.cuda else None
        if stream is not None:
            for e in entries.values():
                if e.ready is not None:
                    stream.wait_event(e.ready)  # the GPU, not the host, waits for the copy
                for t in (e.vectors, e.ids) if e.sqnorms is None else (e.vectors, e.ids, e.sqnorms):
                    t.record_stream(stream)  # allocated on the copy stream, used on this one
        vals, ids, owners = [], [], []
        with torch.no_grad():
            Q = torch.from_numpy(np.stack([q.vector for q in queries])).to(self.device)
            qsq = None if self.inner_product else (Q * Q).sum(dim=1)
            for chunk in self._chunks(entries):
                # the queries that scan any cluster of the chunk, and which of its clusters each scans
                members = sorted({i for c in chunk for i in by_cluster[c]})
                slot = {i: j for j, i in enumerate(members)}
                scans = np.zeros((len(members), len(chunk)), dtype=bool)
                for col, c in enumerate(chunk):
                    scans[[slot[i] for i in by_cluster[c]], col] = True
                parts = [entries[c] for c in chunk]
                X = parts[0].vectors if len(chunk) == 1 else torch.cat([e.vectors for e in parts])
                X_ids = parts[0].ids if len(chunk) == 1 else torch.cat([e.ids for e in parts])
                rows = torch.tensor(members, dtype=torch.int64, device=self.device)
                S = Q.index_select(0, rows) @ X.T  # (m, vectors of the chunk): one matmul for the chunk
                if not self.inner_product:
                    xsq = torch.cat([e.sqnorms for e in parts])
                    S = (qsq.index_select(0, rows)[:, None] - 2.0 * S + xsq[None, :]).clamp_min_(0.0)
                if len(chunk) > 1 or not scans.all():
                    col_of = torch.repeat_interleave(
                        torch.arange(len(chunk), device=self.device),
                        torch.tensor([e.size for e in parts], device=self.device),
                    )
                    mask = torch.from_numpy(scans).to(self.device)[:, col_of]  # (m, vectors): query scans it
                    S = S.masked_fill_(~mask, worst)
                kk = min(kmax, X.shape[0])
                v, pos = torch.topk(S, kk, dim=1, largest=self.inner_product, sorted=False)
                vals.append(v.reshape(-1))
                ids.append(X_ids[pos].reshape(-1))
                owners.append(rows.repeat_interleave(kk))
            # two device-to-host transfers for the whole call (they synchronise with the search stream)
            D = torch.cat(vals).cpu().numpy()
            I, who = torch.stack([torch.cat(ids), torch.cat(owners)]).cpu().numpy()  # noqa: E741
        keep = np.isfinite(D)  # masked-out places (a query with fewer than k vectors in a chunk)
        D, I, who = D[keep], I[keep], who[keep]  # noqa: E741
        order = np.argsort(who, kind="stable")
        bounds = np.searchsorted(who[order], np.arange(len(queries) + 1))
        for i, q in enumerate(queries):
            sel = order[bounds[i] : bounds[i + 1]]
            if len(sel):
                q.merge(D[sel], I[sel])
