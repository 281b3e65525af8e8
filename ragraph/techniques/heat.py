"""The GPU index cache's heat table (HedraRAG §4.4): decayed vectors scanned per IVF cluster,
and the clusters ranked by it, with the prefix sums the cache's refresh sizes itself by.

`PureHeatTable` is the pure-Python one; a body may hand the cache another `HeatTable` with
bit-for-bit the same results (`sim.heat_numpy`: the same arithmetic in numpy, the float sums
taken in the same order), through `Policy.use_heat_table`. Every method's result depends only on
the calls made before it, so the two are interchangeable at any point of a run.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import reduce
from itertools import accumulate, chain, islice, takewhile
from operator import add, eq
from typing import Protocol

RESCALE_AT = 2.0**500  # the heat's unit at which the stored heats are rescaled


@dataclass(frozen=True, slots=True)
class Ranked:
    """The clusters with heat, hottest first (ties by cluster id), as of a refresh."""

    order: list[int]  # the hottest clusters, one per prefix in cum_bytes (after the empty one)
    cum_bytes: list[int]  # [i]: bytes of the hottest i; every prefix within the limit asked for
    cum_heat: list[float]  # [i]: heat of the hottest i, summed in order, for i < len(cum_bytes) (if asked)
    total_heat: float  # all the heat, summed in order (0.0 if not asked)


class HeatTable(Protocol):
    """Per cluster: the vectors scanned in it, decayed (in units the caller keeps: see
    `GpuIndexCache._decay`); and the clusters with heat in the order of the last ranking."""

    def tally(self, noted: list[tuple[int, ...]], unit: float) -> int:
        """Add scans (the clusters of each scan noted) at weight `unit` per vector: per cluster,
        its vectors times its scans; the vectors scanned are returned."""
        ...

    def ranked(self, limit: float | None, with_heat: bool) -> Ranked:
        """The clusters with heat ranked hottest first, ties by cluster id: the cumulative bytes of
        every prefix of that order within `limit` bytes (None: every prefix) and its clusters; with
        `with_heat`, the cumulative heats of those prefixes and the total heat, each summed in order."""
        ...

    def rescale(self, unit: float) -> None:
        """Divide every heat by `unit` (the caller's unit starts again at 1)."""
        ...

    def clear(self) -> None:
        """No heat anywhere."""
        ...


class PureHeatTable:
    """`HeatTable` in pure Python (lists, C-level passes where the library has them)."""

    def __init__(self, sizes: Sequence[int], cluster_bytes: Sequence[int]) -> None:
        self.sizes = list(sizes)  # vectors per cluster
        self.cluster_bytes = list(cluster_bytes)
        self._heat = [0.0] * len(self.sizes)
        self._order: list[int] = []  # the clusters with heat, hottest first as of the last ranking

    def tally(self, noted: list[tuple[int, ...]], unit: float) -> int:
        heat, sizes, vectors = self._heat, self.sizes, 0
        fresh = []
        for c, scans in Counter(chain.from_iterable(noted)).items():
            n = sizes[c] * scans
            if n:  # (an empty list gets no heat: it never joins the order)
                h = heat[c]
                if not h:
                    fresh.append(c)
                heat[c] = h + n * unit
                vectors += n
        if fresh:
            fresh.sort()  # among equal heat, lower ids first
            self._order += fresh
        return vectors

    def ranked(self, limit: float | None, with_heat: bool) -> Ranked:
        # the order of the last ranking is sorted again (only the clusters scanned since moved)
        order, heat = self._order, self._heat
        order.sort(key=heat.__getitem__, reverse=True)  # stable: ties keep their earlier order
        values = list(map(heat.__getitem__, order))
        if any(map(eq, values, islice(values, 1, None))):  # equal heat: put each group in id order
            i, n = 0, len(values)
            while i < n:
                j = i + 1
                while j < n and values[j] == values[i]:
                    j += 1
                if j - i > 1:
                    order[i:j] = sorted(order[i:j])
                i = j
        cum = accumulate(map(self.cluster_bytes.__getitem__, order))
        cum_bytes = [0, *(cum if limit is None else takewhile(limit.__ge__, cum))]
        if not with_heat:
            return Ranked(order[: len(cum_bytes) - 1], cum_bytes, [], 0.0)
        cum_heat = list(accumulate(islice(values, len(cum_bytes) - 1), initial=0.0))
        total = reduce(add, islice(values, len(cum_heat) - 1, None), cum_heat[-1])
        return Ranked(order[: len(cum_bytes) - 1], cum_bytes, cum_heat, total)

    def rescale(self, unit: float) -> None:
        self._heat = [h / unit for h in self._heat]

    def clear(self) -> None:
        self._heat = [0.0] * len(self.sizes)
        self._order = []


HeatTableFactory = Callable[[Sequence[int], Sequence[int]], HeatTable]
"""Builds a heat table from the clusters' sizes (vectors) and bytes."""
