"""The GPU index cache's heat table: the numpy one (`sim.heat_numpy`) gives the pure one's results
bit for bit (`ragraph.techniques.heat`), call by call and over whole runs."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hwmodel.latency import LatencyModel
from hwmodel.profile import load_profile
from ragraph.policies import make_policy
from ragraph.techniques.heat import PureHeatTable, Ranked
from ragraph.workflows import WorkflowRegistry
from sim.executor import Simulation
from sim.heat_numpy import NumpyHeatTable
from traces.generate import TraceConfig, generate_trace
from traces.schema import TraceRequest, to_request

PROFILE = load_profile()
LATENCY = LatencyModel(PROFILE)
SIZES = [0, 1, 1, 2, 5, 5, 9, 40, 40, 3]  # equal sizes: equal heats, ties broken by id; an empty list


def same(a: Ranked, b: Ranked) -> None:
    assert a.order == b.order and a.cum_bytes == b.cum_bytes
    assert [x.hex() for x in a.cum_heat] == [x.hex() for x in b.cum_heat]  # bit for bit
    assert a.total_heat.hex() == b.total_heat.hex()
    assert all(type(x) is int for x in [*b.order, *b.cum_bytes])  # Python ints back to the core
    assert all(type(x) is float for x in [*b.cum_heat, b.total_heat])


calls = st.lists(st.one_of(
    st.tuples(st.just("tally"), st.lists(st.lists(st.integers(0, len(SIZES) - 1), max_size=4).map(tuple),
                                         max_size=6), st.sampled_from([1.0, 1 / 0.9, 1 / 0.81, 3.0, 1e-3])),
    st.tuples(st.just("ranked"), st.one_of(st.none(), st.integers(0, 600)), st.booleans()),
    st.tuples(st.just("rescale"), st.sampled_from([1 / 0.9, 7.0, 2.0**50])),
    st.tuples(st.just("clear")),
), max_size=25)


@settings(max_examples=200, deadline=None)
@given(calls)
def test_numpy_table_gives_the_pure_tables_results(script) -> None:
    cluster_bytes = [n * 8 for n in SIZES]
    pure, fast = PureHeatTable(SIZES, cluster_bytes), NumpyHeatTable(SIZES, cluster_bytes)
    for call in script:
        if call[0] == "tally":
            assert pure.tally(call[1], call[2]) == fast.tally(call[1], call[2])
        elif call[0] == "ranked":
            same(pure.ranked(call[1], call[2]), fast.ranked(call[1], call[2]))
        elif call[0] == "rescale":
            pure.rescale(call[1])
            fast.rescale(call[1])
        else:
            pure.clear()
            fast.clear()
    same(pure.ranked(None, True), fast.ranked(None, True))


def test_ranking_is_by_heat_then_id_and_sums_in_that_order() -> None:
    for table in (PureHeatTable(SIZES, SIZES), NumpyHeatTable(SIZES, SIZES)):
        table.tally([(9, 4, 5, 0), (3,)], 1.0)  # heats 3, 5, 5, 2 (and list 0: empty, no heat)
        r = table.ranked(12, True)
        assert r.order == [4, 5]  # 4 and 5 tie: lower id first; with 9 they would pass 12 bytes
        assert r.cum_bytes == [0, 5, 10]  # the prefixes within the limit
        assert r.cum_heat == [0.0, 5.0, 10.0] and r.total_heat == 15.0
        assert table.ranked(None, False).order == [4, 5, 9, 3]
        table.tally([(2, 2), (1,)], 1.0)  # 2 ties with 3 (heat 2), above 1 (heat 1) ...
        assert table.ranked(None, False).order[-3:] == [2, 3, 1]
        table.tally([(1,)], 1.0)  # ... then 1 joins the tie: it goes first
        assert table.ranked(None, False).order[-3:] == [1, 2, 3]


def requests(workflow: str, rate: float, duration: float, seed: int):
    registry = WorkflowRegistry()
    cfg = TraceConfig((workflow,), rate, duration, seed=seed, nlist=PROFILE.index.nlist)
    return [to_request(TraceRequest.model_validate(row), registry) for row in generate_trace(cfg, registry)]


@pytest.mark.parametrize(("workflow", "rate", "policy"), [
    ("irg", 8.0, "hedra:refresh_every=5"),
    ("one-shot", 12.0, "hedra:gpu_cache_clusters=200,refresh_every=3"),
    ("multistep", 6.0, "hedra:gpu_cache_decay=0,refresh_every=4"),
])
def test_runs_are_the_same_with_either_table(workflow, rate, policy, monkeypatch) -> None:
    reqs = requests(workflow, rate, 10.0, 4)
    results = []
    for numpy_heat in (True, False):
        monkeypatch.setattr(Simulation, "numpy_heat", numpy_heat)
        results.append(Simulation(reqs, make_policy(policy, LATENCY), LATENCY).run())
    fast, pure = results
    assert fast.records == pure.records and fast.timeline == pure.timeline
    assert fast.techniques == pure.techniques and fast.techniques["gpu_cache"]["refreshes"] > 0
    assert not math.isnan(fast.sim_s) and fast.sim_s == pure.sim_s
