"""The human side of a validation: `report.md` (error table) and plots (latency CDFs, error vs load)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{x * 100:+.1f}%"


def _abs_pct(x: float | None) -> str:
    return "n/a" if x is None else f"{x * 100:.1f}%"


def _s(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.3f}"


def error_table(cells: Sequence[dict]) -> list[str]:
    """Markdown rows: one per cell, real and sim percentiles, errors, busy fractions, item errors,
    the run's speed, the errors at that speed and the P50's sensitivity to the items' cost
    (`calibration.validate`); where a probe ran before each cell, its speed and the errors at it."""
    probed = any("at_probe_speed" in c for c in cells)
    head = ("| workflow | rate | policy | real P50 | sim P50 | P50 err | real P99 | sim P99 | P99 err | P95 err"
            " | gen busy real/sim | retr busy real/sim | step err (med) | search err (med)"
            + (" | probe speed step/search | P50 / P99 err at probe speed" if probed else "")
            + " | run speed step/search | P50 / P99 err at run speed | P50 per cost |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for c in cells:
        r, s, items = c["real"], c["sim"], c["item_errors"]
        busy = [f"{r['lane_busy'].get(lane, 0):.2f}/{s['lane_busy'].get(lane, 0):.2f}"
                for lane in ("gpu_gen", "cpu_retrieval")]
        label = c.get("label", c["policy"])
        lines.append(f"| {c['workflow']} | {c['rate']:g} | {label} | {_s(r['p50'])} | {_s(s['p50'])}"
                     f" | {_pct(c['p50_error'])} | {_s(r['p99'])} | {_s(s['p99'])} | {_pct(c['p99_error'])}"
                     f" | {_pct(c['p95_error'])} | {busy[0]} | {busy[1]}"
                     f" | {_abs_pct(items['engine_step']['median_abs_rel_error'])}"
                     f" | {_abs_pct(items['search_call']['median_abs_rel_error'])}"
                     + (f" | {_speeds(c, 'probe')} | {_at_speed(c, 'probe')}" if probed else "")
                     + f" | {_speeds(c, 'run')} | {_at_speed(c, 'run')} | {_x(c.get('p50_per_cost'))} |")
    return lines


def _x(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.1f}x"


def _speeds(cell: dict, which: str) -> str:
    """Engine steps / search calls at the `which` ("run": the real run's items, measured over
    their price; "probe": the probe's before the cell, over the calibration's)."""
    speed = cell.get(f"{which}_speed") or {}
    return "/".join("n/a" if speed.get(k) is None else f"{speed[k]:.3f}" for k in ("engine_step", "search_call"))


def _at_speed(cell: dict, which: str) -> str:
    at = cell.get(f"at_{which}_speed") or {}
    return f"{_pct(at.get('p50_error'))} / {_pct(at.get('p99_error'))}"


def write_report(path: Path, result: dict) -> None:
    cells, worst = result["cells"], result["worst"]
    body = result["body"]
    lines = [f"# Validation of profile `{result['profile']}` ({result['profile_kind']})", "",
             f"Real body: {body.get('backend')} backend, model {Path(str(body.get('model'))).name}, engine cores"
             f" {body.get('gen_cores')}, retrieval cores {body.get('retrieval_cores')}, index nlist"
             f" {body.get('index', {}).get('nlist')}.", "",
             "Errors are (sim - real) / real. Item errors: the profile's latency functions re-time the real"
             " run's own engine steps and search calls; the median |relative error| per cell. Run speed: the"
             " real run's items, measured over their price, summed per kind; errors at run speed: the"
             " simulator with the profile scaled to that speed (no prediction: it uses the run's own timings);"
             " probe speed (where measured): the stale-profile probe's just before the cell, against the"
             " calibration's, and the simulator at it (a prediction: made before the run);"
             " P50 per cost: the simulated P50's relative change per relative change of every item's cost.", "",
             *error_table(cells), "",
             f"Worst |error|: P50 {_abs_pct(worst['p50_error'])}, P95 {_abs_pct(worst['p95_error'])},"
             f" P99 {_abs_pct(worst['p99_error'])}; engine step (median per cell)"
             f" {_abs_pct(worst['engine_step_median_error'])},"
             f" search call {_abs_pct(worst['search_call_median_error'])}.",
             ""]
    path.write_text("\n".join(lines))


Latencies = dict[tuple[str, float, str], dict[str, list[float]]]  # (workflow, rate, policy label) -> body -> latencies


def write_plots(out: Path, cells: Sequence[dict], latencies: Latencies) -> None:
    """`cdf-<workflow>.png` (sim dashed vs real solid, one colour per rate and policy) and
    `error-vs-load.png` (P50 and P99 error against rate, one line per workflow and policy)."""
    for wf in sorted({c["workflow"] for c in cells}):
        fig, ax = plt.subplots(figsize=(7, 4.5))
        keys = [k for k in latencies if k[0] == wf]
        colours = plt.cm.tab10(np.linspace(0, 1, max(len(keys), 1)))
        for colour, key in zip(colours, keys, strict=False):
            for body, style in (("real", "-"), ("sim", "--")):
                lat = np.sort(latencies[key][body])
                if len(lat):
                    ax.plot(lat, np.arange(1, len(lat) + 1) / len(lat), style, color=colour,
                            label=f"{key[2]} @ {key[1]:g}/s ({body})")
        ax.set_xlabel("request latency (s)")
        ax.set_ylabel("fraction of requests")
        ax.set_title(f"{wf}: latency CDF, real (solid) vs simulated (dashed)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(out / f"cdf-{wf.replace(',', '+')}.png", dpi=110)
        plt.close(fig)
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=False)
    for (wf, policy) in sorted({(c["workflow"], c.get("label", c["policy"])) for c in cells}):
        mine = sorted((c for c in cells if c["workflow"] == wf and c.get("label", c["policy"]) == policy),
                      key=lambda c: c["rate"])
        for ax, p in zip(axes, ("p50", "p99"), strict=True):
            pts = [(c["rate"], c[f"{p}_error"] * 100) for c in mine if c[f"{p}_error"] is not None]
            if pts:
                ax.plot(*zip(*pts, strict=True), marker="o", label=f"{wf} / {policy}")
    for ax, p in zip(axes, ("P50", "P99"), strict=True):
        ax.axhline(0, color="black", lw=0.8)
        ax.set_xlabel("arrival rate (req/s)")
        ax.set_ylabel(f"{p} error, (sim - real) / real (%)")
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "error-vs-load.png", dpi=110)
    plt.close(fig)
