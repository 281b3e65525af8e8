"""HedraRAG's techniques: reordering, speculative generation and the GPU index cache, checked
as units and as invariants of simulated runs whose retrievals carry search truth."""

from __future__ import annotations

import dataclasses
from collections import defaultdict

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import sim.executor as executor
from hwmodel.latency import LatencyModel
from hwmodel.profile import load_profile
from ragraph.core import Scheduler, SchedulerError
from ragraph.graph import Request, Retrieve, SearchTruth
from ragraph.policies import make_policy, parse_policy
from ragraph.techniques.gpu_cache import eq2_split
from ragraph.techniques.reorder import completion_point, reordered
from ragraph.work import GenStep, GenStepResult, SearchBatch, SearchResult
from sim.gen_engine import GenEngineModel
from tests.test_sim_properties import Recorder, requests_for, small_kv_profile

PROFILE = load_profile()


def with_truth(requests: list[Request], seed: int, locality: float = 0.6) -> list[Request]:
    """The requests with a made-up search truth on every retrieval: top-k ids in lists of its
    probe list (near the front more often), a follow-up's hits often where its predecessor's were."""
    rng = np.random.default_rng(seed)
    out = []
    next_id = 10**6
    for req in requests:
        nodes, previous = [], None
        for spec in req.nodes:
            if isinstance(spec, Retrieve):
                probe = list(spec.clusters)
                hits = []
                for _ in range(spec.k):
                    if previous is not None and rng.random() < locality and set(previous.hits) & set(probe):
                        hits.append(int(rng.choice(sorted(set(previous.hits) & set(probe)))))
                    else:
                        hits.append(probe[min(int(rng.exponential(len(probe) / 4)), len(probe) - 1)])
                ids = tuple(range(next_id, next_id + spec.k))
                next_id += 20
                extra = tuple(range(next_id, next_id + 20 - spec.k))
                next_id += 20
                if previous is not None and rng.random() < locality / 2:
                    ids = previous.top20[: spec.k]  # the answer is in the request's local cache
                    hits = list(previous.hits[: spec.k]) if set(previous.hits[: spec.k]) <= set(probe) else hits
                prefix_same = tuple(bool(rng.random() < p) for p in (0.3, 0.5, 0.8)) if previous else ()
                truth = SearchTruth(tuple(ids), tuple(hits), tuple(ids) + extra, prefix_same)
                spec = dataclasses.replace(spec, truth=truth)
                previous = truth
            nodes.append(spec)
        out.append(dataclasses.replace(req, nodes=tuple(nodes)))
    return out


# --- units ------------------------------------------------------------------------------------------

def test_reordered_scans_previous_hits_then_previous_lists_then_the_rest():
    previous = Retrieve(4, 1, (7, 3, 9, 1), truth=SearchTruth((5,), (9,), (5,)))
    assert reordered([1, 2, 9, 4, 7, 3], previous) == [9, 1, 7, 3, 2, 4]


def test_completion_point_counts_lists_until_every_final_id_is_found():
    truth = SearchTruth((5, 6), (3, 8), (5, 6, 11))
    assert completion_point([1, 3, 2, 8, 4], truth) == 4
    assert completion_point([8, 3, 1], truth) == 2
    assert completion_point([1, 3, 2, 8], truth, seed=(6,)) == 2  # the cache already holds id 6
    assert completion_point([1, 2], truth, seed=(5, 6)) == 0


def test_eq2_split_maximises_the_slower_side():
    assert eq2_split(30.0, lambda kv: kv, lambda cache: 2 * cache, steps=30) == pytest.approx(10.0)
    assert eq2_split(30.0, lambda kv: 100.0, lambda cache: cache, steps=30) == pytest.approx(30.0)
    assert eq2_split(30.0, lambda kv: kv, lambda cache: 1.0, steps=30) == 0.0  # the cache does not help


def test_technique_switches_and_options_parse():
    assert parse_policy("hedra:no-gpu-cache,no-reorder").resolved()["gpu_cache"] is False
    assert parse_policy("hedra:gpu_cache_clusters=64,refresh_every=10").resolved()["gpu_cache_clusters"] == 64
    assert parse_policy("hedra:spec-after=2").resolved()["spec_after"] == 2


def test_speculating_a_running_node_is_refused():
    s = Scheduler(make_policy("hedra:no-spec-gen", LatencyModel(PROFILE)))
    req = requests_for(["one-shot"], 1.0, 3.0, 1, 16)[0]
    s.submit(req, 0.0)
    with pytest.raises(SchedulerError):
        s.speculate(s.requests[req.id].nodes[0], 0.0)  # a Retrieve node
    with pytest.raises(SchedulerError):
        s.restart_speculation(s.requests[req.id].nodes[1], 0.0)  # never started speculatively


def test_lent_blocks_come_back_and_never_overlap_sequences():
    engine = GenEngineModel(LatencyModel(small_kv_profile(2000)))
    reserve = engine._blocks(engine._longest)  # an emptied engine can always admit its longest sequence
    assert engine.lend(engine.total_blocks) == engine.total_blocks - reserve
    engine.reclaim(engine.pool.lent)
    got = engine.lend(150)
    assert got == 150
    assert engine.kv_used_blocks == 0 and engine.pool.lent == got
    engine.reclaim(got)
    assert engine.pool.lent == 0 and engine.pool.anon == engine.total_blocks
    with pytest.raises(ValueError):
        engine.reclaim(1)


