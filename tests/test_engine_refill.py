"""What an engine step pays for the steps before it and for its context beyond the caches: the
steps after a prefill refill what it pushed out of the caches (a fading cost), a step of a size
whose kernels are not compiled compiles them, and KV context beyond `context_cached_tokens` is
read from memory. The simulator charges them, validation's repricing charges them alike, and
the calibration's fit finds them (tests/test_fit.py)."""

from __future__ import annotations

import math

import pytest

from calibration.validate import retimed_items
from hwmodel.latency import REFILL_STEPS, AfterPrefill, KernelSizes, LatencyModel
from hwmodel.profile import DEFAULT_CPU_PROFILE, load_profile
from ragraph.graph import Generate, chain
from ragraph.policies import make_policy
from sim.executor import Simulation

SHIPPED = load_profile(DEFAULT_CPU_PROFILE)


def with_terms(**terms: float):
    base = {"refill_s": 0.0, "context_spill_token_s": 0.0, "cold_s": 0.0, "kernel_s": 0.0, "kernel_sizes": 0}
    return SHIPPED.model_copy(update={"gen_step": SHIPPED.gen_step.model_copy(update={**base, **terms})})


def engine_steps(profile, reqs, fold: bool = True):
    latency = LatencyModel(profile)
    sim = Simulation(reqs, make_policy("flashrag", latency), latency)
    sim.fold_steps = fold
    run = sim.run()
    return [e for e in run.timeline if e[0] == "gpu_gen"], run.timeline, latency


def test_the_steps_after_a_prefill_pay_its_refill_fading_and_validation_prices_them_alike():
    reqs = [chain(f"r{i}", i * 1.0, "g", [Generate(300, 20)]) for i in range(3)]  # alone, 1 s apart
    refill = with_terms(refill_s=2e-3, refill_tokens=512.0, refill_decay=0.5)
    plain, _, _ = engine_steps(with_terms(), reqs)
    steps, timeline, latency = engine_steps(refill, reqs)
    assert len(plain) == len(steps) == 3 * 20
    extra = [s[3] - p[3] for p, s in zip(plain, steps, strict=True)]
    first = 2e-3 * (1 - math.exp(-300 / 512))
    for i, e in enumerate(extra):
        k = i % 20  # steps since the request's prefill (its first step)
        assert e == pytest.approx(first * 0.5 ** (k - 1) if 1 <= k <= REFILL_STEPS else 0.0, abs=1e-12), i
    # step by step, the same times to the bit
    assert [s[3] for s in engine_steps(refill, reqs, fold=False)[0]] == [s[3] for s in steps]
    # validation prices the simulator's own steps as it ran them
    priced = [r for r in retimed_items(timeline, latency) if r["kind"] == "engine_step"]
    assert [r["predicted_s"] for r in priced] == pytest.approx([r["measured_s"] for r in priced], rel=1e-12)


def test_after_prefill_counts_steps_since_the_last_prefill():
    after = AfterPrefill()
    assert after.step(0) == (0, 0)  # no prefill yet
    assert after.step(128) == (0, 0)  # a step that prefills pays none itself
    assert [after.step(0) for _ in range(3)] == [(128, 1), (128, 2), (128, 3)]
    assert after.step(64) == (0, 0) and after.step(0) == (64, 1)
    for _ in range(REFILL_STEPS):
        after.step(0)
    assert not after.pending and after.step(0) == (0, 0)
    latency = LatencyModel(with_terms(refill_s=1e-3, refill_tokens=100.0, refill_decay=0.25))
    assert latency.refill_s(0, 0) == 0.0
    assert latency.refill_s(100, 2) == pytest.approx(1e-3 * (1 - math.exp(-1)) * 0.25)


def test_context_beyond_the_cached_tokens_is_priced_at_the_spill_rate():
    plain, spill = LatencyModel(with_terms()), LatencyModel(with_terms(context_spill_token_s=1e-7,
                                                                       context_cached_tokens=4000))
    assert spill.gen_step_s(0, 8, 4000) == plain.gen_step_s(0, 8, 4000)  # all of it in the caches
    assert spill.gen_step_s(0, 8, 10_000) - plain.gen_step_s(0, 8, 10_000) == pytest.approx(6000 * 1e-7)
    fixed, per_token = spill.decode_step_terms(8)  # what the folded decode steps start from
    assert fixed + per_token * 10_000 == plain.gen_step_s(0, 8, 10_000)


def test_kernel_sizes_keep_the_most_recent_distinct_sizes():
    kernels = KernelSizes(3, warmed=2048)  # warmed largest first: 3, 2, 1 remain, 1 the most recent
    assert [kernels.cached(n) for n in (1, 2, 3, 4)] == [True, True, True, False]
    assert kernels.run(500) and not kernels.run(500)  # compiled once, then kept
    assert not kernels.cached(3)  # the least recent went
    assert not kernels.run(2) and kernels.run(3)  # 2 was used again, so 1 goes next
    assert not kernels.cached(1) and not any(KernelSizes(0).run(n) for n in (1, 7, 7))  # no cache: no misses


def test_a_step_of_a_size_not_run_lately_pays_for_its_kernels_and_validation_prices_it_alike():
    """One request at a time, each prompt of a new length: every prefill compiles, the decode steps
    (one sequence, size 1: compiled since the warm-up) never do; the same prompt again does not."""
    reqs = [chain(f"r{i}", i * 1.0, "g", [Generate(300 + (i % 3), 5)]) for i in range(6)]  # 300, 301, 302 twice
    kernels = with_terms(kernel_s=3e-3, kernel_sizes=64)
    plain, _, _ = engine_steps(with_terms(), reqs)
    steps, timeline, latency = engine_steps(kernels, reqs)
    extra = [round(s[3] - p[3], 12) for p, s in zip(plain, steps, strict=True)]
    assert extra == [3e-3, 0, 0, 0, 0] * 3 + [0.0] * 15  # the first three prompts' prefills only
    assert [s[3] for s in engine_steps(kernels, reqs, fold=False)[0]] == [s[3] for s in steps]
    priced = [r for r in retimed_items(timeline, latency) if r["kind"] == "engine_step"]
    assert [r["predicted_s"] for r in priced] == pytest.approx([r["measured_s"] for r in priced], rel=1e-12)
    assert [r["computed_tokens"] for r in priced[:5]] == [300, 1, 1, 1, 1]
