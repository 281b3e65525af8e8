"""A skew model of IVF probe lists, for traces generated without a real index.

Real query streams hit IVF lists unevenly (a few lists are popular) and successive
retrievals of one request probe overlapping lists (its queries are semantically close;
HedraRAG §3 exploits both). The model: list popularity is Zipf-like with exponent `zipf`
over a seeded random ranking of the lists; a query's nprobe lists are drawn without
replacement by popularity (Gumbel top-k), ordered by their drawn score as a coarse
quantizer orders lists by distance; a follow-up retrieval of the same request keeps a
fraction `overlap` of its predecessor's lists and draws the rest afresh.
"""

from __future__ import annotations

import numpy as np


class ProbeModel:
    def __init__(self, nlist: int, zipf: float, overlap: float, rng: np.random.Generator) -> None:
        if not 0.0 <= overlap <= 1.0 or zipf < 0 or nlist < 1:
            raise ValueError("probe model: need nlist >= 1, zipf >= 0 and 0 <= overlap <= 1")
        self.nlist = nlist
        self.overlap = overlap
        self.rng = rng
        ranks = rng.permutation(nlist) + 1
        self.log_weight = -zipf * np.log(ranks)  # popularity of each list

    def probe(self, nprobe: int, previous: list[int] | None = None, keep: list[int] | None = None) -> list[int]:
        """The ordered probe list of one retrieval (`previous`: the request's last one; `keep`:
        lists of `previous` to keep first, e.g. the lists that held the previous results where
        the truth model says the new results lie; still only `overlap` of them are kept)."""
        if nprobe > self.nlist:
            raise ValueError(f"nprobe {nprobe} exceeds the index's {self.nlist} lists")
        score = self.log_weight + self.rng.gumbel(size=self.nlist)
        if not previous:
            return _top(-score, nprobe).tolist()
        prev = np.asarray(previous)
        size = min(len(prev), round(self.overlap * nprobe))
        if keep:
            must = np.asarray(keep)[:size]
            rest = prev[~np.isin(prev, must)]
            extra = self.rng.choice(rest, size=min(len(rest), max(0, size - len(must))), replace=False)
            kept = np.concatenate([must, extra]).astype(prev.dtype)
        else:
            kept = self.rng.choice(prev, size=size, replace=False)
        blocked = score.copy()
        blocked[prev] = -np.inf
        fresh = _top(-blocked, nprobe - len(kept))
        chosen = np.concatenate([kept, fresh])
        return chosen[np.argsort(-score[chosen])].tolist()


def _top(cost: np.ndarray, k: int) -> np.ndarray:
    """`np.argsort(cost)[:k]` (the k smallest, in order) without sorting all of `cost`: the k
    smallest found by a partition, then sorted (the scores are continuous draws: no ties)."""
    if k <= 0:
        return np.argsort(cost)[:0]
    if k >= len(cost):
        return np.argsort(cost)
    part = np.argpartition(cost, k - 1)[:k]
    return part[np.argsort(cost[part])]
