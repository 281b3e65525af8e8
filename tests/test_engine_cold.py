"""The cold engine: a step after the engine sat idle costs more; the fit finds the term on
admissions after idle spells and both the simulator and validation's repricing charge it."""

from __future__ import annotations

import numpy as np
import pytest
from test_fit import GEN, SEARCH, _grid_rows, _search_rows

from calibration.calibrate import fit_rows
from hwmodel.latency import LatencyModel
from hwmodel.profile import DEFAULT_CPU_PROFILE, load_profile
from ragraph.graph import Generate, chain
from ragraph.policies import make_policy
from sim.executor import Simulation


def test_fit_recovers_the_cold_engine_term():
    rng = np.random.default_rng(7)
    rows = _grid_rows(GEN, rng, 0.0) + _search_rows(SEARCH, rng, 0.0)
    cold_s, tau = 1.8e-3, 0.005
    for idle in (0.0, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2):
        x = {"prefill_tokens": 200, "computed_tokens": 200, "seqs": 1, "context_tokens": 0, "admitted": 1,
             "admitted_tokens": 200, "prefill_attention": 200 * 100}
        warm = (GEN["base_s"] + GEN["prefill_token_s"] * 200 + GEN["seq_s"] + GEN["admit_s"]
                + GEN["admit_token_s"] * 200 + GEN["prefill_attention_s"] * x["prefill_attention"])
        rows.append({"kind": "engine_cold", "cell": f"idle{idle}", "idle_s": idle, **x, "decode_tokens": 1,
                     "seconds": warm + cold_s * -np.expm1(-idle / tau)})
    fit = fit_rows(rows).engine_cold
    assert fit["cold_tau_s"] == tau and fit["cold_s"] == pytest.approx(cold_s, rel=1e-6)
    assert fit["train_median_abs_rel_error"] < 1e-9 < fit["warm_median_abs_rel_error"]


def test_a_step_after_an_idle_spell_pays_the_cold_term_and_back_to_back_steps_do_not():
    shipped = load_profile(DEFAULT_CPU_PROFILE)
    base, cold = (shipped.model_copy(update={"gen_step": shipped.gen_step.model_copy(update={"cold_s": c,
                                                                                      "cold_tau_s": 0.01})})
                  for c in (0.0, 2e-3))
    reqs = [chain(f"r{i}", i * 1.0, "g", [Generate(200, 20)]) for i in range(4)]  # alone, 1 s apart

    def steps(profile):
        latency = LatencyModel(profile)
        run = Simulation(reqs, make_policy("flashrag", latency), latency).run()
        return [(s, d) for lane, _n, s, d, _a in run.timeline if lane == "gpu_gen"]

    warm, cooled = steps(base), steps(cold)
    assert len(warm) == len(cooled) == 4 * 20
    extra = [c[1] - w[1] for w, c in zip(warm, cooled, strict=True)]
    assert extra[0::20] == pytest.approx([2e-3] * 4, rel=1e-3)  # each admission after ~1 s idle: the whole term
    assert all(e == 0.0 for i, e in enumerate(extra) if i % 20)  # the decode steps that follow: none
    assert LatencyModel(cold).engine_cold_s(0.0) == 0.0
    assert LatencyModel(cold).engine_cold_s(0.01) == pytest.approx(2e-3 * (1 - np.exp(-1)))
