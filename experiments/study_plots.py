"""Plots of many runs (a sweep's cells, `hedra compare`'s runs): one PNG per workflow each.

Every function takes a table with one row per run: a series column (`by`: policy, body,
profile...), `workflow`, `rate`, `p50_s`, `p99_s`, `util_<lane>` and `latency_cdf_s` (101
latency quantiles of the run's completed requests). Rows of one series at one rate (seeds)
are averaged.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path
from typing import get_args

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from experiments.sweepspec import Plot
from ragraph.work import LANES

POLICY_STYLE = {"langchain": "tab:gray", "flashrag": "tab:blue", "hedra": "tab:red"}
MAX_PANELS = 6  # CDF panels (rates) per figure
PLOTS_OF_RUNS: tuple[str, ...] = get_args(Plot)  # every plot there is


def file_stem(text: str) -> str:
    """A workflow label as a file name ("irg,hyde" -> "irg+hyde")."""
    return re.sub(r"[^A-Za-z0-9_.=-]+", "+", text).strip("+") or "runs"


def series_of(table: pd.DataFrame, by: str) -> pd.Series:
    """The label of each row's series: the `by` value, with the profile or body added where
    the table holds several and `by` is not it."""
    label = table[by].astype(str)
    for extra in ("profile", "body"):
        if extra != by and extra in table and table[extra].nunique() > 1:
            label = label + " @ " + table[extra].astype(str)
    return label


def _colors(names: Iterable[str]) -> dict[str, str]:
    """The known policies' colours; the tableau colours they leave for the other series."""
    names = list(names)
    taken = {POLICY_STYLE[n] for n in names if n in POLICY_STYLE}
    palette = [f"tab:{c}" for c in ("orange", "green", "purple", "brown", "pink", "olive", "cyan", "blue", "red",
                                    "gray")]
    cycle = iter([c for c in palette if c not in taken] * 8)
    return {n: POLICY_STYLE.get(n) or next(cycle) for n in names}


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def latency_vs_rate(rows: pd.DataFrame, path: Path, title: str) -> Path:
    """P50 (solid) and P99 (dashed) latency against request rate, one colour per series."""
    fig, ax = plt.subplots(figsize=(5.5, 3.8), dpi=120)
    colors = _colors(dict.fromkeys(rows["series"]))
    for name, g in rows.groupby("series", sort=False):
        g = g.groupby("rate", as_index=False)[["p50_s", "p99_s"]].mean()
        ax.plot(g["rate"], g["p50_s"], "-o", color=colors[name], label=f"{name} P50", ms=4)
        ax.plot(g["rate"], g["p99_s"], "--", color=colors[name], label=f"{name} P99", alpha=0.7)
    ax.set_xlabel("request rate (req/s)")
    ax.set_ylabel("latency (s)")
    top = min(rows["p99_s"].max(), 10 * max(rows["p50_s"].min(), 0.1))
    ax.set_ylim(0, top * 1.05)
    if rows["p99_s"].max() > top * 1.05:
        ax.annotate("higher values beyond the axis", xy=(0.99, 0.99), xycoords="axes fraction", ha="right",
                    va="top", fontsize=7, color="dimgray")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncols=2)
    return _save(fig, path)


def latency_cdf(rows: pd.DataFrame, path: Path, title: str) -> Path:
    """CDF of request latency, one panel per rate (at most MAX_PANELS, the highest kept), one line per series."""
    rates = sorted(set(rows["rate"]))[-MAX_PANELS:]
    fig, axes = plt.subplots(1, len(rates), figsize=(3.2 * len(rates) + 0.6, 3.2), dpi=120, squeeze=False)
    colors = _colors(dict.fromkeys(rows["series"]))
    probs = np.linspace(0, 1, 101)
    for ax, rate in zip(axes[0], rates, strict=True):
        for name, g in rows[rows["rate"] == rate].groupby("series", sort=False):
            qs = [np.asarray(q, dtype=float) for q in g["latency_cdf_s"] if len(q)]
            if qs:
                ax.plot(np.mean(qs, axis=0), probs, color=colors[name], label=str(name))
        ax.set_title(f"{rate:g} req/s", fontsize=9)
        ax.set_xlabel("latency (s)")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("fraction of requests")
    axes[0][0].legend(fontsize=7)
    fig.suptitle(title, fontsize=9)
    return _save(fig, path)


