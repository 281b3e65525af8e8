"""Embedding a corpus's passages and training its FAISS IVF index, with progress.

nlist rule (`nlist_for`): the power of two nearest 4·sqrt(N) for N passages, halved until
every list has at least 39 training points on average (N >= 39·nlist; FAISS's k-means warns
below that), at least 1. For the full wiki corpus this gives 256 lists. What gets embedded is
each passage in FlashRAG's `"Title"\\ntext` form.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from backends.corpus.store import CorpusError, faiss_module, flashrag_contents

if TYPE_CHECKING:
    import pandas as pd

    from backends.embedder import Embedder

MIN_POINTS_PER_LIST = 39  # FAISS k-means warns with fewer training points per centroid
NLIST_RULE = "power of two nearest 4*sqrt(passages), halved until passages >= 39*nlist"
EMBED_CHUNK = 512  # passages per progress step

Progress = bool | Callable[[str], None]  # a tqdm bar on stderr (True), none (False), or messages to a callback


class _MessageBar:
    """A tqdm-like bar that reports `desc: done/total passages` to a callback (a spinner's text)."""

    def __init__(self, total: int, desc: str, report: Callable[[str], None]) -> None:
        self.total, self.desc, self.report, self.done = total, desc, report, 0

    def __enter__(self) -> _MessageBar:
        self.report(f"{self.desc}: 0/{self.total:,} passages")
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def update(self, n: int) -> None:
        self.done += n
        self.report(f"{self.desc}: {self.done:,}/{self.total:,} passages")


def progress_bar(total: int, desc: str, enabled: Progress) -> Any:
    if callable(enabled):
        return _MessageBar(total, desc, enabled)
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="psg", disable=not enabled, file=sys.stderr, leave=False)


def nlist_for(passages: int) -> int:
    """IVF lists for `passages` vectors (see the module docstring for the rule)."""
    if passages < 1:
        raise CorpusError("an index needs at least one passage")
    nlist = 2 ** round(math.log2(4 * math.sqrt(passages)))
    while nlist > 1 and passages < MIN_POINTS_PER_LIST * nlist:
        nlist //= 2
    return nlist


def default_embedder(embedder: Embedder | None) -> Embedder:
    if embedder is not None:
        return embedder
    from backends.embedder import Embedder

    return Embedder()


def _embed_passages(passages: pd.DataFrame, embedder: Embedder, progress: Progress) -> tuple[np.ndarray, float]:
    contents = [flashrag_contents(t, x) for t, x in zip(passages["title"], passages["text"], strict=True)]
    vecs = np.zeros((len(contents), embedder.dim), dtype=np.float32)
    t0 = time.perf_counter()
    with progress_bar(len(contents), "embedding passages", progress) as bar:
        for start in range(0, len(contents), EMBED_CHUNK):
            chunk = contents[start:start + EMBED_CHUNK]
            vecs[start:start + len(chunk)] = embedder.encode(chunk)
            bar.update(len(chunk))
    return vecs, time.perf_counter() - t0


def _train_index(vecs: np.ndarray, nlist: int, seed: int) -> tuple[Any, float]:
    faiss = faiss_module()
    n, dim = vecs.shape
    if not 1 <= nlist <= n:
        raise CorpusError(f"nlist {nlist}: need 1 <= nlist <= passages ({n})")
    t0 = time.perf_counter()
    quantizer = faiss.IndexFlatIP(dim)
    index = faiss.IndexIVFFlat(quantizer, dim, nlist, faiss.METRIC_INNER_PRODUCT)
    index.cp.seed = seed
    index.train(vecs)
    index.add(vecs)  # labels 0..n-1: the passage ids (the wrapper keeps `quantizer` alive)
    return index, time.perf_counter() - t0


def embed_and_index(passages: pd.DataFrame, embedder: Embedder | None, nlist: int | None, seed: int,
                     progress: Progress) -> tuple[Any, Embedder, dict[str, float]]:
    """Embed the passages and train their IVF index (nlist by `nlist_for` unless given; checked
    before the embedder loads); returns the index, the embedder used and the manifest's timings."""
    n_lists = nlist if nlist is not None else nlist_for(len(passages))
    if not 1 <= n_lists <= len(passages):
        raise CorpusError(f"nlist {n_lists}: need 1 <= nlist <= passages ({len(passages)})")
    embedder = default_embedder(embedder)
    vecs, embed_s = _embed_passages(passages, embedder, progress)
    index, index_s = _train_index(vecs, n_lists, seed)
    return index, embedder, {"embed_s": round(embed_s, 3), "index_s": round(index_s, 3),
                   "passages_per_s": round(len(passages) / max(embed_s, 1e-9), 1)}


def index_record(index: Any, nlist_given: bool, supplied: dict | None = None) -> dict:
    faiss = faiss_module()
    metric = {faiss.METRIC_INNER_PRODUCT: "inner_product", faiss.METRIC_L2: "l2"}.get(index.metric_type,
                                                                                       str(index.metric_type))
    return {"type": type(index).__name__, "nlist": int(index.nlist), "metric": metric, "ntotal": int(index.ntotal),
            "dim": int(index.d), "nlist_rule": "given" if nlist_given or supplied else NLIST_RULE,
            "supplied": supplied}
