"""`hedra figure N`: each figure writes its PNG and CSVs on a quick setting; the figures' specs run
through the sweep engine (offline arrivals, exact request counts, the retrieval-only workflow);
the numbers read off the rows."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from experiments.expand import expand
from experiments.figures import FIGURES, rate_ratio, sustainable_rate
from experiments.sweep import inline_runner, run_sweep
from experiments.sweepspec import load_spec

ROOT = Path(__file__).resolve().parents[1]
LABELS = {12: ("langchain", "flashrag", "hedra"), 13: ("langchain", "flashrag", "hedra"), 14: ("flashrag", "hedra"),
          16: ("no split", "sub-stages", "sub-stages (artifact)")}  # each figure's policies, by label


def hedra(*args: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "experiments.cli", *map(str, args)], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("number", sorted(FIGURES))
def test_figure_writes_png_and_csv(tmp_path, number):
    out = tmp_path / f"fig{number}"
    extra = () if FIGURES[number].offline else ("--duration", 4)
    proc = hedra("figure", number, "--quick", "--workers", 1, "--out", out, *extra)
    assert proc.returncode == 0, proc.stderr
    png = out / f"figure-{number}.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = pd.read_csv(out / f"figure-{number}.csv")
    assert len(rows) and rows["completed"].gt(0).all()
    assert set(rows["policy"]) == set(LABELS[number])
    paper = pd.read_csv(out / f"figure-{number}-paper.csv")
    assert list(paper.columns) == ["quantity", "paper", "hedra"] and len(paper)
    for quantity in paper["quantity"]:  # the table beside the paper's numbers is printed
        assert quantity.split(",")[0] in proc.stdout


def test_figure_log_scale_and_errors(tmp_path):
    out = tmp_path / "f16"
    assert hedra("figure", 16, "--quick", "--log", "--duration", 3, "--workers", 1, "--out", out).returncode == 0
    assert (out / "figure-16.png").is_file()
    for args, text in [((11,), "figure 11"), ((13, "--duration", 5), "--duration 5"),
                       ((12, "--duration", 0), "--duration 0"), ((12, "--workers", 0), "--workers 0")]:
        bad = tmp_path / "bad"
        proc = hedra("figure", *args, "--out", bad)
        assert proc.returncode == 2 and proc.stderr.startswith("hedra: error:") and text in proc.stderr
        assert not bad.exists()


def test_figure_specs_are_valid_sweep_specs():
    counts = {12: 15 * 7 * 3, 13: 15 * 3, 14: 4 * 7 * 2, 16: 2 * 7 * 3}  # the grids of the old figure runner
    for number, fig in FIGURES.items():
        cells = expand(fig.spec(), fig.spec_path)
        assert len(cells) == counts[number]
        assert {c.policy_label or c.policy.spec for c in cells} == set(LABELS[number]), number
        assert all(c.seed == 2025 for c in cells)
    quick = FIGURES[12].run_spec(None, quick=True)
    assert [w.tags["panel"] for w in quick.workload] == [f"{w}@256" for w in ("one-shot", "hyde", "recomp",
                                                                              "multistep", "irg")]
    assert {tuple(w.rates) for w in quick.workload} == {(4.0, 28.0)} and quick.duration_s == 10
    assert {w.requests for w in FIGURES[13].run_spec(None, quick=True).workload} == {64}


OFFLINE = """
seeds = [2025]
workflow_files = ["{workflows}"]
policies = [{{ name = "hedra", label = "HD" }}]
plots = []
[[workload]]
workflow = "one-shot"
rates = [1000]
requests = 50
offline = true
tags = {{ panel = "a" }}
[[workload]]
workflow = "retrieval-only"
rates = [4]
requests = 7
"""


def test_offline_exact_count_and_extra_workflow_cells(tmp_path):
    spec_path = tmp_path / "s.toml"
    spec_path.write_text(OFFLINE.format(workflows=FIGURES[16].spec_path.parent / "workflows.toml"))
    spec = load_spec(spec_path)
    table = run_sweep(spec, expand(spec, spec_path), tmp_path / "out", inline_runner)
    offline, retrieval = table.to_dict("records")
    assert offline["requests"] == offline["completed"] == 50 and offline["offline"]
    assert offline["mean_s"] < offline["sim_s"] and offline["label"] == "HD" and offline["panel"] == "a"
    assert retrieval["requests"] == 7 and retrieval["workflow"] == "retrieval-only" and pd.isna(retrieval["panel"])
    assert retrieval["retrieval_mean_s"] == pytest.approx(retrieval["mean_s"])  # one search per request


def test_sustainable_rate_and_ratio():
    lat = pd.Series([1.0, 5.0, 15.0], index=[4.0, 8.0, 12.0])
    assert sustainable_rate(lat) == (pytest.approx(10.0), "")
    assert sustainable_rate(pd.Series([1.0, 2.0], index=[4.0, 8.0])) == (8.0, ">=")
    assert sustainable_rate(pd.Series([11.0, 20.0], index=[4.0, 8.0])) == (4.0, "<")
    assert rate_ratio((20.0, ""), (10.0, "")) == "2.0×"
    assert rate_ratio((28.0, ">="), (10.0, "")) == "≥2.8×"
    assert rate_ratio((28.0, ">="), (28.0, ">=")) == "n/a"
