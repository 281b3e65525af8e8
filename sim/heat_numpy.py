"""The GPU index cache's heat table in numpy: `ragraph.techniques.heat.PureHeatTable`'s arithmetic
on arrays, bit for bit the same results (HedraRAG §4.4's access-frequency tracking).

The simulator hands it to the policy (`Policy.use_heat_table`; `Simulation.numpy_heat`): a refresh
of the cache (every 50 sub-stages) tallies ~9,000 (query, cluster) scans, ranks the ~3,000
clusters with heat and takes prefix sums of their bytes and heats; here each is a C-level pass.
The same bits: a cluster's heat is `h + n * unit`, one float64 multiply and one add, as in Python;
the ranking is a stable sort by -heat of the clusters in id order, i.e. by (-heat, cluster id),
the order the pure table's stable sort and tie-break give; the float sums are cumulative sums
(numpy's `cumsum` adds in order, as `itertools.accumulate` does; `np.sum` would not); what goes
back to the core is Python ints and floats (`tolist`). `ragraph` imports no numpy: the pure table
stays its own.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import chain

import numpy as np

from ragraph.techniques.heat import Ranked


class NumpyHeatTable:
    """`ragraph.techniques.heat.HeatTable` on numpy arrays (`PureHeatTable`'s results)."""

    def __init__(self, sizes: Sequence[int], cluster_bytes: Sequence[int]) -> None:
        self._n = len(sizes)
        self._sizes_a = np.asarray(sizes, dtype=np.int64)
        self._bytes_a = np.asarray(cluster_bytes, dtype=np.int64)
        self._heat_a = np.zeros(self._n)
        self._order_a = np.zeros(0, dtype=np.int64)

    def tally(self, noted: list[tuple[int, ...]], unit: float) -> int:
        if not noted:
            return 0
        scans = np.bincount(np.fromiter(chain.from_iterable(noted), dtype=np.int64), minlength=self._n)
        vectors = self._sizes_a * scans
        hit = np.flatnonzero(vectors)  # (an empty list gets no heat: it never joins the order)
        if not hit.size:
            return 0
        before = self._heat_a[hit]
        self._heat_a[hit] = before + vectors[hit] * unit
        fresh = hit[before == 0.0]  # ascending ids: among equal heat, lower ids first
        if fresh.size:
            self._order_a = np.concatenate((self._order_a, fresh))
        return int(vectors.sum())

    def ranked(self, limit: float | None, with_heat: bool) -> Ranked:
        ids = np.sort(self._order_a)
        heats = self._heat_a[ids]
        by = np.argsort(-heats, kind="stable")  # hottest first, ties by cluster id
        order = self._order_a = ids[by]
        heats = heats[by]
        cum = np.cumsum(self._bytes_a[order])
        over = np.flatnonzero(cum > limit) if limit is not None else cum[:0]
        k = int(over[0]) if over.size else len(cum)  # (itertools.takewhile: up to the first over the limit)
        cum_bytes = [0, *cum[:k].tolist()]
        if not with_heat:
            return Ranked(order[:k].tolist(), cum_bytes, [], 0.0)
        cum_heat_a = np.cumsum(heats)
        cum_heat = [0.0, *cum_heat_a[:k].tolist()]
        return Ranked(order[:k].tolist(), cum_bytes, cum_heat, float(cum_heat_a[-1]) if cum_heat_a.size else 0.0)

    def rescale(self, unit: float) -> None:
        self._heat_a = self._heat_a / unit

    def clear(self) -> None:
        self._heat_a = np.zeros(self._n)
        self._order_a = np.zeros(0, dtype=np.int64)
