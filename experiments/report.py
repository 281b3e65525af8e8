"""Terminal rendering of the demo's results (and `hedra compare`'s table)."""

from __future__ import annotations

import pandas as pd
from rich.table import Table

SHORT = {"langchain": "LC", "flashrag": "FR", "hedra": "HD"}


def demo_table(table: pd.DataFrame, profile: str) -> Table:
    """P50/P99 latency per workflow, rate and policy, with hedra's speedup over each baseline."""
    t = Table(title=f"Simulated latency in seconds ({profile}); LC langchain, FR flashrag, HD hedra;"
                    " speedup = baseline / hedra", title_justify="left")
    t.add_column("workflow")
    t.add_column("req/s", justify="right")
    for q in ("P50", "P99"):
        for policy in SHORT.values():
            t.add_column(f"{q} {policy}", justify="right")
    t.add_column("HD speedup P50\nvs LC / FR", justify="right")
    t.add_column("HD speedup P99\nvs LC / FR", justify="right")
    by = table.set_index(["workflow", "rate", "policy"])
    for wf in dict.fromkeys(table["workflow"]):
        for i, rate in enumerate(sorted(set(table.loc[table["workflow"] == wf, "rate"]))):
            cells = [wf if i == 0 else "", f"{rate:g}"]
            for q in ("p50_s", "p99_s"):
                cells += [f"{by.loc[(wf, rate, p), q]:.2f}" for p in SHORT]
            h = by.loc[(wf, rate, "hedra")]
            for q in ("p50", "p99"):
                cells.append(f"{h[f'{q}_x_vs_langchain']:.1f} / {h[f'{q}_x_vs_flashrag']:.1f}")
            t.add_row(*cells)
        t.add_section()
    return t


def ablation_table(table: pd.DataFrame) -> Table | None:
    """hedra's P50 latency with each of its techniques off (the policies beyond LC/FR/HD), None if none ran."""
    ablations = [p for p in dict.fromkeys(table["policy"]) if p not in SHORT]
    if not ablations:
        return None
    t = Table(title="hedra's ablations: P50 latency in seconds (P99 in brackets)", title_justify="left")
    t.add_column("workflow")
    t.add_column("req/s", justify="right")
    for policy in ["hedra", *ablations]:
        t.add_column(policy.removeprefix("hedra:"), justify="right")
    by = table.set_index(["workflow", "rate", "policy"])
    for wf in dict.fromkeys(table["workflow"]):
        for i, rate in enumerate(sorted(set(table.loc[table["workflow"] == wf, "rate"]))):
            cells = [wf if i == 0 else "", f"{rate:g}"]
            for p in ["hedra", *ablations]:
                r = by.loc[(wf, rate, p)]
                cells.append(f"{r['p50_s']:.2f} ({r['p99_s']:.2f})")
            t.add_row(*cells)
        t.add_section()
    return t


def compare_table(table: pd.DataFrame, by: str, baseline: str) -> Table:
    """`hedra compare`'s runs: what ran, latency, throughput and the speedup over the baseline."""
    t = Table(title=f"Runs by {by}; speedup = {baseline}'s latency / the run's (same workflow and rate)",
              title_justify="left")
    cols = [by, *(c for c in ("workflow", "rate", "body", "policy", "seed") if c != by)]
    for c in cols:
        t.add_column(c, justify="right" if c in ("rate", "seed") else "left")
    quality = "f1_mean" in table and table["f1_mean"].notna().any()  # some run scored its answers or its configurations
    for c in ("done/all", "P50 s", "P99 s", "req/s out", f"P50 x vs {baseline}", f"P99 x vs {baseline}",
              *(("F1", "EM", "F1 of") if quality else ())):
        t.add_column(c, justify="right")

    def num(v: object, fmt: str) -> str:
        return "-" if v is None or pd.isna(v) else format(v, fmt)

    def text(v: object) -> str:
        return "-" if v is None or pd.isna(v) else str(v)

    def cell(c: str, v: object) -> str:
        return num(v, "g") if c in ("rate", "seed") else str(v)

    for r in table.to_dict("records"):
        t.add_row(*(cell(c, r[c]) for c in cols), f"{r['completed']}/{r['requests']}",
                  num(r["p50_s"], ".3f"), num(r["p99_s"], ".3f"), num(r["throughput_rps"], ".2f"),
                  num(r[f"p50_x_vs_{baseline}"], ".2f"), num(r[f"p99_x_vs_{baseline}"], ".2f"),
                  *((num(r["f1_mean"], ".3f"), num(r["em_mean"], ".3f"), text(r["quality_source"]))
                    if quality else ()))
    return t
