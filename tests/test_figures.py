"""`hedra figure N`: each figure writes its PNG and CSVs on a quick setting; the cell runner and
the numbers read off the rows."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from experiments.cells import Cell, run_cells
from experiments.figures import FIGURES, rate_ratio, sustainable_rate
from ragraph.policies import parse_policy

ROOT = Path(__file__).resolve().parents[1]


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
    assert set(rows["policy"]) == {label for label, _ in FIGURES[number].policies}
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


def test_run_cells_pool_equals_in_process():
    policies = (("flashrag", parse_policy("flashrag")), ("hedra", parse_policy("hedra")))
    cells = [Cell(("one-shot",), r, 128, policies, duration_s=3.0) for r in (4.0, 12.0)]
    assert _same_but_wall(run_cells(cells, 1), run_cells(cells, 2))


def _same_but_wall(a: list[dict], b: list[dict]) -> bool:
    strip = [{k: v for k, v in r.items() if k != "wall_s"} for r in a]
    return strip == [{k: v for k, v in r.items() if k != "wall_s"} for r in b]


def test_offline_cell_arrives_at_once():
    cell = Cell(("one-shot",), 1000.0, 128, (("hedra", parse_policy("hedra")),), requests=50, offline=True)
    (row,) = run_cells([cell], 1)
    assert row["requests"] == 50 and row["completed"] == 50
    assert row["mean_s"] < row["makespan_s"]


def test_sustainable_rate_and_ratio():
    lat = pd.Series([1.0, 5.0, 15.0], index=[4.0, 8.0, 12.0])
    assert sustainable_rate(lat) == (pytest.approx(10.0), "")
    assert sustainable_rate(pd.Series([1.0, 2.0], index=[4.0, 8.0])) == (8.0, ">=")
    assert sustainable_rate(pd.Series([11.0, 20.0], index=[4.0, 8.0])) == (4.0, "<")
    assert rate_ratio((20.0, ""), (10.0, "")) == "2.0×"
    assert rate_ratio((28.0, ">="), (10.0, "")) == "≥2.8×"
    assert rate_ratio((28.0, ">="), (28.0, ">=")) == "n/a"
