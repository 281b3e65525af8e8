"""Scheduler invariants, checked on random workloads through the simulated body."""

from __future__ import annotations

import dataclasses
from collections import defaultdict
from typing import ClassVar

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import sim.executor as executor
from backends.executor import RealExecutor
from hwmodel.latency import LatencyModel
from hwmodel.profile import load_profile
from ragraph.core import Scheduler
from ragraph.graph import Generate, Retrieve, chain
from ragraph.policies import make_policy
from ragraph.policies.hedra import HedraOptions, HedraPolicy
from ragraph.records import RunResult
from ragraph.work import CacheLoad, CacheLoadResult, GenStep, GenStepResult, Lane, SearchBatch, SearchResult
from ragraph.workflows import RAG_WORKFLOWS, WorkflowRegistry
from sim.gen_engine import GenEngineModel
from traces.generate import TraceConfig, generate_trace
from traces.schema import TraceRequest, to_request

POLICIES = ["langchain", "flashrag", "hedra", "hedra:no-wavefront", "hedra:substages=fixed", "hedra:substages=off"]
PROFILE = load_profile()


def small_kv_profile(blocks: int):
    """The default profile with GPU memory cut so that about `blocks` KV blocks remain."""
    e, m = PROFILE.engine, PROFILE.model
    block_gib = m.kv_bytes_per_token * e.block_size / 1024**3
    gpu = (m.weights_gib + e.activation_reserve_gib + blocks * block_gib + block_gib / 2) / e.gpu_memory_utilization
    return PROFILE.model_copy(update={"hardware": PROFILE.hardware.model_copy(update={"gpu_memory_gib": gpu})})


class Recorder(Scheduler):
    """A scheduler that logs every item with its lane, start and end."""

    log: ClassVar[list] = []

    def next_work(self, lane, now):
        item = super().next_work(lane, now)
        if item is not None:
            Recorder.log.append(["start", lane, item, now, None])
        return item

    def complete(self, item, result, now):
        Recorder.log.append(["end", item.lane, item, now, result])
        super().complete(item, result, now)

    def complete_quiet(self, item, run):  # engine steps advanced together: logged one by one
        step = super().complete_quiet(item, run)
        for now, tokens in zip(run.ends, run.decode_tokens, strict=True):
            result = GenStepResult(running=1, decode_tokens=tokens, kv_used_blocks=run.kv_used_blocks,
                                   kv_total_blocks=run.kv_total_blocks, waiting=run.waiting)  # (as after the last)
            Recorder.log += [["end", Lane.GPU_GEN, item, now, result], ["start", Lane.GPU_GEN, step, now, None]]
            item = step
        return step


def run(requests, policy: str, profile=PROFILE, monkeypatch=None, fold: bool = True):
    """`fold`: engine steps advanced together (the recorder then sees a quiet run's results only
    as far as `QuietRun` tells them)."""
    Recorder.log = []
    latency = LatencyModel(profile)
    if monkeypatch is not None:
        monkeypatch.setattr(executor, "Scheduler", Recorder)
    sim = executor.Simulation(requests, make_policy(policy, latency), latency, timeline=False)
    sim.fold_steps = fold
    result = sim.run()
    return result, list(Recorder.log)


def requests_for(workflows, rate, duration, seed, nprobe):
    cfg = TraceConfig(tuple(workflows), rate, duration, seed=seed, nprobe=nprobe)
    reg = WorkflowRegistry()
    return [to_request(TraceRequest.model_validate(r), reg) for r in generate_trace(cfg, reg)]


def check_invariants(requests, result, log, kv_total):
    assert log, "the recorder saw no work"
    # every request ends exactly once, completed or failed with a reason
    ids = [r.id for r in result.records]
    assert sorted(ids) == sorted(r.id for r in requests)
    assert all(r.status == "completed" or (r.status == "failed" and r.reason) for r in result.records)
    # no lane runs two items at once
    open_item = {}
    for kind, lane, item, _now, _res in log:
        if kind == "start":
            assert open_item.get(lane) is None, f"{lane} started an item while busy"
            open_item[lane] = item
        else:
            assert open_item.get(lane) is item
            open_item[lane] = None
    # KV use never exceeds capacity
    for kind, _lane, item, _now, res in log:
        if kind == "end" and isinstance(item, GenStep):
            assert isinstance(res, GenStepResult) and 0 <= res.kv_used_blocks <= kv_total
    # the sub-stages of each retrieval cover exactly its nprobe clusters, each once (a
    # speculative search on a prefix of the query is a search of its own, apart)
    scanned = defaultdict(list)
    for kind, _lane, item, _now, _res in log:
        if kind == "start" and isinstance(item, SearchBatch):
            for t in item.tasks:
                if t.prefix >= 1:
                    scanned[t.key].extend(t.clusters)
    by_key = {(r.id, i): n for r in requests for i, n in enumerate(r.nodes) if isinstance(n, Retrieve)}
    completed = {r.id for r in result.records if r.status == "completed"}
    for key, node in by_key.items():
        if key[0] in completed:
            assert sorted(scanned[key]) == sorted(node.clusters)
            assert len(scanned[key]) == node.nprobe


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    workflows=st.lists(st.sampled_from(sorted(RAG_WORKFLOWS)), min_size=1, max_size=3, unique=True),
    rate=st.floats(0.5, 12.0),
    seed=st.integers(0, 2**16),
    nprobe=st.sampled_from([1, 7, 64, 256]),
    policy=st.sampled_from(POLICIES),
)
def test_invariants_on_random_workloads(monkeypatch, workflows, rate, seed, nprobe, policy):
    requests = requests_for(workflows, rate, 6.0, seed, nprobe)
    if not requests:
        return
    result, log = run(requests, policy, monkeypatch=monkeypatch)
    check_invariants(requests, result, log, result.kv_total_blocks)
    assert all(r.status == "completed" for r in result.records)


