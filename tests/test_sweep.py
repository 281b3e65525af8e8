"""`hedra sweep` and `hedra demo`: spec validation, resuming, runners agreeing, outputs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from test_cli import ROOT, assert_usage_error, hedra

from experiments.cell import ROW_COLUMNS, ROW_PREFIXES, ROW_SCHEMA, cell_id
from experiments.expand import expand
from experiments.sweep import (
    CellStore,
    SweepInterrupted,
    inline_runner,
    pool_runner,
    ray_runner,
    run_cells,
    run_sweep,
    sweep_table,
)
from experiments.sweepspec import SpecError, SweepSpec, load_spec

MEASURED = ["sim_wall_s"]  # the one column that may differ between two runs of the same cells
SMALL = """
name = "small"
duration_s = 20
seeds = [0, 1]
policies = ["flashrag", "hedra", "hedra:no-spec-gen"]
plots = ["latency-vs-rate", "cdf", "utilisation", "speedup"]
workflows = ["irg", "hyde"]
rates = [2, 4]
"""  # 2 workflows x 2 rates x 2 seeds x 3 policies = 24 cells


def write_spec(tmp_path: Path, text: str, name: str = "spec.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def same_table(a: pd.DataFrame, b: pd.DataFrame) -> None:
    """Equal in every value but the measured wall times (a CDF read back from Parquet is an array)."""
    def plain(t: pd.DataFrame) -> pd.DataFrame:
        return t.drop(columns=MEASURED).assign(latency_cdf_s=t["latency_cdf_s"].map(lambda q: tuple(map(float, q))))
    pd.testing.assert_frame_equal(plain(a), plain(b), check_exact=True)


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> tuple[SweepSpec, list, pd.DataFrame]:
    """The small spec, its cells and its table from one uninterrupted in-process run."""
    path = write_spec(tmp_path_factory.mktemp("spec"), SMALL)
    spec = load_spec(path)
    cells = expand(spec, path)
    table = run_sweep(spec, cells, tmp_path_factory.mktemp("sweep") / "out", inline_runner)
    return spec, cells, table


# --- validation -----------------------------------------------------------------------------------

BAD_SPECS = [
    ('policies = ["flashrag", "hedra", "hedra:chunk=0"]\nworkflows = ["irg"]\nrates = [2]',
     "field policies[2]: policy 'hedra': option chunk:"),
    ('policies = ["nope"]\nworkflows = ["irg"]\nrates = [2]', "field policies[0]: unknown policy 'nope'"),
    ('policies = ["hedra"]\nworkflows = ["irg"]\nrates = [2]\ncolour = "red"', "field colour: unknown key"),
    ('policies = ["hedra"]\nworkflows = ["irg"]\nrates = [-1]', "field rates[0]:"),
    ('policies = ["hedra"]\nworkflows = ["nope"]\nrates = [2]', "field workflows[0].workflow: unknown workflow"),
    ('policies = ["hedra"]\n[[workload]]\nworkflow = "irg"\nrates = [2]\nnprobe = "x"', "field workload[0].nprobe:"),
    ('policies = ["hedra"]\n[[workload]]\nworkflow = "irg"', "field workload[0]: a workflow needs rates"),
    ('policies = ["hedra"]\n[[workload]]\ntrace = "missing.jsonl"', "field workload[0].trace:"),
    ('policies = ["hedra"]\nprofiles = ["nope"]\nworkflows = ["irg"]\nrates = [2]', "field profiles[0]: nope:"),
    ('policies = ["hedra"]\nworkflows = ["irg"]\nrates = [2]\nplots = ["pie"]', "field plots[0]:"),
    ('policies = ["hedra"]\nworkflows = ["irg"]\nrates = [2]\nbaseline = "flashrag"', "field baseline:"),
    ('policies = [{ name = "hedra", grid = { chunk = [4, 0] } }]\nworkflows = ["irg"]\nrates = [2]',
     "field policies[0]: policy 'hedra': option chunk:"),
    ('policies = [{ name = "hedra", grids = {} }]\nworkflows = ["irg"]\nrates = [2]', "field policies[0].grids:"),
    ('policies = ["hedra"]', "field (top level): no workload"),
    ('policies = ["hedra"]\nkv_policies = ["lru", "lfu"]\nworkflows = ["irg"]\nrates = [2]',
     "field kv_policies[1]: unknown KV policy 'lfu'"),
    ("policies = [", "not valid TOML"),
]


@pytest.mark.parametrize(("text", "expected"), BAD_SPECS)
def test_spec_errors_are_one_line_naming_file_and_field(tmp_path, text, expected):
    spec = write_spec(tmp_path, text)
    out = tmp_path / "out"
    line = assert_usage_error(hedra("sweep", spec, "--out", out), out)
    assert line.startswith(f"hedra: error: {spec}: "), line
    assert expected in line, line


def test_spec_errors_in_process(tmp_path):
    spec = write_spec(tmp_path, BAD_SPECS[0][0])
    with pytest.raises(SpecError, match=r"spec.toml: field policies\[2\]: policy 'hedra': option chunk"):
        expand(load_spec(spec), spec)


W = '[[workload]]\nworkflow = "irg"\nrates = [2]\n'
NEW_KEY_ERRORS = [  # the keys the figures and the ablations brought, checked in process
    ('policies = ["hedra"]\nworkflow_files = ["nope.toml"]\n' + W, "field workflow_files[0]: "),
    (f'policies = ["hedra"]\n{W}tags = {{ rate = 1 }}', "field workload[0].tags: tag 'rate'"),
    (f'policies = ["hedra"]\n{W}tags = {{ "Panel" = 1 }}', "field workload[0].tags: tag 'Panel'"),
    (f'policies = ["hedra"]\n{W}requests = 10\nduration_s = 5', "field workload[0]: give requests or duration_s"),
    (f'policies = ["hedra"]\n{W}requests = 0', "field workload[0].requests:"),
    (f'policies = ["hedra"]\n{W}policies = ["nope"]', "field workload[0].policies[0]: unknown policy 'nope'"),
    (f'policies = ["hedra"]\n{W}policies = [3]', "field workload[0].policies[0]: expected a policy spec"),
    (W, "field (top level): no policies"),
    ('policies = [{ name = "hedra", label = "x", grid = { chunk = [4] } }]\n' + W,
     "field policies[0]: a label names one policy"),
    ('policies = ["hedra"]\n[[workload]]\nworkflow = "irg"\nrates = [999999]\nduration_s = 999999',
     "field workload[0].rates[0]: rate x duration asks for over"),
    ('policies = ["hedra"]\n[[workload]]\ntrace = "t.jsonl"\nrequests = 3', "field workload[0]: a trace file"),
]


@pytest.mark.parametrize(("text", "expected"), NEW_KEY_ERRORS)
def test_new_keys_are_checked_at_the_edge(tmp_path, text, expected):
    spec = write_spec(tmp_path, text)
    with pytest.raises(SpecError) as info:
        expand(load_spec(spec), spec)
    assert str(info.value).startswith(f"{spec}: field ") and expected in str(info.value), str(info.value)
    assert "\n" not in str(info.value)


PANELS = """
seeds = [3]
baseline = "flashrag"
plots = []
[[workload]]
workflow = "one-shot"
rates = [8]
duration_s = 5
nprobe = 128
tags = { panel = "a", n = 128 }
policies = ["flashrag", { name = "hedra", label = "HD" }]
[[workload]]
workflow = "one-shot"
rates = [8]
duration_s = 5
nprobe = 512
tags = { panel = "b", n = 512 }
policies = ["flashrag", "hedra", "hedra:no-reorder"]
[[workload]]
workflow = "one-shot"
rates = [8]
duration_s = 5
nprobe = 512
tags = { panel = "c", n = 512 }
policies = ["hedra"]
"""


def test_workload_policies_tags_labels_and_speedups_within_a_workload(tmp_path):
    path = write_spec(tmp_path, PANELS)
    spec = load_spec(path)
    cells = expand(spec, path)
    assert [c.policy.spec for c in cells] == ["flashrag", "hedra", "flashrag", "hedra", "hedra:no-reorder", "hedra"]
    assert cell_id(cells[3]) == cell_id(cells[5])  # tags are presentation: the same simulation
    ran: list = []

    def counting(todo, options):
        ran.extend(todo)
        yield from inline_runner(todo, options)

    table = run_sweep(spec, cells, tmp_path / "out", counting)
    assert len(ran) == 5 and len(table) == 6  # run once, shown in both panels
    assert list(table.columns[:3]) == ["panel", "n", "workflow"]
    assert list(table["label"]) == ["flashrag", "HD", "flashrag", "hedra", "hedra:no-reorder", "hedra"]
    assert list(table["nprobe"]) == [128, 128, 512, 512, 512, 512]
    hd128, hd512 = table.iloc[1], table.iloc[3]
    assert hd128["p50_x_vs_flashrag"] == table.iloc[0]["p50_s"] / hd128["p50_s"]  # against its own nprobe's
    assert hd512["p50_x_vs_flashrag"] == table.iloc[2]["p50_s"] / hd512["p50_s"]
    assert pd.isna(table.iloc[5]["p50_x_vs_flashrag"])  # panel c has no flashrag
    for col in table.columns:  # the one row schema: every column is a known one, a prefixed one or a tag
        assert col in ROW_COLUMNS or col.startswith(ROW_PREFIXES) or col in ("panel", "n"), col


def test_a_stored_cell_of_an_older_row_schema_is_run_again(tmp_path, small):
    _, cells, _ = small
    store = CellStore(tmp_path)
    store.put(cells[0], {"x": 1})
    path = tmp_path / "cells" / f"{cell_id(cells[0])}.json"
    stored = json.loads(path.read_text())
    stored["key"]["row_schema"] = ROW_SCHEMA - 1  # as an older Hedra wrote it under the same file name
    path.write_text(json.dumps(stored))
    assert store.get(cells[0]) is None


def test_missing_spec_and_bad_workers(tmp_path):
    out = tmp_path / "out"
    assert "cannot read the sweep spec" in assert_usage_error(hedra("sweep", tmp_path / "no.toml", "--out", out), out)
    spec = write_spec(tmp_path, SMALL)
    assert "--workers 0" in assert_usage_error(hedra("sweep", spec, "--out", out, "--workers", "0"), out)


def test_policy_grid_expands_to_specs(tmp_path):
    spec = load_spec(write_spec(tmp_path, 'policies = ["flashrag", { name = "hedra:no-reorder", grid = '
                                          '{ chunk = [4, 16], fill = ["round_robin"] } }]\n'
                                          'workflows = ["irg"]\nrates = [2]'))
    assert spec.policy_specs() == ["flashrag", "hedra:no-reorder,chunk=4,fill=round_robin",
                                   "hedra:no-reorder,chunk=16,fill=round_robin"]


# --- running --------------------------------------------------------------------------------------

def test_table_has_a_row_per_cell_with_parameters_options_and_metrics(small):
    _, cells, table = small
    assert len(table) == len(cells) == 24
    assert list(table["policy"][:3]) == ["flashrag", "hedra", "hedra:no-spec-gen"]
    for col in ("workflow", "rate", "policy", "profile", "seed", "opt_spec_gen", "mean_s", "p50_s", "p95_s", "p99_s",
                "throughput_rps", "completed", "failed", "util_gpu_gen", "util_cpu_retrieval", "sim_wall_s",
                "p50_x_vs_flashrag"):
        assert col in table, col
    assert (table["completed"] + table["failed"] == table["requests"]).all()
    assert set(table.loc[table["policy"] == "hedra:no-spec-gen", "opt_spec_gen"]) == {False}
    assert set(table.loc[table["policy"] == "hedra", "opt_spec_gen"]) == {True}
    assert (table.loc[table["policy"] == "flashrag", "p50_x_vs_flashrag"] == 1.0).all()
    assert (table["p50_s"] > 0).all()


def test_rows_carry_quality_and_kv_cache_of_their_summary(tmp_path, small):
    """The one row schema: a cell's quality (the F1 of the configurations its policy chose, from
    the trace's quality table, named) and KV-cache columns equal its run's summary.json's."""
    _, _, table = small
    assert table["f1_mean"].isna().all() and table["quality_source"].isna().all()  # chains choose nothing
    assert (table["kv_total_blocks"] > 0).all() and (table["kv_peak_blocks"] <= table["kv_total_blocks"]).all()
    assert set(table["kv_policy"]) == {"lru"} and table["kv_hit_rate"].between(0, 1).all()
    path = write_spec(tmp_path, 'duration_s = 15\npolicies = ["fixed:synthesis=stuff,chunks=5", "ragserve"]\n'
                                'workflows = ["metis"]\nrates = [2]\nruns = true\n')
    spec = load_spec(path)
    table = run_sweep(spec, expand(spec, path), tmp_path / "out", inline_runner)
    for row in table.to_dict("records"):
        (folder,) = [d for d in (tmp_path / "out" / "runs").iterdir()
                     if json.loads((d / "summary.json").read_text())["policy"] == row["policy"]]
        summary = json.loads((folder / "summary.json").read_text())
        assert row["f1_mean"] == summary["quality"]["f1_mean"] > 0
        assert row["quality_source"] == summary["quality"]["source"] == "model:metis-curves-v1"
        assert row["kv_preemptions"] == summary["kv_cache"]["preemptions"]
        assert row["kv_peak_blocks"] == summary["kv_peak_blocks"] > 0
    assert table["f1_mean"].nunique() == 2  # the policies chose differently
    for col in table.columns:
        assert col in ROW_COLUMNS or col.startswith(ROW_PREFIXES), col


