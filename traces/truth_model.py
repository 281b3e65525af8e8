"""A statistical model of retrieval ground truth, for synthetic traces (no index at hand).

It draws each retrieval's `truth` (ragraph.graph.SearchTruth): its best 20 results, the
list holding each, and the outcome of the speculative prefix queries, with parameters
fitted on the Wikipedia corpus (`truth_model.json` beside this module, refitted by
`benchmarks/fit_truth_model.py`, which records the corpus, index, nprobe and questions it
used): FanOutQA's questions, whose follow-up queries are the annotators' sub-questions
(traces/fanoutqa.py), so a follow-up's locality is that of real follow-up text.

Theory of operation, per retrieval, rank by rank (j = 0..19, best first):

- a first retrieval of a request: result j lies in the list of a better result with the
  fitted probability `same_list[j]` (the list of an earlier rank drawn uniformly), else in a
  new list;
- a follow-up retrieval (the request retrieved before): result j is, with the fitted
  per-rank probabilities `follow[j]`, (A) a result of the previous retrieval (its rank drawn
  from `cache_rank[j]`), (B) a new passage in a list that held a previous result (whose rank
  is drawn from `hit_rank[j]`), (C) a new passage in another list of the previous probe list, or
  (D) a new passage in a list the previous retrieval did not probe. The lists that A, B and
  C name are kept in the follow-up's probe list first (`ProbeModel.probe(keep=...)`); where
  the trace's `overlap` keeps fewer lists than that, the results whose list was dropped fall
  back to D (so a small `--overlap` lowers the locality);
- placement: every distinct hit list is put at a position of the probe list drawn from the
  fitted `position_pmf` (where in the coarse order the corpus's hit lists fall, fitted at the
  corpus's nprobe and scaled to the trace's by quantile), swapping it with the list there;
- passage ids: list × ID_STRIDE + a uniform serial, so an id's list is `id // ID_STRIDE`
  and every id is consistent with its hit; a new passage never repeats an id the request's
  previous retrieval returned (only A does);
- prefix outcomes (a retrieval right after a generation): one uniform draw u, and the 25%,
  50%, 75% prefix finds the same top-k iff u < the fitted probability for that share and k
  (so a longer prefix agrees whenever a shorter one does, as the fitted rates grow).

Simplifications, stated: ranks are drawn independently given their category; lists of
category C are drawn uniformly among the kept previous lists; the number of distinct hit
lists is not fitted directly but follows from `same_list`, `follow`, `cache_rank`, `hit_rank`;
every follow-up of a request draws from the same pooled `follow` (on FanOutQA the first
follow-up is much closer to the question than later ones are to each other: see
`by_follow_up` of `traces.locality`).
"""

from __future__ import annotations

import json
from bisect import bisect_right
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ragraph.graph import PREFIX_FRACTIONS

MODEL_PATH = Path(__file__).with_name("truth_model.json")
ID_STRIDE = 100_000  # synthetic passage id = list * ID_STRIDE + serial
TOP = 20  # results drawn per retrieval (the local cache)
CATEGORIES = ("cache", "previous_hit_list", "previous_probe_list", "other")


@dataclass(frozen=True)
class TruthParams:
    """Fitted parameters (see the module docstring); `fitted_on` says on what."""

    position_pmf: tuple[float, ...]  # P(a hit list sits at position p of the probe list), fitted nprobe positions
    same_list: tuple[float, ...]  # [j]: P(result j of a first retrieval lies in a better result's list)
    follow: tuple[tuple[float, ...], ...]  # [j]: P(category) of result j of a follow-up, CATEGORIES order
    cache_rank: tuple[tuple[float, ...], ...]  # [j][r]: P(a cached result (A) at rank j is the previous rank r)
    hit_rank: tuple[tuple[float, ...], ...]  # [j][r]: P(a B result at rank j lies in the previous rank r's list)
    prefix_same: tuple[tuple[float, ...], ...]  # [k-1][m]: P(prefix PREFIX_FRACTIONS[m] finds the same top-k)
    fitted_on: dict = field(default_factory=dict)

    @classmethod
    def load(cls, path: str | Path = MODEL_PATH) -> TruthParams:
        raw = json.loads(Path(path).read_text())
        return cls(**{k: _tuples(v) if k != "fitted_on" else v for k, v in raw.items()})

    def dump(self, path: str | Path = MODEL_PATH) -> None:
        body = {k: getattr(self, k) for k in self.__dataclass_fields__}
        Path(path).write_text(json.dumps(body, indent=1) + "\n")


