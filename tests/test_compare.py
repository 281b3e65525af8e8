"""`hedra compare`: runs of both bodies (a real run recorded by the real CPU body, and the
simulator on the same trace), sweep folders, speedups against a named baseline, bad input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
from test_cli import assert_usage_error, hedra

from hwmodel.profile import DEFAULT_CPU_PROFILE, load_profile
from ragraph.policies import parse_policy
from runs.outputs import write_run
from runs.run import simulate
from traces.schema import load_trace

DATA = Path(__file__).parent / "data" / "real-run"  # see its README.md: how it was recorded
PLOTS = ("latency-vs-rate", "cdf", "utilisation", "speedup")


@pytest.fixture
def runs(tmp_path) -> dict[str, Path]:
    """The recorded real run, the simulator on its trace (the CPU rig's profile) under hedra and
    flashrag, and a copy of the trace."""
    real = tmp_path / "real"
    shutil.copytree(DATA / "run-real", real)
    trace = tmp_path / "trace.jsonl"
    shutil.copy(DATA / "trace.jsonl", trace)
    prof = load_profile(DEFAULT_CPU_PROFILE)
    reqs = load_trace(trace)
    out = {"real": real, "trace": trace}
    for policy in ("hedra", "flashrag"):
        run = simulate(reqs, parse_policy(policy), prof, seed=0, timeline=False, meta={"trace": "trace.jsonl"})
        out[policy] = write_run(tmp_path / f"sim-{policy}", run.result.records, run.summary, None)
    return out


def summary(folder: Path) -> dict:
    return json.loads((folder / "summary.json").read_text())


def test_compare_a_real_run_and_the_simulator_by_body(tmp_path, runs):
    out = tmp_path / "cmp"
    proc = hedra("compare", runs["hedra"], runs["real"], "--by", "body", "--baseline", "real", "--out", out)
    assert proc.returncode == 0, proc.stderr
    table = pd.read_csv(out / "compare.csv")
    assert list(table["body"]) == ["sim", "real"]
    assert list(table["policy"]) == ["hedra", "hedra"]
    assert table["rate"].nunique() == 1  # the same trace: the same measured arrival rate
    sim, real = summary(runs["hedra"]), summary(runs["real"])
    assert table.loc[0, "p50_s"] == pytest.approx(sim["latency_s"]["p50"], rel=1e-3)
    assert table.loc[1, "p50_s"] == pytest.approx(real["latency_s"]["p50"], rel=1e-3)
    assert table.loc[0, "p50_x_vs_real"] == pytest.approx(real["latency_s"]["p50"] / sim["latency_s"]["p50"],
                                                          rel=1e-3)
    assert table.loc[1, "p50_x_vs_real"] == pytest.approx(1.0)
    assert table.loc[1, "util_gpu_gen"] == pytest.approx(real["lane_utilization"]["gpu_gen"], abs=1e-4)
    for plot in PLOTS:
        assert (out / f"{plot}-irg.png").stat().st_size > 1000, plot
    assert "real" in proc.stdout and "sim" in proc.stdout and "P50 x vs real" in proc.stdout


def test_compare_by_policy_matches_runs_of_the_same_workload(tmp_path, runs):
    out = tmp_path / "cmp"
    proc = hedra("compare", runs["flashrag"], runs["hedra"], runs["real"], "--out", out)  # baseline: the first
    assert proc.returncode == 0, proc.stderr
    table = pd.read_csv(out / "compare.csv")
    fr, hd = summary(runs["flashrag"])["latency_s"]["p50"], summary(runs["hedra"])["latency_s"]["p50"]
    assert table.loc[1, "p50_x_vs_flashrag"] == pytest.approx(fr / hd, rel=1e-3)
    # a real run is matched against a real baseline only
    assert pd.isna(table.loc[2, "p50_x_vs_flashrag"])


def test_compare_reads_sweep_folders(tmp_path, runs):
    spec = tmp_path / "spec.toml"
    spec.write_text('duration_s = 10\npolicies = ["flashrag", "hedra"]\nworkflows = ["irg"]\nrates = [2, 4]\n')
    assert hedra("sweep", spec, "--out", tmp_path / "sweep", "--workers", 1).returncode == 0
    out = tmp_path / "cmp"
    proc = hedra("compare", tmp_path / "sweep", runs["hedra"], "--baseline", "flashrag", "--out", out)
    assert proc.returncode == 0, proc.stderr
    table = pd.read_csv(out / "compare.csv")
    assert len(table) == 5
    cells = table[table["run"].str.startswith("sweep#")]
    assert (cells.loc[cells["policy"] == "flashrag", "p50_x_vs_flashrag"] == 1).all()
    assert (cells.loc[cells["policy"] == "hedra", "p50_x_vs_flashrag"] > 1).all()
    assert (out / "latency-vs-rate-irg.png").is_file()


def test_compare_shows_the_simulators_configuration_f1_beside_latency(tmp_path, runs):
    """A simulated RAGServe run and a sweep of metis cells: their configurations' F1 (named by its
    quality table) beside latency; a chain has none (empty, never 0); KV columns from the summary."""
    from traces.generate import TraceConfig, generate_trace, write_jsonl

    trace = tmp_path / "metis.jsonl"
    write_jsonl(generate_trace(TraceConfig(("metis",), rate=2.0, duration_s=10.0, seed=1)), trace)
    run = simulate(load_trace(trace), parse_policy("ragserve"), load_profile(), seed=0, timeline=False)
    folder = write_run(tmp_path / "sim-ragserve", run.result.records, run.summary, None)
    spec = tmp_path / "spec.toml"
    spec.write_text('duration_s = 10\npolicies = ["fixed:synthesis=stuff,chunks=10"]\nworkflows = ["metis"]\n'
                    'rates = [2]\n')
    assert hedra("sweep", spec, "--out", tmp_path / "sweep", "--workers", 1).returncode == 0
    out = tmp_path / "cmp"
    proc = hedra("compare", folder, tmp_path / "sweep", runs["hedra"], "--out", out)
    assert proc.returncode == 0, proc.stderr
    table = pd.read_csv(out / "compare.csv")
    assert table.loc[0, "f1_mean"] == pytest.approx(run.summary["quality"]["f1_mean"], abs=1e-4)
    assert list(table["quality_source"][:2]) == ["model:metis-curves-v1"] * 2
    assert table.loc[1, "f1_mean"] > 0 and pd.isna(table.loc[1, "em_mean"])
    assert pd.isna(table.loc[2, "f1_mean"]) and pd.isna(table.loc[2, "quality_source"])
    assert table.loc[0, "kv_peak_blocks"] == run.summary["kv_peak_blocks"]
    assert (table["kv_total_blocks"] > 0).all()


def test_compare_by_workflow_draws_one_figure_per_policy(tmp_path, runs):
    out = tmp_path / "cmp"
    proc = hedra("compare", runs["flashrag"], runs["hedra"], "--by", "workflow", "--out", out)
    assert proc.returncode == 0, proc.stderr
    assert (out / "cdf-hedra.png").is_file() and (out / "cdf-flashrag.png").is_file()


def test_compare_bad_input(tmp_path, runs):
    out = tmp_path / "cmp"
    line = assert_usage_error(hedra("compare", tmp_path, "--out", out), out)
    assert f"{tmp_path}: neither a run folder" in line
    line = assert_usage_error(hedra("compare", runs["hedra"], "--by", "colour", "--out", out), out)
    assert "--by colour" in line
    line = assert_usage_error(hedra("compare", runs["hedra"], "--baseline", "langchain", "--out", out), out)
    assert "--baseline langchain: no run has policy 'langchain'" in line
