"""A `--corpus` trace's ground truth equals direct FAISS searches of the index, and the real
retrieval body, seeded with the previous top-20, finds the recorded top-k."""

from __future__ import annotations

from itertools import pairwise

import numpy as np
import pytest

faiss = pytest.importorskip("faiss", reason="faiss is not installed (pip install faiss-cpu)")

from backends.ivf import IVFRetriever, cluster_vectors  # noqa: E402
from backends.real_trace import realize_trace  # noqa: E402
from backends.retrieval import RetrievalService  # noqa: E402
from ragraph.graph import PREFIX_FRACTIONS, Retrieve, query_prefix  # noqa: E402
from ragraph.work import ScanTask, SearchBatch  # noqa: E402
from traces.generate import TraceConfig, generate_trace  # noqa: E402
from traces.schema import TraceRequest, to_request  # noqa: E402


@pytest.fixture(scope="module")
def truth_trace(wiki_corpus, embedder):
    cfg = TraceConfig(("irg", "hyde", "multistep"), 2.0, 6.0, seed=3, nprobe=4, k=3, nlist=wiki_corpus.nlist)
    return realize_trace(generate_trace(cfg), wiki_corpus, embedder, seed=3)


def direct(index, x: np.ndarray, nprobe: int, k: int) -> list[int]:
    _, ids = index.search(x.reshape(1, -1), k, params=faiss.SearchParametersIVF(nprobe=nprobe))
    return [int(i) for i in ids[0] if i >= 0]


def test_truth_matches_a_direct_search(truth_trace, wiki_corpus, embedder):
    index = wiki_corpus.index
    list_of = {int(i): c for c in range(index.nlist) for i in cluster_vectors(index, c)[1]}
    stages = [st for row in truth_trace for st in row["stages"] if st["op"] == "retrieve"]
    assert len(stages) >= 10
    prefixed = 0
    for st in stages:
        t = st["truth"]
        x = embedder.encode([st["query"]])[0]
        assert t["topk"] == direct(index, x, st["nprobe"], st["k"])
        assert t["top20"] == direct(index, x, st["nprobe"], 20)
        assert t["hits"] == [list_of[i] for i in t["topk"]]
        assert set(t["hits"]) <= set(st["clusters"])
        if t["prefix_same"]:
            prefixed += 1
            xs = embedder.encode([query_prefix(st["query"], f) for f in PREFIX_FRACTIONS])
            assert t["prefix_same"] == [direct(index, xp, st["nprobe"], st["k"]) == t["topk"] for xp in xs]
    assert prefixed >= 3  # retrievals after a generation (hyde, irg, multistep follow-ups)
    # the first retrievals of one-shot-like shapes carry no prefix outcome
    assert all(not row["stages"][0].get("truth", {}).get("prefix_same") for row in truth_trace
               if row["stages"][0]["op"] == "retrieve")


def test_truth_is_deterministic(truth_trace, wiki_corpus, embedder):
    cfg = TraceConfig(("irg", "hyde", "multistep"), 2.0, 6.0, seed=3, nprobe=4, k=3, nlist=wiki_corpus.nlist)
    assert realize_trace(generate_trace(cfg), wiki_corpus, embedder, seed=3) == truth_trace


def test_real_body_seeded_with_the_previous_top20_finds_the_truth(truth_trace, wiki_corpus, embedder):
    """A follow-up retrieval seeded with its predecessor's top-20: every sub-stage's running top-k
    is the truth's partial top-k (up to placeholders), and the final one is the truth's top-k."""
    from ragraph.workflows import WorkflowRegistry

    reg = WorkflowRegistry()
    requests = [to_request(TraceRequest.model_validate(r), reg) for r in truth_trace]
    service = RetrievalService(IVFRetriever(wiki_corpus.index), embedder.encode, requests)
    checked = 0
    for req in requests:
        rets = [(i, n) for i, n in enumerate(req.nodes) if isinstance(n, Retrieve)]
        for (_, prev), (i, node) in pairwise(rets):
            truth, seed = node.truth, prev.truth.top20
            parts = [node.clusters[:1], node.clusters[1:3], node.clusters[3:]]
            scanned: set[int] = set()
            for j, part in enumerate(parts):
                task = ScanTask((req.id, i), part, node.k, j == 0, j == len(parts) - 1,
                                seed=seed if j == 0 else ())
                got = service.search(SearchBatch((task,))).topk[(req.id, i)]
                scanned.update(part)
                want = truth.partial_topk(scanned, seed)
                assert [g for g in got if g in truth.topk] == [w for w in want if w >= 0]
            assert got == truth.topk
            checked += 1
    assert checked >= 3