def _tuples(v: object) -> object:
    return tuple(_tuples(x) for x in v) if isinstance(v, list) else v


@dataclass
class DrawnTruth:
    """One retrieval's drawn best-20 and their lists; `record` gives the trace's truth object."""

    ids: list[int]
    lists: list[int]
    probe: list[int]  # the retrieval's probe list (after placement)

    def record(self, k: int, prefix_same: list[bool]) -> dict:
        return {"topk": self.ids[:k], "hits": self.lists[:k], "top20": self.ids[:TOP], "prefix_same": prefix_same}


class TruthModel:
    """Draws truth for a synthetic trace's retrievals from `params` with its own `rng`."""

    def __init__(self, params: TruthParams, rng: np.random.Generator) -> None:
        self.p = params
        self.rng = rng
        self._pos = np.asarray(params.position_pmf, dtype=float)
        self._pos /= self._pos.sum()
        self._pos_cdf = _cdf(self._pos)
        self._follow_cdf = [_cdf(f) for f in params.follow]  # per rank, over CATEGORIES
        self._hit_cdf: dict[tuple[int, int], list[float]] = {}  # (rank, previous results) -> cdf over them

    # --- follow-ups: what the previous retrieval lends, decided before the probe list is drawn

    def plan(self, prev: DrawnTruth | None) -> tuple[list[tuple[str, int]], list[int]]:
        """Per rank, (category, previous rank or -1); and the previous lists the probe list must keep."""
        if prev is None:
            return [], []
        cats: list[tuple[str, int]] = []
        taken: set[int] = set()
        n = len(prev.ids)
        for j in range(TOP):
            cat = CATEGORIES[_pick(self.rng, self._follow_cdf[j])]
            r = -1
            if cat == "cache":
                free = [i for i in range(n) if i not in taken]
                if not free:
                    cat = "previous_hit_list"
                else:
                    r = free[_pick(self.rng, _cdf([self.p.cache_rank[j][i] for i in free]))]
                    taken.add(r)
            if cat == "previous_hit_list":
                cdf = self._hit_cdf.get((j, n))
                if cdf is None:
                    cdf = self._hit_cdf[j, n] = _cdf(self.p.hit_rank[j][:n])
                r = _pick(self.rng, cdf)
            cats.append((cat, r))
        keep = list(dict.fromkeys(prev.lists[r] for _, r in cats if r >= 0))
        return cats, keep

    def draw(self, probe: list[int], prev: DrawnTruth | None, plan: list[tuple[str, int]]) -> DrawnTruth:
        """The best 20 of a retrieval whose probe list is `probe` (reordered in place to place
        the hit lists); `plan` from `plan(prev)`, with its kept lists in `probe`."""
        lists: list[int] = []
        ids: list[int] = []
        here = set(probe)
        avoid = set(prev.ids) if prev else set()
        prev_probe = set(prev.probe) if prev else set()
        prev_hits = set(prev.lists) if prev else set()
        options: list[int] | None = None  # lists of the previous probe list that held no previous result
        for j in range(TOP):
            cat, r = plan[j] if plan else ("first", -1)
            if r >= 0 and prev is not None and prev.lists[r] not in here:
                cat = "other"  # the probe list could not keep it (a small --overlap)
            if cat == "cache":
                assert prev is not None
                ids.append(prev.ids[r])
                lists.append(prev.lists[r])
                continue
            if cat == "previous_hit_list":
                assert prev is not None
                c = prev.lists[r]
            elif cat == "previous_probe_list":
                if options is None:  # (probe is only reordered after the loop)
                    options = [c for c in probe if c in prev_probe and c not in prev_hits]
                c = (options[int(self.rng.integers(len(options)))] if options
                     else self._new_list(probe, lists, prev_probe))
            elif cat == "first" and j and self.rng.random() < self.p.same_list[j]:
                c = lists[int(self.rng.integers(j))]
            else:
                c = self._new_list(probe, lists, prev_probe)
            lists.append(c)
            ids.append(self._new_id(c, set(ids) | avoid))
        self._place(probe, lists)
        return DrawnTruth(ids, lists, probe)

    def prefix_same(self, k: int) -> list[bool]:
        """The prefix outcomes of a retrieval right after a generation (nested: see the docstring)."""
        u = self.rng.random()
        rates = self.p.prefix_same[min(k, len(self.p.prefix_same)) - 1]
        return [bool(u < rates[m]) for m in range(len(PREFIX_FRACTIONS))]

    # --- internals

    def _position(self, nprobe: int) -> int:
        """A probe-list position drawn from the fitted pmf, scaled to `nprobe` by quantile."""
        p = _pick(self.rng, self._pos_cdf)
        return min(nprobe - 1, int((p + self.rng.random()) / len(self._pos) * nprobe))

    def _new_list(self, probe: list[int], used: list[int], prev_probe: set[int]) -> int:
        """A list of `probe` not yet holding a result, preferably one the previous retrieval did
        not probe, near a position drawn from the fitted pmf."""
        taken = set(used)
        want = self._position(len(probe))
        i = _nearest(want, len(probe), lambda i: probe[i] not in taken and probe[i] not in prev_probe)
        if i < 0:
            i = _nearest(want, len(probe), lambda i: probe[i] not in taken)
        return probe[i if i >= 0 else want]

    def _new_id(self, c: int, avoid: set[int]) -> int:
        while True:
            pid = c * ID_STRIDE + int(self.rng.integers(ID_STRIDE))
            if pid not in avoid:
                return pid

    def _place(self, probe: list[int], lists: list[int]) -> None:
        """Move each distinct hit list (best rank first) to a free position drawn from the pmf."""
        fixed: set[int] = set()
        for c in dict.fromkeys(lists):
            want = self._position(len(probe))
            to = _nearest(want, len(probe), lambda i: i not in fixed)
            assert to >= 0, "more distinct hit lists than probe positions"
            at = probe.index(c)
            probe[at], probe[to] = probe[to], probe[at]
            fixed.add(to)


def _nearest(want: int, n: int, ok: Callable[[int], bool]) -> int:
    """The position in [0, n) nearest `want` (in it) where `ok` holds, the lower on a tie; -1 if
    none: min(filter(ok, range(n)), key=lambda i: (abs(i - want), i)), searched outward."""
    for d in range(max(want + 1, n - want)):
        if d <= want and ok(want - d):
            return want - d
        if d and want + d < n and ok(want + d):
            return want + d
    return -1


def _cdf(p: object) -> list[float]:
    """The cumulative distribution `Generator.choice(len(p), p=_norm(p))` samples from."""
    cdf = _norm(p).cumsum()
    cdf /= cdf[-1]
    return cdf.tolist()


def _pick(rng: np.random.Generator, cdf: list[float]) -> int:
    """`rng.choice(len(cdf), p=...)` for the distribution of `_cdf`: one uniform draw, placed
    as NumPy's `choice` places it (`searchsorted(side="right")`): the same stream and result,
    without its checks of `p`."""
    return bisect_right(cdf, rng.random())


def _norm(p: object) -> np.ndarray:
    a = np.asarray(p, dtype=float)
    s = a.sum()
    return a / s if s > 0 else np.full(len(a), 1.0 / len(a))