@pytest.mark.parametrize("policy", POLICIES)
def test_kv_pressure_queues_and_oversized_requests_fail(monkeypatch, policy):
    profile = small_kv_profile(60)
    assert 55 <= profile.kv_capacity_blocks() <= 65
    requests = requests_for(["irg", "hyde"], 8.0, 5.0, 3, 16)
    huge = chain("huge", 0.5, "one-shot", [Retrieve(4, 1, (1, 2, 3, 4)), Generate(4000, 100)])
    result, log = run([*requests, huge], policy, profile, monkeypatch)
    check_invariants([*requests, huge], result, log, profile.kv_capacity_blocks())
    status = {r.id: r for r in result.records}
    assert status["huge"].status == "failed" and "KV blocks" in status["huge"].reason
    assert all(r.status == "completed" for r in result.records if r.id != "huge")
    assert max(r.kv_used_blocks for k, _l, i, _n, r in log if k == "end" and isinstance(i, GenStep)) > 40
    assert any(r.waiting for k, _l, i, _n, r in log if k == "end" and isinstance(i, GenStep))


@pytest.mark.parametrize("policy", ["flashrag", "hedra"])
def test_same_seed_same_inputs_same_results(policy):
    requests = requests_for(["irg", "recomp"], 6.0, 20.0, 7, 256)
    a, _ = run(requests, policy)
    b, _ = run(requests, policy)
    assert [r.as_dict() for r in a.records] == [r.as_dict() for r in b.records]
    assert a.sim_s == b.sim_s and a.lane_busy_s == b.lane_busy_s


@pytest.mark.parametrize("policy", ["flashrag", "hedra"])
def test_a_finished_simulation_is_freed_without_the_cyclic_collector(policy):
    """Its lanes' generators (which hold it, its timeline, its core) are closed at the end of
    `run()`: a process that runs many simulations (sweeps, benchmarks) does not keep each one's
    timeline until the cyclic collector finds it."""
    import gc
    import weakref

    latency = LatencyModel(PROFILE)
    sim = executor.Simulation(requests_for(["irg"], 6.0, 10.0, 3, 256), make_policy(policy, latency), latency)
    collecting = gc.isenabled()
    gc.disable()
    try:
        result = sim.run()
        gone = weakref.ref(sim)
        del sim
        assert gone() is None and result.records and result.timeline
    finally:
        if collecting:
            gc.enable()


def test_prefix_caching_serves_shared_templates(monkeypatch):
    requests = requests_for(["one-shot"], 4.0, 10.0, 1, 16)
    _, log = run(requests, "hedra", monkeypatch=monkeypatch, fold=False)  # every step's result
    cached = sum(r.cached_prompt_tokens for k, _l, i, _n, r in log if k == "end" and isinstance(i, GenStep))
    assert cached >= 48 * (len(requests) - 1)  # all but the first reuse the 60-token template's 3 full blocks


class CachingPolicy(HedraPolicy):
    """Test policy: hedra plus a one-off load of 64 lists into the GPU cache; queries scan
    their cached lists on `gpu_retrieval` and the rest on `cpu_retrieval`."""

    lanes = (Lane.GPU_GEN, Lane.CPU_RETRIEVAL, Lane.GPU_RETRIEVAL, Lane.PCIE)
    loaded = False

    def plan_pcie(self, s, now):
        if self.loaded:
            return None
        self.loaded = True
        return CacheLoad(load=tuple(range(64)))

    def plan_search(self, s, lane, now):
        if lane is not Lane.GPU_RETRIEVAL:
            return super().plan_search(s, lane, now)
        tasks = []
        for node in list(s.retr_waiting.values()):
            rest = node.order[node.next_pos:]
            hot = [c for c in rest if c in s.gpu_cache]
            if hot:
                s.reorder(node, hot + [c for c in rest if c not in s.gpu_cache])
                tasks.append(s.take_clusters(node, len(hot)))
        return SearchBatch(tuple(tasks), lane=Lane.GPU_RETRIEVAL) if tasks else None


