"""Plots: latency versus request rate per workflow (the shape of HedraRAG's Figure 12)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import pandas as pd

POLICY_STYLE = {"langchain": "tab:gray", "flashrag": "tab:blue", "hedra": "tab:red"}


def latency_vs_rate(table: pd.DataFrame, workflow: str, out: Path, profile: str) -> Path:
    """One PNG: P50 (solid) and P99 (dashed) latency against request rate, per policy."""
    rows = table[table["workflow"] == workflow]
    fig, ax = plt.subplots(figsize=(5.5, 3.8), dpi=120)
    for policy, group in rows.groupby("policy", sort=False):
        g = group.sort_values("rate")
        color = POLICY_STYLE.get(str(policy))
        ax.plot(g["rate"], g["p50_s"], "-o", color=color, label=f"{policy} P50", ms=4)
        ax.plot(g["rate"], g["p99_s"], "--", color=color, label=f"{policy} P99", alpha=0.7)
    ax.set_xlabel("request rate (req/s)")
    ax.set_ylabel("latency (s)")
    top = min(rows["p99_s"].max(), 10 * max(rows["p50_s"].min(), 0.1))
    ax.set_ylim(0, top * 1.05)
    ax.set_title(f"{workflow} (simulated, {profile})", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncols=2)
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
    return out
