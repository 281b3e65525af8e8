"""A sweep's `[capacity]`: each cell's sustainable rate found on the simulator (a known capacity
within the search's tolerance), rows run at fractions of each policy's own capacity (`loads`),
the searches stored and reused, and the spec checked at the edge."""

from __future__ import annotations

from dataclasses import replace

import pandas as pd
import pytest
from test_sweep import write_spec

import experiments.capacity_grid as capacity_grid
from experiments.capacity_grid import task_of
from experiments.expand import expand
from experiments.sweep import inline_runner, run_sweep
from experiments.sweepspec import SpecError, load_spec
from hwmodel.profile import DEFAULT_CPU_PROFILE, load_profile
from ragraph.policies import parse_policy
from ragraph.workflows import WorkflowRegistry
from runs.run import simulate

WORKFLOWS = """
[[workflow]]
name = "retrieval-only"
head = [{ op = "retrieve" }]
"""

# One search per request, one call at a time (langchain), near-even arrivals (gamma, cv 0.05): the
# capacity is the retrieval lane's service rate.
KNOWN = f"""
seeds = [3]
profiles = ["{DEFAULT_CPU_PROFILE}"]
workflow_files = ["workflows.toml"]
policies = ["langchain"]
plots = []
duration_s = 20
capacity = {{ slo_p95 = 0.5, tolerance = 0.05 }}

[[workload]]
workflow = "retrieval-only"
arrival = "gamma"
cv = 0.05
nprobe = 32
loads = [0.5]
rates = [50]
"""

LOADS = f"""
seeds = [0]
profiles = ["{DEFAULT_CPU_PROFILE}"]
policies = ["langchain", "hedra"]  # capacities far apart on any CPU profile
baseline = "langchain"
plots = []
duration_s = 20
[capacity]
slo_p95 = 2
tolerance = 0.3

[[workload]]
workflow = "irg"
nprobe = 32
loads = [0.4, 0.8]
"""


def test_a_known_capacity_is_found_within_the_tolerance_and_loads_run_at_a_fraction_of_it(tmp_path):
    (tmp_path / "workflows.toml").write_text(WORKFLOWS)
    path = write_spec(tmp_path, KNOWN)
    spec = load_spec(path)
    cells = expand(spec, path)
    assert [(c.rate, c.load) for c in cells] == [(50.0, None), (0.0, 0.5)]  # the load's rate is found at run time

    # the known capacity: the lane's service rate, the throughput of a burst of the same requests
    prof = load_profile(DEFAULT_CPU_PROFILE)
    task = task_of(cells[1], spec.capacity)
    burst = [replace(r, arrival_s=0.0) for r in capacity_grid._requests_at_one_per_second(task, prof.index.nlist, 1000)]
    known = len(burst) / simulate(burst, parse_policy("langchain"), prof, timeline=False).result.sim_s

    table = run_sweep(spec, cells, tmp_path / "out", inline_runner)
    tol = spec.capacity.tolerance
    rates, loads = table.iloc[0], table.iloc[1]
    assert known / (1 + tol) <= rates["capacity_rps"] <= known * (1 + tol)
    assert rates["capacity_low"] == rates["capacity_rps"] < rates["capacity_high"] <= (1 + tol) * rates["capacity_low"]
    assert pd.isna(rates["load"]) and rates["rate"] == 50.0  # a rate cell: the capacity beside it
    assert loads["load"] == 0.5 and loads["capacity_rps"] == rates["capacity_rps"]  # one search for both
    assert loads["rate"] == pytest.approx(0.5 * loads["capacity_rps"], rel=1e-5)
    assert loads["p95_s"] <= 0.5  # half the capacity is sustained
    assert len(list((tmp_path / "out" / "capacity").glob("*.json"))) == 1