def utilisation(rows: pd.DataFrame, path: Path, title: str) -> Path:
    """Busy share of each lane that did anything, against request rate, one line per series."""
    lanes = [lane.value for lane in LANES if f"util_{lane.value}" in rows and rows[f"util_{lane.value}"].max() > 0]
    lanes = lanes or [LANES[0].value]
    fig, axes = plt.subplots(1, len(lanes), figsize=(3.2 * len(lanes) + 0.6, 3.2), dpi=120, squeeze=False)
    colors = _colors(dict.fromkeys(rows["series"]))
    for ax, lane in zip(axes[0], lanes, strict=True):
        for name, g in rows.groupby("series", sort=False):
            g = g.groupby("rate", as_index=False)[f"util_{lane}"].mean()
            ax.plot(g["rate"], g[f"util_{lane}"], "-o", ms=4, color=colors[name], label=str(name))
        ax.set_title(lane, fontsize=9)
        ax.set_xlabel("request rate (req/s)")
        ax.set_ylim(0, 1.05)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("busy share")
    axes[0][0].legend(fontsize=7)
    fig.suptitle(title, fontsize=9)
    return _save(fig, path)


def speedup(rows: pd.DataFrame, path: Path, title: str, baseline: str) -> Path:
    """P50 (solid) and P99 (dashed) speedup over `baseline` (its latency / the series'), against rate."""
    fig, ax = plt.subplots(figsize=(5.5, 3.8), dpi=120)
    colors = _colors(dict.fromkeys(rows["series"]))
    col50, col99 = f"p50_x_vs_{baseline}", f"p99_x_vs_{baseline}"
    for name, g in rows[rows["series"] != baseline].groupby("series", sort=False):
        g = g.groupby("rate", as_index=False)[[col50, col99]].mean()
        ax.plot(g["rate"], g[col50], "-o", ms=4, color=colors[name], label=f"{name} P50")
        ax.plot(g["rate"], g[col99], "--", color=colors[name], alpha=0.7, label=f"{name} P99")
    ax.axhline(1.0, color="black", lw=0.8)
    ax.set_xlabel("request rate (req/s)")
    ax.set_ylabel(f"speedup over {baseline} (x)")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncols=2)
    return _save(fig, path)


def study_plots(table: pd.DataFrame, out: Path, plots: Iterable[str], by: str, baseline: str | None,
                subtitle: str, panel: str = "workflow") -> list[Path]:
    """Write the asked plots, one PNG per `panel` value (workflow) each: `<plot>-<workflow>.png`."""
    rows = table.assign(series=series_of(table, by))
    written = []
    for wf, g in rows.groupby(panel, sort=False):
        stem, title = file_stem(str(wf)), f"{wf} ({subtitle})"
        for plot in plots:
            path = out / f"{plot}-{stem}.png"
            if plot == "latency-vs-rate" and g["p50_s"].notna().any():
                written.append(latency_vs_rate(g, path, title))
            elif plot == "cdf":
                written.append(latency_cdf(g, path, title))
            elif plot == "utilisation":
                written.append(utilisation(g, path, title))
            elif plot == "speedup" and baseline is not None and f"p50_x_vs_{baseline}" in g:
                written.append(speedup(g, path, f"{title}", baseline))
    return written


def sweep_plots(table: pd.DataFrame, out: Path, plots: Iterable[str], baseline: str | None) -> list[Path]:
    """A sweep's plots: series are policy specs."""
    profiles = ", ".join(dict.fromkeys(table["profile"].astype(str)))
    return study_plots(table, out, plots, "policy", baseline, f"simulated, {profiles}")