# --- invariants of simulated runs ------------------------------------------------------------

def run_recorded(requests, spec, profile, monkeypatch):
    Recorder.log = []
    monkeypatch.setattr(executor, "Scheduler", Recorder)
    latency = LatencyModel(profile)
    kv_checks = []
    step = GenEngineModel.step

    def checked_step(self):
        out = step(self)
        kv_checks.append(self.kv_used_blocks + self.pool.lent <= self.total_blocks and self.kv_used_blocks >= 0)
        return out

    monkeypatch.setattr(GenEngineModel, "step", checked_step)
    sim = executor.Simulation(requests, make_policy(spec, latency), latency, timeline=False)
    return sim, sim.run(), list(Recorder.log), kv_checks


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    workflows=st.lists(st.sampled_from(["irg", "multistep", "one-shot", "hyde"]), min_size=1, max_size=2, unique=True),
    rate=st.floats(2.0, 14.0),
    seed=st.integers(0, 2**16),
    spec=st.sampled_from(["hedra", "hedra:spec_after=1", "hedra:no-reorder,refresh_every=3,spec_retr_at=0.25",
                          "hedra:spec_threshold=1.0,gpu_cache_clusters=200,refresh_every=5"]),
)
def test_speculation_and_cache_invariants(monkeypatch, workflows, rate, seed, spec):
    requests = with_truth(requests_for(workflows, rate, 5.0, seed, 256), seed)
    _sim, result, log, kv_checks = run_recorded(requests, spec, small_kv_profile(3000), monkeypatch)
    assert all(r.status == "completed" for r in result.records)
    # KV use plus the blocks lent to the index cache never exceed the GPU's KV pool
    assert kv_checks and all(kv_checks)
    truth = {(r.id, i): n.truth for r in requests for i, n in enumerate(r.nodes) if isinstance(n, Retrieve)}
    # CPU and GPU sub-stages merge into exactly the full search's top-k
    final: dict = {}
    history: dict = defaultdict(list)  # retrieval key -> [(time, top-k reported)]
    for kind, _lane, item, now, res in log:
        if kind == "end" and isinstance(item, SearchBatch):
            assert isinstance(res, SearchResult)
            for key, topk in res.topk.items():
                final[key] = topk
                history[key].append((now, topk))
    assert final.keys() == truth.keys()
    assert all(final[k] == truth[k].topk for k in truth)
    # every speculation ends confirmed, aborted at the decision or restarted
    report = result.techniques["speculation"]
    assert report["issued"] == report["confirmed"] + report["aborted"] + report["restarted"]
    assert sum(r.spec_aborted for r in result.records) == report["aborted"] + report["restarted"]
    retr = result.techniques["speculative_retrieval"]
    assert retr["issued"] == retr["confirmed"] + retr["aborted"] + retr["cancelled"]
    # aborted work never reaches a result: the run of each Generate that finished is its last
    # admission, never aborted afterwards, and a speculative one ran on its retrieval's final top-k
    # (a speculative run may finish and still be thrown away later: only the last finish counts)
    last_admit: dict = {}
    finished_from: dict = {}  # Generate node -> the admission its last finish came from
    for kind, _lane, item, now, res in log:
        if not isinstance(item, GenStep):
            continue
        if kind == "start":
            for key in item.abort:
                last_admit.pop(key, None)
            for task in item.admit:
                last_admit[task.key] = (now, task.speculative)
        else:
            assert isinstance(res, GenStepResult)
            for key in res.finished:
                finished_from[key] = last_admit[key]
    for key, (started, speculative) in finished_from.items():
        if speculative:
            parent = (key[0], key[1] - 1)
            seen = [t for when, t in history[parent] if when <= started]
            assert seen and seen[-1] == truth[parent].topk


def test_gpu_cache_serves_hot_clusters_and_reports(monkeypatch):
    requests = with_truth(requests_for(["one-shot"], 10.0, 8.0, 3, 512), 3)
    _sim, result, _log, kv_checks = run_recorded(requests, "hedra:refresh_every=10", PROFILE, monkeypatch)
    cache = result.techniques["gpu_cache"]
    assert cache["refreshes"] >= 1 and cache["clusters"] > 0 and 0 < cache["hit_rate"] < 1
    assert sum(r.gpu_cluster_hits for r in result.records) > 0
    assert all(kv_checks)


def test_gpu_cache_is_reported_inert_without_a_gpu():
    cpu = load_profile("measured-cpu-tiny-llama-wiki")
    latency = LatencyModel(cpu)
    policy = make_policy("hedra", latency)
    assert policy.report(Scheduler(policy).view)["gpu_cache"]["enabled"] is False


def test_reordering_completes_follow_up_searches_earlier():
    requests = with_truth(requests_for(["irg"], 4.0, 10.0, 5, 256), 5, locality=0.8)
    latency = LatencyModel(PROFILE)
    result = executor.Simulation(requests, make_policy("hedra", latency), latency, timeline=False).run()
    report = result.techniques["reorder"]
    assert report["reordered"] > 0 and report["earlier"] > 0.2
