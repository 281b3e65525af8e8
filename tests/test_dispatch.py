"""The scheduler core's time between an engine step and the next (`Profile.dispatch`): fitted
from a replay's back-to-back gaps as a line in the step's sequences, and charged so by the simulator."""

from __future__ import annotations

from itertools import pairwise

import numpy as np
import pytest

from calibration.calibrate import fit_dispatch
from calibration.profiler import dispatch_gaps
from hwmodel.latency import LatencyModel
from hwmodel.profile import load_profile
from ragraph.policies import make_policy
from ragraph.workflows import WorkflowRegistry
from sim.executor import Simulation
from traces.generate import TraceConfig, generate_trace
from traces.schema import TraceRequest, to_request

PROFILE = load_profile()


def test_the_fit_recovers_a_gap_that_grows_with_the_steps_sequences():
    rng = np.random.default_rng(0)
    running = rng.integers(1, 48, 4000)
    timeline, t = [], 0.0
    for n in running:  # back-to-back steps; the gap after each: 14 us + 1.5 us a sequence, +-2 us of noise
        timeline.append(("gpu_gen", "GenStep", t, 2e-3, {"running": int(n)}))
        t += 2e-3 + 14e-6 + 1.5e-6 * n + rng.uniform(-2e-6, 2e-6)
    search = [("cpu_retrieval", "SearchBatch", 10.0 + i * 1e-2, 9e-3, {"queries": 1}) for i in range(9)]
    fit = fit_dispatch(dispatch_gaps(timeline + search))
    assert fit["gpu_gen_s"] == pytest.approx(14e-6, abs=0.3e-6)
    assert fit["gpu_gen_seq_s"] == pytest.approx(1.5e-6, rel=0.02)
    assert fit["cpu_retrieval_s"] == pytest.approx(1e-3, rel=1e-6)  # the gap between calls


def test_a_profile_without_the_term_keeps_its_flat_gap():
    old = PROFILE.dispatch.model_copy(update={"gpu_gen_s": 12e-6})
    assert old.gpu_gen_seq_s == 0.0 and old.gen_dispatch_s(40) == 12e-6


def test_the_simulator_charges_the_gap_after_each_step_by_its_sequences():
    profile = PROFILE.model_copy(update={"dispatch": PROFILE.dispatch.model_copy(update={
        "gpu_gen_s": 20e-6, "gpu_gen_seq_s": 5e-6})})
    latency = LatencyModel(profile)
    registry = WorkflowRegistry()
    cfg = TraceConfig(("gen-only",), 20.0, 4.0, seed=1, nlist=profile.index.nlist, nprobe=64)
    reqs = [to_request(TraceRequest.model_validate(r), registry) for r in generate_trace(cfg, registry)]
    result = Simulation(reqs, make_policy("flashrag", latency), latency).run()
    steps = sorted((s, d, a["running"]) for lane, name, s, d, a in result.timeline if name == "GenStep")
    gaps = [(s1 - (s0 + d0), n0) for (s0, d0, n0), (s1, _, _) in pairwise(steps) if s1 - (s0 + d0) < 1e-3]
    assert len(gaps) > 100 and len({n for _, n in gaps}) > 5  # back-to-back steps of many batch sizes
    # never less than the core's work after the step; a longer gap is the lane waiting for an arrival
    assert all(gap >= 20e-6 + 5e-6 * n - 1e-9 for gap, n in gaps)
    assert sum(gap == pytest.approx(20e-6 + 5e-6 * n, abs=1e-9) for gap, n in gaps) >= 0.99 * len(gaps)
