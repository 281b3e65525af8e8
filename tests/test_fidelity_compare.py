"""The fidelity benchmark's comparison of policies on the real body (issue 16, item 4):
equal-rate loads (`--loads-of`) and the ratio tables (`benchmarks/fidelity.py`)."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import SimpleNamespace

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "fidelity.py"


def fidelity():
    spec = importlib.util.spec_from_file_location("fidelity_benchmark", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def found(**caps):
    """Capacity entries of one workflow: policy -> (real req/s, sim req/s)."""
    return [{"workflow": "irg", "policy": SimpleNamespace(spec=p), "real": SimpleNamespace(rps=r),
             "sim": SimpleNamespace(rps=s)} for p, (r, s) in caps.items()]


def cell(policy, load, rate, p50, p99, sim=(1.0, 2.0)):
    return {"workflow": "irg", "policy": policy, "load": load, "rate": rate, "real": {"p50": p50, "p99": p99},
            "sim": {"p50": sim[0], "p99": sim[1]}}


def test_equal_rates_skip_a_policy_beyond_its_own_capacity():
    caps = found(flashrag=(10.0, 9.0), hedra=(15.0, 14.0), langchain=(5.0, 5.5))
    planned, skipped = fidelity().planned_cases(caps, [0.3, 0.6], "real", "flashrag")
    assert [(f["policy"].spec, x, rate) for f, x, rate in planned] == [
        ("flashrag", 0.3, 3.0), ("flashrag", 0.6, 6.0), ("hedra", 0.3, 3.0), ("hedra", 0.6, 6.0),
        ("langchain", 0.3, 3.0)]
    assert skipped == ["irg under langchain at 0.6 x flashrag's capacity (6 req/s): above its own, 5.00 req/s"]


def test_by_default_each_policy_runs_at_its_own_capacity():
    caps = found(flashrag=(10.0, 9.0), hedra=(15.0, 14.0))
    planned, skipped = fidelity().planned_cases(caps, [0.5], "sim", None)
    assert [(f["policy"].spec, rate) for f, _, rate in planned] == [("flashrag", 4.5), ("hedra", 7.0)]
    assert skipped == []
    planned, skipped = fidelity().planned_cases(caps, [1.2], "sim", None)  # overload, asked for: replayed
    assert [(f["policy"].spec, rate) for f, _, rate in planned] == [("flashrag", 10.8), ("hedra", 16.8)]
    assert skipped == []


def test_the_tables_put_each_baseline_over_the_subject():
    caps = found(flashrag=(10.0, 8.0), hedra=(15.0, 16.0), langchain=(5.0, 4.0))
    cells = [cell("flashrag", 0.3, 3.0, 0.2, 0.9, sim=(0.3, 1.0)), cell("hedra", 0.3, 3.0, 0.1, 1.0, sim=(0.2, 0.8)),
             cell("langchain", 0.3, 3.0, 0.5, 2.0), cell("flashrag", 0.6, 6.0, 0.4, 1.2),
             cell("hedra", 0.6, 6.0, 0.2, 0.6)]
    lines = fidelity().comparison_lines(cells, caps, "hedra")
    assert lines[2] == "| irg | 15.00 (16.00) | 1.50 (2.00) | 3.00 (4.00) |"
    assert lines[-2] == "| irg | 0.3 | 3 | 2.00, 0.90 (1.50, 1.25) | 5.00, 2.00 (5.00, 2.50) |"  # real (sim)
    assert lines[-1] == "| irg | 0.6 | 6 | 2.00, 2.00 (1.00, 1.00) | - |"  # langchain not replayed at 0.6


def test_a_comparison_against_a_policy_not_run_is_refused_before_any_work(tmp_path):
    import subprocess
    import sys

    for flags, said in ((["--loads-of", "langchain"], "--loads-of: 'langchain' is not one of --policies"),
                        (["--subject", "foo"], "unknown policy 'foo'")):
        out = subprocess.run([sys.executable, str(SCRIPT), *flags, "--out", str(tmp_path / "run")],
                             capture_output=True, text=True)
        assert out.returncode == 2 and said in out.stderr
        assert not (tmp_path / "run").exists()


def test_the_capacity_table_says_whether_the_two_searches_brackets_overlap() -> None:
    def cap(low, high):
        return SimpleNamespace(rps=low, low=low, high=high, trials=(1, 2, 3))

    rows = [{"workflow": "irg", "policy": SimpleNamespace(spec=p), "sim": sim, "real": real}
            for p, sim, real in (("flashrag", cap(6.73, 7.74), cap(6.0, 6.9)),  # 12% apart, brackets meet
                                 ("hedra", cap(10.0, 11.5), cap(8.0, 9.2)),  # 25% apart, they do not
                                 ("langchain", cap(4.0, float("inf")), cap(5.0, 5.75)))]
    lines = fidelity().capacity_lines(rows)
    assert lines[2].endswith("| 6.73 [6.73, 7.74) | 6.00 [6.00, 6.90) | +12.2% | yes | 3 |")
    assert lines[3].endswith("| +25.0% | no | 3 |")
    assert "4.00 [4.00, open)" in lines[4] and lines[4].endswith("| yes | 3 |")
    same = cap(6.0, 6.9)  # the simulator's capacity standing in for the real one (--capacity-on sim)
    line = fidelity().capacity_lines([{"workflow": "irg", "policy": SimpleNamespace(spec="hedra"), "sim": same,
                                       "real": same}])[2]
    assert line.endswith("| - | - | 0 |")


def test_the_capacity_table_at_the_machines_speed() -> None:
    """With --capacity-at-speed: the simulator's capacity at a probe's speed and at the real
    search's own speed, each with its error against the real capacity."""
    def cap(rps, speed=None):
        return SimpleNamespace(rps=rps, low=rps, high=1.05 * rps, trials=(1,), run_speed=lambda: speed)

    real = cap(8.0, {"engine_step": 1.19, "search_call": 1.46})
    row = {"workflow": "irg", "policy": SimpleNamespace(spec="hedra"), "sim": cap(10.0), "real": real,
           "sim_at_probe": cap(8.4), "sim_at_run": cap(7.8)}
    lines = fidelity().capacity_lines([row, {**row, "sim_at_probe": None, "real": cap(8.0)}])
    assert "sim at probe speed" in lines[0] and lines[1].count("|") == lines[0].count("|")
    assert lines[2].endswith("| +25.0% | no | 1 | 8.40 (+5.0%) | 1.19x, 1.46x | 7.80 (-2.5%) |")
    assert lines[3].endswith("| - | -, - | 7.80 (-2.5%) |")  # no probe; a real body that did not time its items
