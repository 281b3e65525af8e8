"""Retrieval ground truth: SearchTruth's partial top-k, the trace's `truth` object, and the
simulator returning the recorded top-k."""

from __future__ import annotations

import json
from pathlib import Path
from typing import ClassVar

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import sim.executor as executor
from hwmodel.latency import LatencyModel
from hwmodel.profile import load_profile
from ragraph.core import Scheduler
from ragraph.graph import Generate, Retrieve, SearchTruth, chain, query_prefix
from ragraph.policies import make_policy
from ragraph.work import SearchBatch
from traces.generate import TraceConfig, generate_trace
from traces.schema import TraceError, load_trace


@st.composite
def truths(draw):
    """A SearchTruth over probe lists 0..nprobe-1, with a scanned set and a seed."""
    nprobe = draw(st.integers(1, 12))
    k = draw(st.integers(1, 8))
    ids = draw(st.lists(st.integers(0, 10_000), min_size=k, max_size=k, unique=True))
    hits = draw(st.lists(st.integers(0, nprobe - 1), min_size=k, max_size=k))
    truth = SearchTruth(tuple(ids), tuple(hits), tuple(ids))
    scanned = draw(st.sets(st.integers(0, nprobe - 1)))
    seed = draw(st.sets(st.sampled_from(ids) | st.integers(20_000, 20_100), max_size=20))
    return truth, scanned, seed


@settings(max_examples=300, deadline=None)
@given(truths())
def test_partial_topk_properties(case):
    truth, scanned, seed = case
    part = truth.partial_topk(scanned, seed)
    assert len(part) == len(truth.topk)
    # complete iff every final id was met: its hit list scanned or the id seeded
    complete = all(c in scanned or i in seed for i, c in zip(truth.topk, truth.hits, strict=True))
    assert (part == truth.topk) == complete
    # final ids keep their order and lead; the rest are distinct placeholders
    found = [i for i in part if i >= 0]
    assert found == [i for i in truth.topk if i in found]
    assert part[: len(found)] == tuple(found)
    holes = part[len(found):]
    assert all(i < 0 for i in holes) and len(set(holes)) == len(holes)
    # scanning more never loses a found id
    assert set(found) <= set(truth.partial_topk(set(scanned) | set(truth.hits[:1]), seed))


def test_partial_topk_examples():
    t = SearchTruth((7, 3, 9), (2, 5, 2), (7, 3, 9, 11))
    assert t.hit_clusters == frozenset({2, 5})
    assert t.partial_topk(()) == (-1, -2, -3)
    assert t.partial_topk({2}) == (7, 9, -1)
    assert t.partial_topk({5}, seed={9, 11}) == (3, 9, -1)
    assert t.partial_topk({2, 5}) == (7, 3, 9)
    assert t.partial_topk((), seed={7, 3, 9}) == (7, 3, 9)


def test_query_prefix_by_words():
    text = "one two three four five six seven eight"
    assert [query_prefix(text, f) for f in (0.25, 0.5, 0.75)] == [
        "one two", "one two three four", "one two three four five six"]
    assert query_prefix("single", 0.25) == "single"
    assert query_prefix("", 0.5) == ""


# --- the trace's truth object ------------------------------------------------------------------


def irg_rows() -> list[dict]:
    cfg = TraceConfig(("irg",), 10.0, 1.0, seed=0, nprobe=4, nlist=64, k=2, iterations=1)
    rows = generate_trace(cfg)[:3]
    for row in rows:
        for st_ in row["stages"]:
            if st_["op"] == "retrieve":
                c = st_["clusters"]
                st_["truth"] = {"topk": [c[0] * 100, c[1] * 100], "hits": [c[0], c[1]],
                                "top20": [c[0] * 100, c[1] * 100, *range(5000, 5018)], "prefix_same": []}
    return rows