def test_sweep_outputs_and_a_rerun_reuses_every_cell(tmp_path):
    spec = write_spec(tmp_path, SMALL)
    out = tmp_path / "out"
    proc = hedra("sweep", spec, "--out", out, "--workers", "2", timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "24 cells" in proc.stdout
    names = {p.name for p in out.iterdir()}
    assert {"sweep.parquet", "sweep.json", "cells"} <= names
    for plot in ("latency-vs-rate", "cdf", "utilisation", "speedup"):
        assert {f"{plot}-irg.png", f"{plot}-hyde.png"} <= names, plot
    assert len(list((out / "cells").glob("*.json"))) == 24
    assert not (out / "runs").exists()  # no run folders, no timelines unless asked
    first = pd.read_parquet(out / "sweep.parquet")
    stamps = {p.name: p.stat().st_mtime_ns for p in (out / "cells").iterdir()}
    proc = hedra("sweep", spec, "--out", out, "--workers", "2", timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert stamps == {p.name: p.stat().st_mtime_ns for p in (out / "cells").iterdir()}  # nothing re-run
    pd.testing.assert_frame_equal(first, pd.read_parquet(out / "sweep.parquet"))


def test_sweep_refuses_a_folder_hedra_did_not_write(tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    proc = hedra("sweep", write_spec(tmp_path, SMALL), "--out", out)
    assert proc.returncode == 2 and "not a hedra output folder" in proc.stderr
    assert [p.name for p in out.iterdir()] == ["notes.txt"]


def interrupted_after(n: int):
    """A runner that runs `n` cells, then is interrupted as by Ctrl-C."""
    def run(cells, options):
        for i, done in enumerate(inline_runner(cells, options)):
            if i == n:
                raise KeyboardInterrupt
            yield done
    return run


def test_an_interrupted_sweep_resumes_to_the_same_table(tmp_path, small):
    spec, cells, table = small
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(SweepInterrupted) as info:
        run_cells(cells, out, interrupted_after(7))
    assert (info.value.done, info.value.total) == (7, 24)
    assert len(list((out / "cells").glob("*.json"))) == 7
    ran: list = []

    def counting(todo, options):
        ran.extend(todo)
        yield from pool_runner(2)(todo, options)

    resumed = run_sweep(spec, cells, out, counting)
    assert len(ran) == 24 - 7
    same_table(resumed, table)
    assert not [p for p in (out / "cells").iterdir() if p.name.startswith(".")]  # no half-written cell


def test_ctrl_c_keeps_finished_cells_and_a_rerun_finishes(tmp_path):
    text = SMALL.replace("duration_s = 20", "duration_s = 40").replace("rates = [2, 4]", "rates = [4, 8]")
    spec = write_spec(tmp_path, text)  # 24 cells of up to 320 requests: seconds
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "experiments.cli", "sweep", str(spec), "--out", str(out), "--workers", "2"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not list((out / "cells").glob("*.json")) and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    kept = list((out / "cells").glob("*.json"))
    assert proc.returncode == 130, err
    assert "interrupted:" in err and "run the same command again to resume" in err
    assert 1 <= len(kept) < 24
    assert not (out / "sweep.parquet").exists()
    proc = hedra("sweep", spec, "--out", out, "--workers", "1", timeout=300)
    assert proc.returncode == 0, proc.stderr
    resumed = pd.read_parquet(out / "sweep.parquet")
    assert len(resumed) == 24
    path = spec
    fresh = sweep_table(run_cells(expand(load_spec(path), path), tmp_path / "fresh", inline_runner), "flashrag")
    same_table(resumed, fresh)


def test_local_pool_and_ray_give_identical_tables(tmp_path, small):
    ray = pytest.importorskip("ray")
    spec, cells, table = small
    pooled = run_sweep(spec, cells, tmp_path / "pool", pool_runner(2))
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        on_ray = run_sweep(spec, cells, tmp_path / "ray", ray_runner("local", 2))
    finally:
        ray.shutdown()
    same_table(pooled, table)
    same_table(on_ray, table)


def test_a_stored_cell_of_another_key_is_not_reused(tmp_path, small):
    _, cells, _ = small
    store = CellStore(tmp_path)
    store.put(cells[0], {"x": 1})
    assert store.get(cells[0]) == {"x": 1}
    assert store.get(cells[1]) is None


def test_trace_file_workload(tmp_path):
    trace = tmp_path / "t.jsonl"
    assert hedra("trace", "gen", "--workflow", "irg", "--rate", 3, "--duration", 10, "--out", trace).returncode == 0
    path = write_spec(tmp_path, 'policies = ["flashrag", "hedra"]\nruns = true\n[[workload]]\ntrace = "t.jsonl"')
    spec = load_spec(path)
    table = run_sweep(spec, expand(spec, path), tmp_path / "out", inline_runner)
    assert list(table["workflow"]) == ["t", "t"] and set(table["trace"]) == {str(trace.resolve())}
    runs = list((tmp_path / "out" / "runs").iterdir())
    assert len(runs) == 2 and all((r / "requests.parquet").is_file() for r in runs)
    assert not any((r / "timeline.json").exists() for r in runs)
    # a trace file that changed is new input: its cells are not the stored ones
    before = {cell_id(c) for c in expand(spec, path)}
    assert hedra("trace", "gen", "--workflow", "irg", "--rate", 3, "--duration", 10, "--out", trace,
                 "--seed", 9).returncode == 0
    assert before.isdisjoint(cell_id(c) for c in expand(spec, path))


# --- the demo ---------------------------------------------------------------------------------------

def test_demo_spec_is_valid_and_holds_the_ablations():
    from experiments.demo import DEMO_SPEC

    spec = load_spec(DEMO_SPEC)
    assert spec.policy_specs() == ["langchain", "flashrag", "hedra", "hedra:no-wavefront", "hedra:substages=off",
                                   "hedra:no-reorder", "hedra:no-spec-gen", "hedra:no-spec-retr", "hedra:no-gpu-cache"]
    assert len(expand(spec, DEMO_SPEC)) == 9 * 32


def test_demo_end_to_end(tmp_path):
    out = tmp_path / "demo"
    proc = hedra("demo", "--out", out, "--duration", 10, timeout=600)
    assert proc.returncode == 0, proc.stderr
    table = pd.read_csv(out / "table.csv")
    assert len(table) == len(table.drop_duplicates(["workflow", "rate", "policy"])) == 9 * 32
    for col in ("p50_x_vs_langchain", "p99_x_vs_langchain", "p50_x_vs_flashrag", "p99_x_vs_flashrag"):
        assert col in table
    # each row's own speedup: the baselines' rows differ from hedra's, and a baseline over itself is 1
    fr = table[table["policy"] == "flashrag"]
    assert (fr["p50_x_vs_flashrag"] == 1).all()
    hd = table[table["policy"] == "hedra"].set_index(["workflow", "rate"])
    assert (hd["p50_x_vs_flashrag"] != fr.set_index(["workflow", "rate"])["p50_x_vs_flashrag"]).any()
    for wf in ("one-shot", "hyde", "recomp", "multistep", "irg"):
        assert (out / f"latency-vs-rate-{wf}.png").is_file()
    assert (out / "summary.json").is_file() and (out / "sweep.parquet").is_file()
    assert "ablations" in proc.stdout and "no-wavefront" in proc.stdout


def test_bare_ray_flag_means_a_local_instance():
    from experiments.cli import bare_ray

    assert bare_ray(["sweep", "s.toml", "--ray"]) == ["sweep", "s.toml", "--ray", "local"]
    assert bare_ray(["sweep", "--ray", "--out", "o"]) == ["sweep", "--ray", "local", "--out", "o"]
    assert bare_ray(["sweep", "--ray", "auto"]) == ["sweep", "--ray", "auto"]


def test_sweep_cli_on_a_local_ray_instance(tmp_path, small):
    pytest.importorskip("ray")
    spec = write_spec(tmp_path, SMALL)
    out = tmp_path / "out"
    proc = hedra("sweep", spec, "--out", out, "--workers", "2", "--ray", timeout=600)
    assert proc.returncode == 0, proc.stderr
    same_table(pd.read_parquet(out / "sweep.parquet"), small[2])


KV_AXIS = """
duration_s = 20
policies = ["flashrag", "hedra"]
kv_policies = ["lru", "kvflow"]
[[workload]]
workflow = "multistep"
rates = [4]
"""


def test_kv_policies_are_an_axis_of_cells_and_a_column_of_rows(tmp_path):
    path = write_spec(tmp_path, KV_AXIS)
    spec = load_spec(path)
    cells = expand(spec, path)
    assert [(c.kv_policy.name, c.policy.spec) for c in cells] == [
        ("lru", "flashrag"), ("lru", "hedra"), ("kvflow", "flashrag"), ("kvflow", "hedra")]
    assert len({cell_id(c) for c in cells}) == 4  # the KV policy is part of a cell's identity
    table = run_sweep(spec, cells, tmp_path / "out", inline_runner)
    assert list(table["kv_policy"]) == ["lru", "lru", "kvflow", "kvflow"]
    assert list(table.columns).index("kv_policy") < list(table.columns).index("policy")
    assert table["kv_hit_rate"].notna().all()
    # speedups over the baseline policy compare cells of one KV policy
    assert table.iloc[3]["p50_x_vs_flashrag"] == table.iloc[2]["p50_s"] / table.iloc[3]["p50_s"]
    assert table.iloc[1]["p50_x_vs_flashrag"] == table.iloc[0]["p50_s"] / table.iloc[1]["p50_s"]
