"""A profile at another speed (`Profile.at_speed`): every engine step and CPU search call priced
that many times its price, the rest of the profile as it was."""

from __future__ import annotations

import pytest

from hwmodel.latency import LatencyModel
from hwmodel.profile import DEFAULT_CPU_PROFILE, load_profile
from ragraph.graph import Request
from ragraph.policies import parse_policy
from ragraph.workflows import WorkflowRegistry
from runs.run import simulate
from traces.generate import TraceConfig, generate_trace
from traces.schema import TraceRequest, to_request

PROFILE = load_profile(DEFAULT_CPU_PROFILE)
STEPS = [  # (running, prefill, decode, computed, context, admitted, admitted tokens, prefill attention)
    (1, 0, 1, 1, 300, 0, 0, 0), (12, 0, 12, 12, 9000, 0, 0, 0), (5, 480, 5, 484, 2500, 2, 480, 120000)]
SEARCHES = [{"queries": 1, "new_queries": 1, "clusters": 8, "vectors": 6000, "embed_tokens": 40,
             "embed_max_tokens": 40, "embed_text_tokens": 30},
            {"queries": 6, "new_queries": 0, "clusters": 96, "vectors": 70000, "embed_tokens": 0,
             "embed_max_tokens": 0, "embed_text_tokens": 0}]


def requests(workflow: str, rate: float) -> list[Request]:
    registry = WorkflowRegistry()
    cfg = TraceConfig((workflow,), rate, 6.0, seed=2, nlist=PROFILE.index.nlist, nprobe=16)
    return [to_request(TraceRequest.model_validate(r), registry) for r in generate_trace(cfg, registry)]


def test_every_item_costs_the_factor_times_its_price():
    base, slow = LatencyModel(PROFILE), LatencyModel(PROFILE.at_speed(1.25, 0.8))
    for r, p, d, c, ctx, a, at, pa in STEPS:
        args = {"running": r, "prefill_tokens": p, "decode_tokens": d, "computed_tokens": c, "context_tokens": ctx,
                "admitted": a, "admitted_tokens": at, "prefill_attention": pa}
        assert slow.engine_step_s(args) == pytest.approx(1.25 * base.engine_step_s(args), rel=1e-12)
        assert slow.engine_cold_s(0.1) == pytest.approx(1.25 * base.engine_cold_s(0.1), rel=1e-12)
    for args in SEARCHES:
        for idle in (0.0, 0.05):
            assert slow.search_call_s(args, idle) == pytest.approx(0.8 * base.search_call_s(args, idle), rel=1e-12)
    fast = PROFILE.at_speed(0.5, 0.5)  # what is no cost stays: the shape constants, dispatch, contention
    assert (fast.gen_step.kernel_sizes, fast.gen_step.refill_tokens, fast.gen_step.cold_tau_s, fast.dispatch,
            fast.contention) == (PROFILE.gen_step.kernel_sizes, PROFILE.gen_step.refill_tokens,
                                 PROFILE.gen_step.cold_tau_s, PROFILE.dispatch, PROFILE.contention)


def test_the_simulator_at_speed_one_is_the_profile_and_slower_is_later():
    reqs, choice = requests("one-shot", 12.0), parse_policy("hedra")
    same = simulate(reqs, choice, PROFILE.at_speed(1.0, 1.0), timeline=False).result.records
    assert same == simulate(reqs, choice, PROFILE, timeline=False).result.records
    slow = simulate(reqs, choice, PROFILE.at_speed(1.5, 1.5), timeline=False).result.records
    assert sum(r.latency_s for r in slow) > 1.3 * sum(r.latency_s for r in same)
