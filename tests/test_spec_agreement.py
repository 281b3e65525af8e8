"""The simulator and the real retrieval body agree on every speculation outcome: whenever the
policy makes the same decision (speculate after the same lists scanned, seeded with the same
cache, or search the same prefix of the query), the real search's result equals the final
top-k exactly when the trace's truth says the simulator's does. The outcome of a speculation
is thus a property of the trace, not of the body that replays it."""

from __future__ import annotations

import pytest

pytest.importorskip("faiss", reason="faiss is not installed (pip install faiss-cpu)")

from backends.ivf import IVFRetriever
from backends.real_trace import realize_trace
from backends.retrieval import RetrievalService
from ragraph.graph import PREFIX_FRACTIONS, Retrieve
from ragraph.work import ScanTask, SearchBatch
from ragraph.workflows import WorkflowRegistry
from traces.generate import TraceConfig, generate_trace
from traces.schema import TraceRequest, to_request


@pytest.fixture(scope="module")
def requests(wiki_corpus, embedder):
    cfg = TraceConfig(("irg", "multistep", "hyde"), 2.0, 8.0, seed=11, nprobe=8, k=2, nlist=wiki_corpus.nlist)
    rows = realize_trace(generate_trace(cfg), wiki_corpus, embedder, seed=11)
    registry = WorkflowRegistry()
    return [to_request(TraceRequest.model_validate(r), registry) for r in rows]


@pytest.fixture(scope="module")
def service(wiki_corpus, embedder, requests):
    return RetrievalService(IVFRetriever(wiki_corpus.index), embedder.encode, requests)


def retrievals(requests):
    for req in requests:
        previous = None
        for i, spec in enumerate(req.nodes):
            if isinstance(spec, Retrieve):
                yield req, i, spec, previous
                previous = spec


def test_partial_results_agree_after_every_substage(requests, service):
    """Scan one list per sub-stage, seeded (as reordering does) where there is a previous
    retrieval: after each, real partial == final iff the truth's partial == final."""
    checked = agree_final = 0
    for req, i, spec, previous in retrievals(requests):
        assert spec.truth is not None
        seed = previous.truth.top20 if previous is not None else ()
        order = list(spec.clusters)
        for pos, cluster in enumerate(order):
            task = ScanTask((req.id, i), (cluster,), spec.k, pos == 0, pos == len(order) - 1,
                            seed=seed if pos == 0 else ())
            real = service.search(SearchBatch((task,))).topk[(req.id, i)]
            sim = spec.truth.partial_topk(order[: pos + 1], seed)
            assert (real == spec.truth.topk) == (sim == spec.truth.topk), (req.id, i, pos)
            checked += 1
            agree_final += real == spec.truth.topk
        service.forget(req.id)
    assert checked >= 50 and 0 < agree_final < checked  # both outcomes occur


def test_speculative_retrieval_outcomes_agree(requests, service):
    """A search on the first 25/50/75% of the query's words finds the final top-k on the real
    body exactly when the trace's prefix outcome says so (what the simulator answers)."""
    outcomes = []
    for req, i, spec, _previous in retrievals(requests):
        if not spec.truth.prefix_same:
            continue
        for f, same in zip(PREFIX_FRACTIONS, spec.truth.prefix_same, strict=True):
            task = ScanTask((req.id, i), spec.clusters, spec.k, True, True, prefix=f)
            real = service.search(SearchBatch((task,))).topk[(req.id, i)]
            assert (real == spec.truth.topk) == same, (req.id, i, f)
            outcomes.append(same)
            service.forget(req.id)
    assert len(outcomes) >= 9 and any(outcomes)
