"""The capacity search: the bisection on a known threshold, a known capacity on the simulator,
and `hedra capacity` end to end."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import pytest

from calibration.capacity import Capacity, Trial, min_duration_s, search, sim_capacity, sim_capacity_at_speed
from calibration.workload import Template, generated_requests
from hwmodel.profile import DEFAULT_CPU_PROFILE, load_profile
from ragraph.graph import Op
from ragraph.policies import parse_policy
from ragraph.workflows import Step, WorkflowRegistry, WorkflowSpec
from runs.run import simulate
from tests.test_cli import assert_usage_error, hedra

RETRIEVAL_ONLY = WorkflowSpec(name="retrieval-only", head=(Step(op=Op.RETRIEVE),))


def threshold(at: float):
    def measure(rate: float, screen: bool) -> list[Trial]:
        return [Trial(rate, 10, 10, 1.0 if rate <= at else 20.0, rate <= at, 0.0, 100.0)]
    return measure


@pytest.mark.parametrize("guess", [0.3, 37.0, 500.0])
def test_search_brackets_a_known_threshold_within_the_tolerance(guess):
    found = search(threshold(37.3), guess, tolerance=0.02)
    assert found.low <= 37.3 < found.high <= 1.02 * found.low
    assert found.rps == found.low and not found.note
    assert all(t.sustained == (t.rate <= 37.3) for t in found.trials)


def test_search_says_when_the_bracket_is_open():
    assert search(threshold(1e9), 1.0, max_rps=100).note.startswith("every rate passed")
    none = search(threshold(0.0), 1.0, min_rps=0.1)
    assert none.rps == 0 and none.note.startswith("no rate passed")
    assert json.dumps(none.to_json())  # inf bounds become null


def single_queue(prof):
    """Requests of one search each (retrieval alone), arrivals evenly spaced, and langchain (one
    call at a time): a single FIFO lane, whose capacity is its service rate."""
    registry = WorkflowRegistry([RETRIEVAL_ONLY])

    def make(n: int):
        reqs = generated_requests("retrieval-only", n, prof.index.nlist, seed=3, nprobe=32, registry=registry)
        return [replace(r, arrival_s=float(i)) for i, r in enumerate(reqs)]

    return make, parse_policy("langchain")


def test_sim_capacity_finds_the_service_rate_of_a_single_queue():
    """One search per request, one call at a time (langchain, retrieval alone), arrivals evenly
    spaced: the known capacity is the lane's service rate, measured as the throughput of a burst
    (every request at once). The search's stated tolerance: at its default duration for the SLO,
    the rate it finds is within a factor (1 + tolerance) of that."""
    prof = load_profile(DEFAULT_CPU_PROFILE)
    make, choice = single_queue(prof)
    burst = make(1000)
    known = len(burst) / simulate([replace(r, arrival_s=0.0) for r in burst], choice, prof,
                                  timeline=False).result.sim_s
    tol, slo = 0.05, 0.5
    found = sim_capacity(Template(make), choice, prof, slo_p95_s=slo, tolerance=tol)
    assert found.duration_s == pytest.approx(min_duration_s(slo, tol))
    assert known / (1 + tol) <= found.rps <= known * (1 + tol)
    assert found.high <= (1 + tol) * found.low
    full = [t for t in found.trials if t.duration_s == found.duration_s]
    assert found.rps == max(t.rate for t in full if t.sustained)
    assert all(t.p95_s > slo for t in found.trials if not t.sustained)
    screened = [t for t in found.trials if t.duration_s < found.duration_s]  # bracketing: quarter-length runs
    assert screened and all(t.duration_s == pytest.approx(found.duration_s / 4) for t in screened)


def test_capacity_command_writes_capacity_json(tmp_path):
    out = tmp_path / "cap"
    proc = hedra("capacity", "--workflow", "one-shot", "--policy", "flashrag", "--body", "sim", "--profile",
                 DEFAULT_CPU_PROFILE, "--slo-p95", 1, "--tolerance", 0.2, "--out", out)
    assert proc.returncode == 0, proc.stderr
    data = json.loads((out / "capacity.json").read_text())
    assert data["policy"] == "flashrag" and data["body"] == "sim" and data["workflow"] == "one-shot"
    assert 0 < data["low"] == data["rps"] < data["high"] <= 1.2 * data["low"]
    assert data["trials"] and all(math.isfinite(t["rate"]) for t in data["trials"])
    assert "req/s sustained" in proc.stdout


@pytest.mark.parametrize("args", [("--body", "tpu"), ("--slo-p95", -1), ("--tolerance", 0),
                                  ("--policy", "nosuch"), ("--workflow", "nosuch")])
def test_capacity_command_refuses_bad_options(tmp_path, args):
    base = {"--workflow": "one-shot", "--policy": "hedra", "--body": "sim"}
    base.update({args[0]: args[1]})
    flat = [x for kv in base.items() for x in kv]
    assert_usage_error(hedra("capacity", *flat, "--out", tmp_path / "o"), tmp_path / "o")


def test_run_speed_is_the_median_over_the_full_length_runs_and_none_on_the_simulator():
    def trial(rate, duration, speed):
        return Trial(rate, 10, 10, 1.0, True, 0.0, duration, speed)

    runs = (trial(1.0, 25.0, {"engine_step": 3.0, "search_call": 3.0}),  # a screening run: left out
            trial(1.0, 100.0, {"engine_step": 1.1, "search_call": None}),
            trial(1.2, 100.0, {"engine_step": 1.3, "search_call": 0.9}),
            trial(1.4, 100.0, {"engine_step": 1.2, "search_call": 1.1}))
    found = Capacity(1.4, 1.4, math.inf, 10.0, 0.05, 100.0, runs)
    assert found.run_speed() == {"engine_step": pytest.approx(1.2), "search_call": pytest.approx(1.0)}
    assert json.loads(json.dumps(found.to_json()))["run_speed"] == found.run_speed()
    untimed = Capacity(1.4, 1.4, math.inf, 10.0, 0.05, 100.0, tuple(trial(1.0, 100.0, None) for _ in range(2)))
    assert untimed.run_speed() is None


def test_the_simulator_at_a_real_searchs_speed_finds_the_capacity_of_a_machine_that_slow():
    """A real search whose search calls ran 2x their price: the simulator at that speed finds
    half the single lane's capacity (within the tolerance); a search with no timed items, none."""
    prof = load_profile(DEFAULT_CPU_PROFILE)
    make, choice = single_queue(prof)
    tol, slo = 0.05, 0.5
    base = sim_capacity(Template(make), choice, prof, slo_p95_s=slo, tolerance=tol)
    slow = Trial(base.rps, 10, 10, 1.0, True, 0.0, base.duration_s, {"engine_step": 1.0, "search_call": 2.0})
    real = replace(base, trials=(slow,))
    half = sim_capacity_at_speed(Template(make), choice, prof, real.run_speed(), guess=real.rps, slo_p95_s=slo,
                                 tolerance=tol)
    assert base.rps / 2 / (1 + tol) ** 2 <= half.rps <= base.rps / 2 * (1 + tol) ** 2
    assert sim_capacity_at_speed(Template(make), choice, prof, base.run_speed(), slo_p95_s=slo, tolerance=tol) is None
