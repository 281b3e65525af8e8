"""The real retrieval lane's cost model, measured on the index it searches.

Policies that size sub-stages by time (hedra's dynamic budget) ask a `SearchCostModel`
how long a search call will take. On the simulator that is the profile's model; on the
real body it must describe *this* index on *these* cores, so `measure_search_cost` times a
small grid of real `scan` calls before the replay and fits the same model form as
`hwmodel.latency` (fixed cost per call, cost per query, cost per embedded query,
vectors scanned at a rate), by least squares with non-negative coefficients.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from backends.ivf import IVFRetriever

# (queries per call, clusters per query): small to large calls around what hedra plans
PROBE_GRID = ((1, 1), (1, 8), (4, 4), (8, 1), (8, 16), (32, 2), (32, 8), (16, 32))
PROBE_REPEATS = 3


@dataclass(frozen=True)
class MeasuredSearchCost:
    """`SearchCostModel` of a real index: seconds = call + q x per_query + new x per_new + scanned / rate."""

    list_sizes: Sequence[int]
    call_s: float
    query_s: float
    new_query_s: float
    vectors_per_s: float
    threads: int

    def search_s(self, queries: int, new_queries: int, pairs: int, scanned_vectors: int) -> float:
        return (self.call_s + self.query_s * queries + self.new_query_s * new_queries
                + scanned_vectors / self.vectors_per_s)

    def as_dict(self) -> dict[str, float | int]:
        return {"call_s": self.call_s, "query_s": self.query_s, "new_query_s": self.new_query_s,
                "vectors_per_s": self.vectors_per_s, "threads": self.threads}


def measure_search_cost(retriever: IVFRetriever, *, threads: int, seed: int = 0,
                        encode: Callable[[list[str]], np.ndarray] | None = None,
                        texts: Sequence[str] = ()) -> MeasuredSearchCost:
    """Time the probe grid on `retriever` (with `threads` search threads) and fit the model.

    `texts`: sample query texts for timing `encode` (embedding cost grows with text length:
    pass texts like the trace's queries, e.g. corpus passages for iterative workflows)."""
    rng = np.random.default_rng(seed)
    sizes = retriever.list_sizes()
    rows: list[tuple[float, float, float]] = []  # (queries, scanned vectors, seconds)
    for queries, per_query in PROBE_GRID:
        per_query = min(per_query, retriever.nlist)
        lists = [rng.choice(retriever.nlist, per_query, replace=False).tolist() for _ in range(queries)]
        scanned = sum(sizes[c] for ls in lists for c in ls)
        times = []
        for _ in range(PROBE_REPEATS):
            states = [retriever.start(retriever.centroid(ls[0]), 1) for ls in lists]
            t0 = time.perf_counter()
            retriever.scan(states, lists)
            times.append(time.perf_counter() - t0)
        rows.append((queries, scanned, statistics.median(times)))
    a = np.array([[1.0, q, s] for q, s, _ in rows])
    y = np.array([t for _, _, t in rows])
    call, per_query, per_vector = _nonnegative_lstsq(a, y)
    new_query = 0.0
    if encode is not None:
        sample = list(texts[:16]) or [f"probe question number {i} about a topic" for i in range(16)]
        encode(sample[:2])  # warm up
        t0 = time.perf_counter()
        encode(sample)
        new_query = (time.perf_counter() - t0) / len(sample)
    return MeasuredSearchCost(sizes, call, per_query, new_query, 1.0 / max(per_vector, 1e-12), threads)


def _nonnegative_lstsq(a: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Least squares with every coefficient >= 0 (drop negative ones and refit; 3 unknowns)."""
    active = list(range(a.shape[1]))
    coef = np.zeros(a.shape[1])
    while active:
        sol, *_ = np.linalg.lstsq(a[:, active], y, rcond=None)
        if (sol >= 0).all():
            coef[active] = sol
            break
        active.pop(int(np.argmin(sol)))
    return coef
