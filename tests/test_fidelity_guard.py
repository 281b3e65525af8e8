"""CI's fidelity guard (`benchmarks/fidelity.py --max-p50-error`, `--max-speed-drift`)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "fidelity.py"


def regressions():
    spec = importlib.util.spec_from_file_location("fidelity_benchmark", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.regressions


def cell(load, p50_error, at_speed_error, speed):
    return {"workflow": "irg", "policy": "flashrag", "load": load, "p50_error": p50_error,
            "at_run_speed": {"p50_error": at_speed_error}, "run_speed": {"engine_step": speed, "search_call": 1.0}}


def test_as_measured_the_machines_drift_fails_the_guard():
    """CI's failing run: 42% off as measured on a run at 1.17x its price, 28% at its own speed."""
    guard = regressions()
    cells = [cell(0.3, -0.419, -0.283, 1.168), cell(0.7, 0.294, 0.08, 0.834)]
    assert guard(cells, {0.3: 0.35, 0.7: 10}) == [
        "irg under flashrag at load 0.3: |P50 error| 41.9% exceeds 35%"]
    assert guard(cells, {0.3: 0.35, 0.7: 10}, max_speed_drift=0.6) == []
    fast_drift = [cell(0.3, -0.437, 0.045, 1.639)]  # the second run: its engine steps at 1.64x their price
    assert len(guard(fast_drift, {0.3: 0.35}, max_speed_drift=0.6)) == 1
    assert guard(fast_drift, {0.3: 0.35}, max_speed_drift=1.5) == []


def test_at_run_speed_a_cost_model_off_by_2x_still_fails():
    """Taking the run's speed out would hide a uniformly wrong model; the speed bound catches it."""
    guard = regressions()
    found = guard([cell(0.3, -0.5, 0.01, 2.0)], {0.3: 0.35}, max_speed_drift=0.6)
    assert len(found) == 1 and "engine_step items took 2.00x their price, beyond the 0.62-1.60x" in found[0]
    assert guard([cell(0.3, 0.0, 0.36, 1.0)], {0.3: 0.35}, max_speed_drift=0.6) == [
        "irg under flashrag at load 0.3: |P50 error| at the run's own speed 36.0% exceeds 35%"]
