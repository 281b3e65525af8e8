"""Terminal rendering of the demo's results."""

from __future__ import annotations

import pandas as pd
from rich.table import Table


def demo_table(table: pd.DataFrame, profile: str) -> Table:
    """P50/P99 per workflow, rate and policy, with hedra's speedup over each baseline."""
    t = Table(title=f"Simulated latency (s) on {profile}; speedup = baseline / hedra", show_lines=False)
    for col in ("workflow", "req/s"):
        t.add_column(col)
    for policy in ("langchain", "flashrag", "hedra"):
        t.add_column(f"{policy}\nP50", justify="right")
        t.add_column(f"{policy}\nP99", justify="right")
    t.add_column("x vs langchain\nP50 / P99", justify="right")
    t.add_column("x vs flashrag\nP50 / P99", justify="right")
    wide = table.pivot_table(index=["workflow", "rate"], columns="policy", values=["p50_s", "p99_s"], sort=False)
    hedra = table[table["policy"] == "hedra"].set_index(["workflow", "rate"])
    last = None
    for (wf, rate), row in wide.iterrows():
        cells = [wf if wf != last else "", f"{rate:g}"]
        last = wf
        for policy in ("langchain", "flashrag", "hedra"):
            cells += [f"{row[('p50_s', policy)]:.2f}", f"{row[('p99_s', policy)]:.2f}"]
        h = hedra.loc[(wf, rate)]
        for base in ("langchain", "flashrag"):
            cells.append(f"{h[f'p50_x_vs_{base}']:.1f} / {h[f'p99_x_vs_{base}']:.1f}")
        t.add_row(*cells)
    return t