def test_gpu_cache_lanes_carry_cache_loads_and_gpu_scans():
    requests = requests_for(["irg"], 4.0, 10.0, 5, 256)
    latency = LatencyModel(PROFILE)
    sim = executor.Simulation(requests, CachingPolicy(HedraOptions(), latency), latency)
    result = sim.run()
    assert all(r.status == "completed" for r in result.records)
    assert sum(r.gpu_cluster_hits for r in result.records) > 0
    pcie = [e for e in result.timeline if e[0] == "pcie"]
    gpu = [e for e in result.timeline if e[0] == "gpu_retrieval"]
    assert len(pcie) == 1 and gpu
    vec = PROFILE.index.bytes_per_vector
    assert pcie[0][3] == pytest.approx(latency.pcie_s(sum(latency.list_sizes[:64]) * vec))
    for _lane, _name, _start, dur, args in gpu:
        assert dur == pytest.approx(latency.gpu_search_s(args["vectors"] * vec))
    assert sim.sched.gpu_cache == set(range(64))


class StandInGen:
    """The sim's engine model as the real executor's generation body (no vLLM needed)."""

    def __init__(self, latency: LatencyModel) -> None:
        self.model = GenEngineModel(latency)

    def apply(self, step: GenStep) -> None:
        self.model.apply(step)

    def step(self) -> GenStepResult:
        return self.model.step()[1]

    def abort_all(self) -> None:
        pass


class StandInRetrieval:
    """A retrieval body that finds nothing and loads whatever it is asked to."""

    def __init__(self, list_sizes: list[int]) -> None:
        self.list_sizes = list_sizes

    def search(self, batch: SearchBatch) -> SearchResult:
        return SearchResult()

    def load(self, item: CacheLoad) -> CacheLoadResult:
        return CacheLoadResult(item.load)

    def forget(self, request_id: str) -> None:
        pass


def test_both_executors_return_a_run_result_with_the_same_timeline_args():
    """The real executor (on stand-in engines) and the simulator write the same args for
    every kind of item, on all four lanes, and the same numbers for the same item."""
    requests = [dataclasses.replace(r, arrival_s=r.arrival_s / 100) for r in requests_for(["irg"], 4.0, 3.0, 5, 64)]
    latency = LatencyModel(PROFILE)
    sim = executor.Simulation(requests, CachingPolicy(HedraOptions(), latency), latency).run()
    real_ex = RealExecutor(requests, CachingPolicy(HedraOptions(), latency), StandInGen(latency),
                           StandInRetrieval(latency.list_sizes))
    real = real_ex.run()
    keys: dict[str, dict[tuple[str, str], set[tuple[str, ...]]]] = {}
    for body, result in (("sim", sim), ("real", real)):
        assert isinstance(result, RunResult) and result.stopped == ""
        assert sorted(r.id for r in result.records) == sorted(r.id for r in requests)
        assert all(r.status == "completed" for r in result.records)
        keys[body] = defaultdict(set)
        for lane, name, _start, _dur, args in result.timeline:
            keys[body][lane, name].add(tuple(args))
    assert {k for k in keys["sim"] if k[0] != "gpu_gen"} == {("cpu_retrieval", "SearchBatch"), ("pcie", "CacheLoad"),
                                                             ("gpu_retrieval", "SearchBatch")}
    assert keys["sim"] == keys["real"]
    assert all(len(v) == 1 for v in keys["sim"].values())  # one set of keys per kind of item
    pcie = {body: [e[4] for e in result.timeline if e[0] == "pcie"] for body, result in (("sim", sim), ("real", real))}
    assert pcie["sim"] == pcie["real"] == [{"clusters": 64, "vectors": sum(latency.list_sizes[:64])}]


class NeverRetrieves(HedraPolicy):
    def plan_search(self, s, lane, now):
        return None


def test_a_policy_that_stalls_fails_every_request_instead_of_losing_it():
    requests = requests_for(["irg", "hyde"], 4.0, 5.0, 2, 16)
    latency = LatencyModel(PROFILE)
    result = executor.Simulation(requests, NeverRetrieves(HedraOptions(), latency), latency).run()
    assert sorted(r.id for r in result.records) == sorted(r.id for r in requests)
    assert result.stopped == "stalled"
    assert all(r.status == "failed" and r.reason.startswith("stalled") for r in result.records)