def write(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_truth_loads_into_retrieve_nodes(tmp_path):
    rows = irg_rows()
    reqs = load_trace(write(tmp_path / "t.jsonl", rows))
    r = next(n for n in reqs[0].nodes if isinstance(n, Retrieve))
    st0 = rows[0]["stages"][0]
    assert r.truth == SearchTruth(tuple(st0["truth"]["topk"]), tuple(st0["truth"]["hits"]),
                                  tuple(st0["truth"]["top20"]), ())


def _first_truth(rows):
    return rows[1]["stages"][0]["truth"]


BAD_TRUTH = {
    "hits-length": (lambda t: t["hits"].pop(), "hits has 1 entries, topk 2"),
    "topk-longer-than-k": (lambda t: (t["topk"].append(5000), t["hits"].append(t["hits"][0])), "k is 2"),
    "top20-not-starting-with-topk": (lambda t: t["top20"].reverse(), "top20 must start with topk"),
    "top20-too-long": (lambda t: t["top20"].append(9999), "at most 20"),
    "prefix-length": (lambda t: t.__setitem__("prefix_same", [True]), "prefix_same has 1 entries"),
    "hit-outside-probe-list": (None, "not in clusters"),  # mutated in the test (needs the probe list)
    "short-top20": (lambda t: t.__setitem__("top20", t["top20"][:1]), "topk must hold 1"),
    "negative-id": (lambda t: t["topk"].__setitem__(0, -4), "greater than or equal to 0"),
}


@pytest.mark.parametrize("case", list(BAD_TRUTH))
def test_bad_truth_names_file_line_and_field(tmp_path, case):
    mutate, text = BAD_TRUTH[case]
    rows = irg_rows()
    if case == "hit-outside-probe-list":
        clusters = rows[1]["stages"][0]["clusters"]
        t = _first_truth(rows)
        t["hits"][0] = next(c for c in range(64) if c not in clusters)
    else:
        mutate(_first_truth(rows))
    path = write(tmp_path / f"{case}.jsonl", rows)
    with pytest.raises(TraceError) as info:
        load_trace(path)
    msg = str(info.value)
    assert msg.startswith(f"{path}:2: field stages.0.truth"), msg
    assert text in msg, msg


def test_fewer_vectors_than_k_is_accepted(tmp_path):
    rows = irg_rows()
    t = _first_truth(rows)
    t["topk"], t["hits"], t["top20"] = t["topk"][:1], t["hits"][:1], t["topk"][:1]
    load_trace(write(tmp_path / "t.jsonl", rows))


# --- the simulator returns the recorded top-k -------------------------------------------------


class Recorder(Scheduler):
    searches: ClassVar[list] = []

    def complete(self, item, result, now):
        if isinstance(item, SearchBatch):
            Recorder.searches.append((item, result))
        super().complete(item, result, now)


@pytest.mark.parametrize("policy", ["hedra", "flashrag", "hedra:substages=fixed"])
def test_simulator_reports_the_truth_topk(monkeypatch, policy):
    latency = LatencyModel(load_profile())
    nprobe = 512
    reqs = []
    for i in range(6):
        clusters = tuple((37 * i + 3 * j) % 4096 for j in range(nprobe))
        hits = (clusters[400 - i], clusters[3], clusters[400 - i])  # two results in one list, one early
        truth = SearchTruth((i * 10 + 1, i * 10 + 2, i * 10 + 3), hits, (i * 10 + 1, i * 10 + 2, i * 10 + 3))
        nodes = [Retrieve(nprobe, 3, clusters, truth=truth), Generate(300, 20)]
        reqs.append(chain(f"r{i}", 0.01 * i, "one-shot", nodes))
    Recorder.searches = []
    monkeypatch.setattr(executor, "Scheduler", Recorder)
    executor.Simulation(reqs, make_policy(policy, latency), latency, timeline=False).run()
    by_key: dict = {}
    for batch, result in Recorder.searches:
        for t in batch.tasks:
            by_key.setdefault(t.key, []).append((t, result.topk[t.key]))
    assert len(by_key) == len(reqs)
    for req in reqs:
        truth = req.nodes[0].truth
        seen = by_key[(req.id, 0)]
        assert seen[-1][0].last and seen[-1][1] == truth.topk
        scanned: set[int] = set()
        for task, topk in seen:  # every partial result is the truth's partial top-k
            scanned.update(task.clusters)
            assert topk == truth.partial_topk(scanned)
        if policy == "hedra:substages=fixed":  # split into sub-stages: the result is incomplete before list 400 - i
            assert seen[0][1] != truth.topk


def test_simulator_without_truth_reports_no_ids(monkeypatch):
    latency = LatencyModel(load_profile())
    reqs = [chain("r0", 0.0, "one-shot", [Retrieve(8, 1, tuple(range(8))), Generate(100, 5)])]
    Recorder.searches = []
    monkeypatch.setattr(executor, "Scheduler", Recorder)
    executor.Simulation(reqs, make_policy("hedra", latency), latency, timeline=False).run()
    assert Recorder.searches and all(not r.topk for _, r in Recorder.searches)


# --- the synthetic truth model ------------------------------------------------------------------


def synthetic(seed: int, k: int = 1, nprobe: int = 32, nlist: int = 256, workflows=("irg", "multistep", "hyde")):
    return generate_trace(TraceConfig(tuple(workflows), 2.0, 60.0, seed=seed, nprobe=nprobe, k=k, nlist=nlist))


def test_synthetic_truth_is_deterministic_and_consistent(tmp_path):
    from traces.truth_model import ID_STRIDE

    rows = synthetic(5, k=3)
    assert rows == synthetic(5, k=3)
    assert rows != synthetic(6, k=3)
    reqs = load_trace(write(tmp_path / "s.jsonl", rows))  # validated: hits in the probe lists, top20 starts with topk
    rets = [n for r in reqs for n in r.nodes if isinstance(n, Retrieve)]
    assert rets and all(n.truth is not None for n in rets)
    for n in rets:
        assert [i // ID_STRIDE for i in n.truth.topk] == list(n.truth.hits)
        assert len(n.truth.top20) == 20 and len(n.truth.topk) == 3
    prefixed = [n.truth.prefix_same for n in rets if n.truth.prefix_same]
    assert prefixed and all(list(p) == sorted(p) for p in prefixed)  # a longer prefix agrees if a shorter does


def test_synthetic_locality_near_the_corpus_measurement():
    from traces.locality import locality
    from traces.truth_model import TruthParams

    measured = TruthParams.load().fitted_on["corpus_locality_k1"]
    reqs = [to_request_row(r) for r in synthetic(11, workflows=("irg", "multistep"))]
    loc = locality(reqs)
    assert loc is not None and loc["follow_ups"] > 50
    for key in ("topk_in_previous_top20", "hits_in_previous_hits", "hits_in_previous_probe"):
        assert abs(loc[key] - measured[key]) < 0.15, (key, loc[key], measured[key])


def test_synthetic_hit_positions_follow_the_fit():
    """Hit lists sit early in the probe order, as fitted (scaled to the trace's nprobe)."""
    import numpy as np

    from traces.truth_model import TruthParams

    pmf = np.asarray(TruthParams.load().position_pmf)
    fitted_mean = float((np.arange(len(pmf)) + 0.5) @ pmf / len(pmf))  # as a share of nprobe
    rows = synthetic(3, k=20, nprobe=256, nlist=4096)
    share = [st["clusters"].index(c) / 256 for r in rows for st in r["stages"] if st["op"] == "retrieve"
             for c in set(st["truth"]["hits"])]
    assert abs(float(np.mean(share)) - fitted_mean) < 0.08
    assert fitted_mean < 0.4  # the corpus's hits lie early in the coarse order


def to_request_row(row: dict):
    from ragraph.workflows import WorkflowRegistry
    from traces.schema import TraceRequest, to_request

    return to_request(TraceRequest.model_validate(row), WorkflowRegistry())
