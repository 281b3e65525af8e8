"""Lane contention (`Profile.contention`): the arithmetic, the fit that measures it, and the
simulator charging it where an engine step and a CPU search call overlap."""

from __future__ import annotations

import math

import numpy as np
import pytest

from calibration.contention import FULL_OVERLAP, NO_OVERLAP, fit_contention, overlap_share, replay_items
from hwmodel.latency import LatencyModel, contended_s
from hwmodel.profile import DEFAULT_CPU_PROFILE, load_profile
from ragraph.policies import make_policy
from ragraph.workflows import WorkflowRegistry
from sim.executor import Simulation
from traces.generate import TraceConfig, generate_trace
from traces.schema import TraceRequest, to_request


def test_an_item_is_slowed_over_the_overlap_only():
    assert contended_s(2.0, 0.0, 0.25) == 2.0  # the other lane idle
    assert contended_s(2.0, 5.0, 0.25) == 2.5  # wholly beside it: 1.25x
    # beside it for 1 s (0.8 s of work done), then alone for the remaining 1.2 s of work
    assert contended_s(2.0, 1.0, 0.25) == pytest.approx(2.2)
    assert contended_s(2.0, 5.0, 0.0) == 2.0


def test_overlap_share_of_sorted_busy_intervals():
    busy = [(0.0, 1.0), (2.0, 3.0)]
    assert overlap_share(0.5, 2.5, busy) == pytest.approx(0.5)
    assert overlap_share(3.0, 4.0, busy) == 0.0
    assert overlap_share(2.2, 2.4, busy) == pytest.approx(1.0)


def _rows(kind: str, slowdown: float, rng: np.random.Generator) -> list[dict]:
    """Replay items of three kinds, their price off by a kind's own bias (the grid's error),
    slowed by `slowdown` over the share that overlapped the other lane."""
    rows = []
    for cell, bias in (("decode", 1.05), ("admit", 1.4), ("prefill", 0.9)):
        for i in range(120):
            overlap = (0.0, 1.0, 0.5)[i % 3]  # alone, wholly beside, half beside
            priced = 1e-3 * (1 + i % 7)
            seconds = priced * bias * (1 + slowdown * overlap) * (1 + 0.03 * rng.standard_normal())
            rows.append({"kind": kind, "cell": cell, "overlap": overlap, "priced_s": priced, "seconds": seconds})
    return rows


def test_the_fit_recovers_each_lanes_slowdown_whatever_the_grids_bias_per_kind():
    rng = np.random.default_rng(5)
    fit = fit_contention(_rows("replay_step", 0.2, rng) + _rows("replay_search", 0.0, rng)
                         + [{"kind": "engine_step", "cell": "a", "seconds": 1.0}])
    assert fit["gen_step_slowdown"] == pytest.approx(0.2, abs=0.02)
    assert fit["cpu_search_slowdown"] == pytest.approx(0.0, abs=0.02)  # never below 0
    assert set(fit["gen_step_slowdown_kinds"]) == {"decode", "admit", "prefill"}
    assert fit_contention([{"kind": "engine_step", "cell": "a", "seconds": 1.0}]) is None
    assert FULL_OVERLAP > 0.5 > NO_OVERLAP  # the half-overlapped items count on neither side


def test_a_kind_seen_beside_the_other_lane_a_few_times_does_not_outvote_the_rest():
    rng = np.random.default_rng(6)
    rows = [r for r in _rows("replay_step", 0.05, rng) if r["cell"] != "prefill"]
    # admissions: alone as often as before, beside only 6 times, and then faster than alone
    rows = [r for r in rows if r["cell"] == "decode" or r["overlap"] != 1.0]
    rows += [{"kind": "replay_step", "cell": "admit", "overlap": 1.0, "priced_s": 1e-3, "seconds": 1e-3 * 1.4 * 0.9}
             for _ in range(6)]
    fit = fit_contention(rows)
    assert fit["gen_step_slowdown_kinds"]["admit"]["ratio"] < 1 < fit["gen_step_slowdown_kinds"]["decode"]["ratio"]
    assert fit["gen_step_slowdown"] == pytest.approx(0.05 * 40 / 46 - 0.1 * 6 / 46, abs=0.01)  # weighted, not 0


def test_replay_items_price_each_item_and_measure_its_overlap():
    latency = LatencyModel(_with(load_profile(DEFAULT_CPU_PROFILE), gen_step_slowdown=0.0))  # (a provisional profile)
    step = {"prefill_tokens": 0, "running": 8, "computed_tokens": 8, "context_tokens": 800, "admitted": 0,
            "admitted_tokens": 0, "prefill_attention": 0}
    search = {"queries": 1, "new_queries": 0, "clusters": 8, "vectors": 400, "embed_tokens": 0,
              "embed_max_tokens": 0, "speculative": 0}
    timeline = [("cpu_retrieval", "SearchBatch", 0.0, 0.5, search), ("gpu_gen", "GenStep", 0.1, 0.01, step),
                ("gpu_gen", "GenStep", 0.49, 0.02, step), ("gpu_gen", "GenStep", 0.6, 0.01, step)]
    rows = replay_items(timeline, latency)
    assert [(r["kind"], r["cell"]) for r in rows] == [("replay_search", "scan")] + [("replay_step", "decode")] * 3
    assert [r["overlap"] for r in rows] == pytest.approx([0.04, 1.0, 0.5, 0.0])
    assert rows[3]["priced_s"] == pytest.approx(latency.engine_step_s(step) + latency.engine_cold_s(0.6 - 0.51))
    assert rows[3]["seconds"] == 0.01


