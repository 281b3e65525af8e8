"""Plots of `hedra figure`: latency against request rate per panel, and normalised bars.

On a capped linear axis (the paper's: 10 s latency, 2x normalised time) a value beyond the
cap is drawn at the cap as an upward triangle with its value written beside it, never
silently cut; `log=True` drops the cap and uses a log scale instead.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

COLORS = {"langchain": "tab:gray", "flashrag": "tab:blue", "hedra": "tab:red", "no split": "tab:green",
          "sub-stages": "tab:orange", "sub-stages (artifact)": "tab:purple"}
MARKERS = "osd^vx"


def _value_text(v: float) -> str:
    return f"{v:.0f}" if v >= 100 else f"{v:.1f}" if v >= 10 else f"{v:.2f}"


def _capped(ax, x: np.ndarray, y: np.ndarray, cap: float, color: str, nudge: float) -> np.ndarray:
    """Mark and label the points of `y` above `cap`; return `y` clipped to it."""
    over = y > cap
    if over.any():
        ax.plot(x[over], np.full(over.sum(), cap), "^", color=color, mec="white", ms=8, zorder=4)
        for xi, yi in zip(x[over], y[over], strict=True):
            ax.annotate(_value_text(yi), (xi + nudge, cap), xytext=(0, 4), textcoords="offset points",
                        rotation=90, fontsize=5.5, color=color, ha="center", va="bottom")
    return np.minimum(y, cap)


def latency_grid(rows: pd.DataFrame, panels: list[tuple[str, str]], shape: tuple[int, int], out: Path,
                 title: str, cap_s: float | None, log: bool, ylabel: str = "mean latency (s)") -> Path:
    """One subplot per panel (key, title): `mean_s` against `rate`, one line per policy."""
    n_rows, n_cols = shape
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(2.9 * n_cols, 2.5 * n_rows + 0.5), dpi=130, squeeze=False)
    policies = list(dict.fromkeys(rows["policy"]))
    rates = sorted(set(rows["rate"]))
    step = (rates[-1] - rates[0]) / max(len(rates) - 1, 1) if len(rates) > 1 else 1.0
    for ax, (key, panel_title) in zip(axes.flat, panels, strict=False):
        sub = rows[rows["panel"] == key]
        for j, policy in enumerate(policies):
            g = sub[sub["policy"] == policy].sort_values("rate")
            x, y = g["rate"].to_numpy(float), g["mean_s"].to_numpy(float)
            color = COLORS.get(policy, f"C{j}")
            if cap_s is not None and not log:
                y = _capped(ax, x, y, cap_s, color, (j - (len(policies) - 1) / 2) * 0.22 * step)
            ms = 3.5 + 1.5 * (len(policies) - 1 - j)  # earlier series larger: identical curves stay visible
            ax.plot(x, y, "-", marker=MARKERS[j % len(MARKERS)], color=color, ms=ms, lw=1.3, label=policy)
        if log:
            ax.set_yscale("log")
        elif cap_s is not None:
            ax.axhline(cap_s, color="k", lw=0.6, ls=":")
            ax.set_ylim(0, cap_s * 1.45)
            ax.set_yticks(np.linspace(0, cap_s, 6))
        else:
            ax.set_ylim(bottom=0)
        ax.set_title(panel_title, fontsize=8)
        ax.set_xticks(rates)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    for ax in axes.flat[len(panels):]:
        ax.set_visible(False)
    for ax in axes[-1]:
        ax.set_xlabel("request rate (req/s)", fontsize=8)
    for ax in axes[:, 0]:
        ax.set_ylabel(ylabel, fontsize=8)
    handles, labels = axes.flat[0].get_legend_handles_labels()
    note = "" if log or cap_s is None else f"; ▲ beyond the {cap_s:g} s cap, value written beside it"
    fig.suptitle(textwrap.fill(f"{title}{note}", int(13 * 2.9 * n_cols)), fontsize=9)
    fig.legend(handles, labels, loc="lower center", ncols=len(labels), fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.05, 1, 0.95 if n_cols > 2 else 0.92))
    fig.savefig(out)
    plt.close(fig)
    return out


def normalized_bars(rows: pd.DataFrame, panels: list[tuple[str, str]], out: Path, title: str,
                    cap: float | None, log: bool) -> Path:
    """One subplot per panel: per workflow, each policy's makespan over hedra's (hedra = 1)."""
    fig, axes = plt.subplots(len(panels), 1, figsize=(6.5, 2.0 * len(panels) + 0.6), dpi=130, squeeze=False)
    policies = list(dict.fromkeys(rows["policy"]))
    width = 0.8 / len(policies)
    for ax, (key, panel_title) in zip(axes[:, 0], panels, strict=True):
        sub = rows[rows["panel"] == key]
        workflows = list(dict.fromkeys(sub["workflow"]))
        hedra = sub[sub["policy"] == "hedra"].set_index("workflow")["makespan_s"]
        x = np.arange(len(workflows))
        for j, policy in enumerate(policies):
            t = sub[sub["policy"] == policy].set_index("workflow")["makespan_s"]
            ratio = np.array([t[w] / hedra[w] for w in workflows])
            xs = x + (j - (len(policies) - 1) / 2) * width
            color = COLORS.get(policy, f"C{j}")
            shown = ratio if log or cap is None else np.minimum(ratio, cap)
            ax.bar(xs, shown, width * 0.9, color=color, edgecolor="black", lw=0.5, label=policy)
            for xi, r in zip(xs, ratio, strict=True):
                clipped = not log and cap is not None and r > cap
                ax.annotate(("▲" if clipped else "") + f"{r:.2f}", (xi, min(r, cap) if clipped else r),
                            xytext=(0, 2), textcoords="offset points", ha="center", fontsize=6)
        ax.set_xticks(x, workflows, fontsize=8)
        ax.set_title(panel_title, fontsize=8)
        ax.set_ylabel("total time / hedra's", fontsize=8)
        if log:
            ax.set_yscale("log")
        elif cap is not None:
            ax.set_ylim(0, cap * 1.15)
        ax.grid(axis="y", alpha=0.3)
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.suptitle(title, fontsize=9)
    fig.legend(handles, labels, loc="lower center", ncols=len(labels), fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.04, 1, 0.97))
    fig.savefig(out)
    plt.close(fig)
    return out
