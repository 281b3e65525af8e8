"""Plots of many runs (a sweep's cells, `hedra compare`'s runs): one PNG per workflow each.

Each figure has one legend, outside its panels on the right. Where the series include the
known systems (langchain, flashrag, hedra), those are drawn bold and solid and every other
series (hedra's ablations, option settings) thin, dashed and in a light tint, so the two kinds
part at a glance. Latency and speedup against rate put P50 and P99 in panels of their own.

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
# variants (hedra's ablations...) beside the systems: thin dashed lines in light tints, one marker each
VARIANT_COLORS = ("#ff9f4a", "#5fbf5f", "#a58bd0", "#b0806f", "#f0a0d0", "#c4c440", "#40c0d0", "#9a9a9a",
                  "#8fb8e0", "#e08f8f")
MARKERS = "ovs^D<>ph*"


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


def _styles(names: Iterable[str]) -> dict[str, dict[str, object]]:
    """Line style per series. Where some series are the known systems (langchain, flashrag,
    hedra), they are drawn bold and solid in their colours, and every other series (a variant:
    an ablation, an option setting) thin and dashed in a light tint with its own marker, so the
    two kinds part at a glance; otherwise every series is drawn bold in the tableau colours."""
    names = list(names)
    systems = [n for n in names if n in POLICY_STYLE]
    taken = {POLICY_STYLE[n] for n in systems}
    palette = [f"tab:{c}" for c in ("orange", "green", "purple", "brown", "pink", "olive", "cyan", "blue", "red",
                                    "gray")]
    bold = iter([c for c in palette if c not in taken] * 8)
    out: dict[str, dict[str, object]] = {}
    for i, n in enumerate(names):
        if n in POLICY_STYLE or not systems:
            out[n] = {"color": POLICY_STYLE.get(n) or next(bold), "lw": 2.2, "ls": "-", "marker": "o", "ms": 5,
                      "zorder": 3}
        else:
            j = i - sum(1 for m in names[:i] if m in POLICY_STYLE)
            out[n] = {"color": VARIANT_COLORS[j % len(VARIANT_COLORS)], "lw": 1.1, "ls": "--",
                      "marker": MARKERS[j % len(MARKERS)], "ms": 3.5, "zorder": 4}
    return out


def _save(fig, path: Path) -> Path:
    fig.savefig(path)
    plt.close(fig)
    return path


def _legend_outside(fig, axes) -> None:
    """One legend for the figure, to the right of its panels (never over a curve)."""
    seen: dict[str, object] = {}
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            seen.setdefault(label, handle)
    fig.legend(list(seen.values()), list(seen), loc="outside right center", fontsize=7, frameon=False)


def _two_quantiles(rows: pd.DataFrame, path: Path, title: str, columns: tuple[str, str], ylabel: str,
                   cut: bool, ref: float | None = None) -> Path:
    """P50 and P99 of each series against rate, in two panels side by side; `cut`: each panel's
    y axis stops at 10x its lowest curve's floor, and the panel says when values lie beyond it."""
    fig, axes = plt.subplots(1, 2, figsize=(9.5, 3.6), dpi=120, layout="constrained")
    styles = _styles(dict.fromkeys(rows["series"]))
    for ax, col, quantile in zip(axes, columns, ("P50", "P99"), strict=True):
        for name, g in rows.groupby("series", sort=False):
            g = g.groupby("rate", as_index=False)[col].mean()
            ax.plot(g["rate"], g[col], label=str(name), **styles[name])
        sub = quantile
        if cut and rows[col].notna().any():
            top = min(rows[col].max(), 10 * max(rows[col].min(), 0.1))
            ax.set_ylim(0, top * 1.05)
            if rows[col].max() > top * 1.05:
                sub += f" (higher values beyond the axis, up to {rows[col].max():.3g} s)"
        if ref is not None:
            ax.axhline(ref, color="black", lw=0.8)
        ax.set_title(sub, fontsize=8)
        ax.set_xlabel("request rate (req/s)")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel(ylabel)
    fig.suptitle(title, fontsize=9)
    _legend_outside(fig, axes)
    return _save(fig, path)


def latency_vs_rate(rows: pd.DataFrame, path: Path, title: str) -> Path:
    """P50 and P99 latency against request rate, one panel each, one line per series."""
    return _two_quantiles(rows, path, title, ("p50_s", "p99_s"), "latency (s)", cut=True)


def latency_cdf(rows: pd.DataFrame, path: Path, title: str) -> Path:
    """CDF of request latency, one panel per rate (at most MAX_PANELS, the highest kept), one line per series."""
    rates = sorted(set(rows["rate"]))[-MAX_PANELS:]
    fig, axes = plt.subplots(1, len(rates), figsize=(3.2 * len(rates) + 2.2, 3.2), dpi=120, squeeze=False,
                             layout="constrained")
    styles = _styles(dict.fromkeys(rows["series"]))
    probs = np.linspace(0, 1, 101)
    for ax, rate in zip(axes[0], rates, strict=True):
        for name, g in rows[rows["rate"] == rate].groupby("series", sort=False):
            qs = [np.asarray(q, dtype=float) for q in g["latency_cdf_s"] if len(q)]
            if qs:
                ax.plot(np.mean(qs, axis=0), probs, label=str(name), **{**styles[name], "marker": None})
        ax.set_title(f"{rate:g} req/s", fontsize=9)
        ax.set_xlabel("latency (s)")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("fraction of requests")
    fig.suptitle(title, fontsize=9)
    _legend_outside(fig, axes[0])
    return _save(fig, path)


def utilisation(rows: pd.DataFrame, path: Path, title: str) -> Path:
    """Busy share of each lane that did anything, against request rate, one line per series."""
    lanes = [lane.value for lane in LANES if f"util_{lane.value}" in rows and rows[f"util_{lane.value}"].max() > 0]
    lanes = lanes or [LANES[0].value]
    fig, axes = plt.subplots(1, len(lanes), figsize=(3.2 * len(lanes) + 2.2, 3.2), dpi=120, squeeze=False,
                             layout="constrained")
    styles = _styles(dict.fromkeys(rows["series"]))
    for ax, lane in zip(axes[0], lanes, strict=True):
        for name, g in rows.groupby("series", sort=False):
            g = g.groupby("rate", as_index=False)[f"util_{lane}"].mean()
            ax.plot(g["rate"], g[f"util_{lane}"], label=str(name), **styles[name])
        ax.set_title(lane, fontsize=9)
        ax.set_xlabel("request rate (req/s)")
        ax.set_ylim(0, 1.05)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("busy share")
    fig.suptitle(title, fontsize=9)
    _legend_outside(fig, axes[0])
    return _save(fig, path)


def speedup(rows: pd.DataFrame, path: Path, title: str, baseline: str) -> Path:
    """P50 and P99 speedup over `baseline` (its latency / the series'), against rate, one panel each."""
    return _two_quantiles(rows[rows["series"] != baseline], path, title,
                          (f"p50_x_vs_{baseline}", f"p99_x_vs_{baseline}"), f"speedup over {baseline} (x)",
                          cut=False, ref=1.0)


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