def _with(profile, **contention):
    return profile.model_copy(update={"contention": profile.contention.model_copy(update=contention)})


def _warm(profile):
    """`profile` without the terms a step owes the steps before it (cold engine, refill after a
    prefill, kernels of a size not run lately: a step's price is then its own work's) and with no
    contention (what the tests add)."""
    profile = profile.model_copy(update={"gen_step": profile.gen_step.model_copy(update={
        "cold_s": 0.0, "refill_s": 0.0, "kernel_s": 0.0})})
    return _with(profile, gen_step_slowdown=0.0, cpu_search_slowdown=0.0)


def _requests(profile, workflow: str = "one-shot", rate: float = 60.0):
    registry = WorkflowRegistry()
    cfg = TraceConfig((workflow,), rate, 4.0, seed=2, nlist=profile.index.nlist, nprobe=32)
    return [to_request(TraceRequest.model_validate(row), registry) for row in generate_trace(cfg, registry)]


def _run(profile, reqs, fold: bool = True, policy: str = "hedra"):
    latency = LatencyModel(profile)
    sim = Simulation(reqs, make_policy(policy, latency), latency)
    sim.fold_steps = fold
    return sim.run()


def test_engine_steps_beside_a_search_call_take_longer_and_the_others_do_not():
    base = _warm(load_profile(DEFAULT_CPU_PROFILE))
    slowed = _with(base, gen_step_slowdown=0.3)
    reqs = _requests(base)
    plain, contended = _run(base, reqs), _run(slowed, reqs)
    searches = sorted((s, s + d) for lane, _n, s, d, _a in contended.timeline if lane == "cpu_retrieval")
    steps = [(s, d, a) for lane, _n, s, d, a in contended.timeline if lane == "gpu_gen"]
    alone = LatencyModel(slowed)
    beside = free = 0
    for start, seconds, args in steps:
        price = alone.engine_step_s(args)
        overlap = sum(max(0.0, min(start + seconds, b) - max(start, a)) for a, b in searches)
        if overlap == 0.0:
            assert seconds == pytest.approx(price, rel=1e-12)
            free += 1
        elif overlap >= seconds * (1 - 1e-9) and not any(a > start for a, _ in searches if a < start + seconds):
            assert seconds == pytest.approx(price * 1.3, rel=1e-9)  # started beside a call that outlasted it
            beside += 1
    assert beside > 20 and free > 20
    assert contended.lane_busy_s["gpu_gen"] > plain.lane_busy_s["gpu_gen"]
    assert _run(_with(base, gen_step_slowdown=0.0, cpu_search_slowdown=0.0), reqs).records == plain.records


@pytest.mark.parametrize("policy", ["hedra", "flashrag"])
def test_folded_steps_give_the_step_by_step_run_with_contention(policy):
    profile = _with(load_profile(DEFAULT_CPU_PROFILE), gen_step_slowdown=0.25, cpu_search_slowdown=0.1)
    reqs = _requests(profile, "irg", 8.0)
    folded, plain = _run(profile, reqs, True, policy), _run(profile, reqs, False, policy)
    assert folded.records == plain.records and folded.timeline == plain.timeline


def test_validation_reprices_a_real_step_beside_a_search_call_as_the_simulator_would():
    from calibration.validate import retimed_items

    latency = LatencyModel(_with(load_profile(DEFAULT_CPU_PROFILE), gen_step_slowdown=0.5))
    step = {"prefill_tokens": 0, "running": 8, "computed_tokens": 8, "context_tokens": 800, "admitted": 0,
            "admitted_tokens": 0, "prefill_attention": 0}  # (8 sequences: a size compiled at the warm-up)
    search = {"queries": 1, "new_queries": 1, "clusters": 8, "vectors": 400, "embed_tokens": 12,
              "embed_max_tokens": 12, "speculative": 0}
    timeline = [("cpu_retrieval", "SearchBatch", 0.0, 0.5, search), ("gpu_gen", "GenStep", 0.1, 0.01, step),
                ("gpu_gen", "GenStep", 0.6, 0.01, step)]
    beside, alone = [r["predicted_s"] for r in retimed_items(timeline, latency) if r["kind"] == "engine_step"]
    price = latency.engine_step_s(step)
    assert alone == pytest.approx(price + latency.engine_cold_s(0.6 - 0.11))  # after an idle spell: cold
    assert beside == pytest.approx(1.5 * (price + latency.engine_cold_s(math.inf)))  # the first step: cold
