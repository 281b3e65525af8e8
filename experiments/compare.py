"""`hedra compare`: one table and a few plots of many runs, simulated or real.

Reads run folders (`hedra sim`, `hedra run`: requests.parquet + summary.json) and sweep
folders (`hedra sweep`, `hedra demo`: sweep.parquet, one row per cell), puts one row per
run into one table, and adds each row's P50/P99 speedup over the baseline: the row whose
`--by` value is the baseline and which agrees with it on the other columns that say what
ran (workflow, rate, policy, profile, seed, body; a value a run does not record, such as a
real run's seed, matches any; with `--by body` only workflow, rate and policy count, since
the simulator and the real body are compared on the same trace whatever their profiles).
Beside latency each row has its quality and KV-cache columns (`runs.summary.table_columns`):
`f1_mean` is a real run's answers' F1, or the simulator's F1 of the configurations its
policy chose (RAGServe), `quality_source` saying which.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from experiments.cell import QUANTILES
from experiments.study_plots import PLOTS_OF_RUNS, study_plots
from ragraph.work import LANES
from runs.outdir import atomic_dir
from runs.summary import KV_COLUMNS, QUALITY_COLUMNS, table_columns

BY = ("policy", "workflow", "body", "profile", "seed", "trace", "run")
CONTEXT = ("workflow", "rate", "policy", "profile", "seed", "body")
METRICS = ["requests", "completed", "failed", "mean_s", "p50_s", "p95_s", "p99_s", "throughput_rps",
           *(f"util_{lane.value}" for lane in LANES)]
TABLE_COLUMNS = (*QUALITY_COLUMNS, *KV_COLUMNS)  # beside latency: quality and KV cache (None where a run has none)


class CompareError(ValueError):
    """A folder that holds no run (message names it)."""


def _run_row(folder: Path) -> dict[str, object]:
    """One run folder's row (latency quantiles from its requests)."""
    try:
        summary = json.loads((folder / "summary.json").read_text())
        frame = pd.read_parquet(folder / "requests.parquet")
    except (OSError, ValueError) as exc:
        raise CompareError(f"{folder}: cannot read the run ({exc})") from None
    lat = summary.get("latency_s", {})
    done = frame.loc[frame["status"] == "completed", "latency_s"].to_numpy(dtype=float)
    arrivals = np.sort(frame["arrival_s"].to_numpy(dtype=float))
    span = arrivals[-1] - arrivals[0] if len(arrivals) > 1 else 0.0
    util = summary.get("lane_utilization", {})
    return {"run": folder.name, "body": summary.get("body", "sim"), "policy": summary.get("policy"),
            "workflow": ",".join(sorted(summary.get("per_workflow", {}))) or ",".join(sorted(set(frame["workflow"]))),
            "rate": round((len(arrivals) - 1) / span, 2) if span > 0 else float(len(arrivals)),
            "profile": summary.get("profile"), "seed": summary.get("seed"), "trace": summary.get("trace"),
            "requests": summary.get("requests", len(frame)), "completed": summary.get("completed"),
            "failed": summary.get("failed"), **{f"{k}_s": lat.get(k) for k in ("mean", "p50", "p95", "p99")},
            "throughput_rps": summary.get("throughput_rps"),
            **{f"util_{lane.value}": util.get(lane.value, 0.0) for lane in LANES},
            **table_columns(summary),
            "latency_cdf_s": [float(q) for q in np.percentile(done, QUANTILES)] if len(done) else []}


def _sweep_rows(folder: Path) -> list[dict[str, object]]:
    try:
        table = pd.read_parquet(folder / "sweep.parquet")
    except (OSError, ValueError) as exc:
        raise CompareError(f"{folder}: cannot read the sweep table ({exc})") from None
    rows = []
    for i, r in enumerate(table.to_dict("records")):
        rows.append({"run": f"{folder.name}#{i}", "body": "sim", "policy": r["policy"], "workflow": r["workflow"],
                     "rate": r["rate"], "profile": r["profile"], "seed": r["seed"], "trace": r["trace"] or None,
                     **{m: r.get(m) for m in (*METRICS, *TABLE_COLUMNS)},
                     "latency_cdf_s": list(r["latency_cdf_s"])})
    return rows


def load_runs(folders: list[Path]) -> pd.DataFrame:
    """One row per run of the given run and sweep folders, in the order given."""
    rows: list[dict[str, object]] = []
    for folder in folders:
        if (folder / "sweep.parquet").is_file():
            rows += _sweep_rows(folder)
        elif (folder / "summary.json").is_file() and (folder / "requests.parquet").is_file():
            rows.append(_run_row(folder))
        else:
            raise CompareError(f"{folder}: neither a run folder (summary.json + requests.parquet, from hedra sim"
                               " or hedra run) nor a sweep folder (sweep.parquet, from hedra sweep or hedra demo)")
    return pd.DataFrame(rows)


def _agree(a: dict, b: dict, keys: list[str]) -> bool:
    """Equal on every key both rows know (a missing value matches anything)."""
    return all(a[k] == b[k] for k in keys if not (pd.isna(a[k]) or pd.isna(b[k])))


def with_speedups(table: pd.DataFrame, by: str, baseline: str) -> pd.DataFrame:
    """Add `p50_x_vs_<baseline>` / `p99_x_vs_<baseline>`: the matching baseline row's latency / the row's."""
    keys = [k for k in CONTEXT if k != by and not (by == "body" and k in ("profile", "seed"))]
    records = table.to_dict("records")
    bases = [r for r in records if str(r[by]) == baseline]
    x50, x99 = [], []
    for r in records:
        base = next((b for b in bases if _agree(r, b, keys)), None)
        ok = base is not None and r["p50_s"] and base["p50_s"] is not None
        x50.append(base["p50_s"] / r["p50_s"] if ok else np.nan)
        x99.append(base["p99_s"] / r["p99_s"] if ok else np.nan)
    return table.assign(**{f"p50_x_vs_{baseline}": x50, f"p99_x_vs_{baseline}": x99})


def compare(folders: list[Path], out: Path, *, by: str = "policy", baseline: str | None = None,
            plots: tuple[str, ...] = PLOTS_OF_RUNS) -> tuple[pd.DataFrame, str]:
    """Write compare.csv and the plots into `out` (whole or not at all); return the table and
    the baseline used (default: the first run's `by` value)."""
    table = load_runs(folders)
    values = [str(v) for v in dict.fromkeys(table[by])]
    baseline = baseline if baseline is not None else values[0]
    if baseline not in values:
        raise CompareError(f"--baseline {baseline}: no run has {by} {baseline!r} (they have: {', '.join(values)})")
    table = with_speedups(table, by, baseline)
    panel = "policy" if by == "workflow" else "workflow"
    with atomic_dir(out) as tmp:
        table.drop(columns=["latency_cdf_s"]).to_csv(tmp / "compare.csv", index=False, float_format="%.4f")
        bodies = "/".join(dict.fromkeys(table["body"].astype(str)))
        study_plots(table, tmp, plots, by, baseline, bodies, panel=panel)
    return table, baseline