def test_each_policy_runs_at_its_own_capacity_speedups_match_by_load_and_searches_are_reused(tmp_path, monkeypatch):
    path = write_spec(tmp_path, LOADS)
    spec = load_spec(path)
    cells = expand(spec, path)
    table = run_sweep(spec, cells, tmp_path / "out", inline_runner)
    assert list(table["policy"]) == ["langchain", "hedra", "langchain", "hedra"]
    assert list(table["load"]) == [0.4, 0.4, 0.8, 0.8]
    for _, row in table.iterrows():
        assert row["rate"] == pytest.approx(row["load"] * row["capacity_rps"], rel=1e-5)
        assert row["capacity_low"] <= row["capacity_rps"] < row["capacity_high"] <= 1.3 * row["capacity_low"]
    caps = table.groupby("policy")["capacity_rps"].unique()
    assert all(len(v) == 1 for v in caps)  # one capacity per policy, whatever the load
    assert caps["langchain"][0] != caps["hedra"][0]  # so the two policies ran at different rates
    assert table["p50_x_vs_langchain"].notna().all()  # matched by load, not by rate
    base, hedra = table.iloc[2], table.iloc[3]
    assert hedra["p50_x_vs_langchain"] == base["p50_s"] / hedra["p50_s"]

    def no_search(task):
        raise AssertionError("a stored capacity was searched again")

    monkeypatch.setattr(capacity_grid, "find_capacity", no_search)
    again = run_sweep(spec, cells, tmp_path / "out", inline_runner)
    pd.testing.assert_series_equal(again["capacity_rps"], table["capacity_rps"])


def test_a_sweep_without_capacity_has_no_capacity_columns(tmp_path):
    path = write_spec(tmp_path, 'policies = ["hedra"]\nworkflows = ["one-shot"]\nrates = [2]\nduration_s = 5\n'
                                'plots = []')
    table = run_sweep(load_spec(path), expand(load_spec(path), path), tmp_path / "out", inline_runner)
    assert not {"capacity_rps", "load"} & set(table.columns)


@pytest.mark.parametrize(("text", "expected"), [
    ('policies = ["hedra"]\n[[workload]]\nworkflow = "irg"\nloads = [0.5]', "add a [capacity] table"),
    ('policies = ["hedra"]\ncapacity = { slo_p95 = 10 }\n[[workload]]\nworkflow = "irg"\nloads = [0]',
     "field workload[0].loads[0]:"),
    ('policies = ["hedra"]\ncapacity = { tolerance = 0 }\nworkflows = ["irg"]\nrates = [2]',
     "field capacity.tolerance:"),
    ('policies = ["hedra"]\ncapacity = { slo = 10 }\nworkflows = ["irg"]\nrates = [2]',
     "field capacity.slo: unknown key"),
    ('policies = ["hedra"]\ncapacity = {}\n[[workload]]\nworkflow = "irg"\nloads = [0.5]\nrequests = 9\n'
     'rates = [1]', "not with offline or requests"),
    ('policies = ["hedra"]\ncapacity = {}\n[[workload]]\ntrace = "t.jsonl"\nloads = [0.5]', "leave rates, loads"),
])
def test_capacity_spec_errors_name_the_field(tmp_path, text, expected):
    with pytest.raises(SpecError) as err:
        load_spec(write_spec(tmp_path, text))
    assert expected in str(err.value) and "\n" not in str(err.value)


def test_trace_file_rows_get_empty_capacity_columns(tmp_path):
    from traces.generate import TraceConfig, generate_trace, write_jsonl

    write_jsonl(generate_trace(TraceConfig(("one-shot",), 2.0, 4.0, seed=1), WorkflowRegistry()), tmp_path / "t.jsonl")
    path = write_spec(tmp_path, 'policies = ["hedra"]\nplots = []\ncapacity = { slo_p95 = 5, tolerance = 0.5 }\n'
                                '[[workload]]\ntrace = "t.jsonl"')
    table = run_sweep(load_spec(path), expand(load_spec(path), path), tmp_path / "out", inline_runner)
    assert table[["load", "capacity_rps", "capacity_low", "capacity_high"]].isna().all().all()
    assert not (tmp_path / "out" / "capacity").exists()


def test_a_capacity_search_is_one_per_kv_policy_and_runs_under_it(tmp_path, monkeypatch):
    text = LOADS.replace('baseline = "langchain"', 'baseline = "langchain"\nkv_policies = ["lru", "kvflow"]')
    path = write_spec(tmp_path, text)
    spec = load_spec(path)
    cells = expand(spec, path)
    tasks = {(c.kv_policy.spec, c.policy.spec): task_of(c, spec.capacity) for c in cells}
    assert len({t.id() for t in tasks.values()}) == 4  # (2 KV policies) x (2 policies)
    assert tasks[("kvflow", "hedra")].kv_policy.spec == "kvflow"
    assert "kv_policy" not in tasks[("lru", "hedra")].key()  # lru's searches keep their stored identity
    seen = []
    monkeypatch.setattr("calibration.capacity.simulate",
                        lambda *a, **kw: seen.append(kw["kv_policy"]) or simulate(*a, **kw))
    capacity_grid.find_capacity(replace(tasks[("kvflow", "hedra")], tolerance=0.9))
    assert seen and all(kv.spec == "kvflow" for kv in seen)
