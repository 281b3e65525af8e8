"""`hedra figure N`: HedraRAG's evaluation figures (SOSP 2025, §6) reproduced in simulation.

Each figure's grid is a sweep spec shipped as `experiments/specs/figure-N.toml` (workloads
tagged with their panel, policies with their labels); `run_figure` runs it through the
sweep engine (`experiments.sweep`), then plots it with the paper's axes and compares
Hedra's values with the paper's (`../shared/PAPERS.md`). What stays here is what a spec
does not say: titles, the subplot grid, the axis cap, which panels `--quick` keeps, and how
each of the paper's numbers is read off the rows. What each figure shows and how each
number is computed: docs/figures.md.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from experiments.expand import expand
from experiments.figplot import latency_grid, normalized_bars
from experiments.sweep import Runner, run_sweep
from experiments.sweepspec import SweepSpec, load_spec
from runs.outdir import atomic_dir

SPECS = Path(__file__).parent / "specs"
SLO_S = 10.0  # the paper's latency SLO and Fig. 12/14 y-axis cap
QUICK_REQUESTS = 64  # --quick: requests of an offline point
QUICK_DURATION_S, DURATION_S = 10.0, 30.0  # seconds of arrivals per online point (--quick; default)
CSV_COLUMNS = {"panel": "panel", "workflow": "workflow", "nprobe": "nprobe", "rate": "rate", "label": "policy",
               "policy": "spec", "requests": "requests", "completed": "completed", "mean_s": "mean_s",
               "p50_s": "p50_s", "p95_s": "p95_s", "p99_s": "p99_s", "sim_s": "makespan_s",
               "throughput_rps": "throughput_rps", "sim_wall_s": "wall_s"}  # sweep row -> figure-N.csv


@dataclass(frozen=True)
class Comparison:
    quantity: str
    paper: str
    hedra: str


@dataclass(frozen=True)
class Figure:
    number: int
    title: str
    compare: Callable[[pd.DataFrame], list[Comparison]]
    panel_title: str  # a panel's title, from its rows: {mix} (workflows joined by " + ") and {nprobe}
    shape: tuple[int, int] = (1, 1)  # subplot grid (line figures)
    cap: float | None = SLO_S  # y-axis cap of the paper's plot
    quick_panels: tuple[str, ...] = ()  # panel tags kept by --quick (empty: all)
    ylabel: str = "mean latency (s)"

    @property
    def spec_path(self) -> Path:
        return SPECS / f"figure-{self.number}.toml"

    def spec(self) -> SweepSpec:
        return load_spec(self.spec_path)

    @property
    def offline(self) -> bool:
        """All requests at t = 0: bars of total time normalised to hedra."""
        return any(w.offline for w in self.spec().workload)

    @property
    def requests(self) -> int | None:
        """Requests per offline point (the artifact's)."""
        return next((w.requests for w in self.spec().workload if w.offline), None)

    def run_spec(self, duration_s: float | None, quick: bool) -> SweepSpec:
        """The spec as run: `duration_s` per online point; --quick keeps the quick panels, each
        workload's lowest and highest rate, and QUICK_REQUESTS offline requests."""
        spec = self.spec()
        workloads = []
        for w in spec.workload:
            if quick and self.quick_panels and w.tags.get("panel") not in self.quick_panels:
                continue
            if quick:
                rates = w.rates or []
                w = w.model_copy(update={"rates": [rates[0], rates[-1]] if not w.offline and len(rates) > 1 else rates,
                                         "requests": QUICK_REQUESTS if w.offline else w.requests})
            workloads.append(w)
        duration = duration_s or (QUICK_DURATION_S if quick else spec.duration_s)
        return spec.model_copy(update={"workload": workloads, "duration_s": duration})


# ---- how Hedra's numbers are read off the rows -------------------------------------------

def _series(rows: pd.DataFrame, panel: str, policy: str) -> pd.Series:
    g = rows[(rows["panel"] == panel) & (rows["policy"] == policy)].sort_values("rate")
    return pd.Series(g["mean_s"].to_numpy(float), index=g["rate"].to_numpy(float))


def sustainable_rate(lat: pd.Series, slo: float = SLO_S) -> tuple[float, str]:
    """The rate where mean latency first crosses `slo` (linear between grid points), with a
    qualifier: '' measured, '>=' never crossed (the top rate), '<' crossed at the lowest rate."""
    rates, ys = lat.index.to_numpy(float), np.nan_to_num(lat.to_numpy(float), nan=np.inf)  # NaN: none completed
    if ys[0] > slo:
        return float(rates[0]), "<"
    for i in range(1, len(ys)):
        if ys[i] > slo:
            return float(rates[i - 1] + (slo - ys[i - 1]) / (ys[i] - ys[i - 1]) * (rates[i] - rates[i - 1])), ""
    return float(rates[-1]), ">="


def rate_ratio(hedra: tuple[float, str], base: tuple[float, str]) -> str:
    """hedra's sustainable rate over a baseline's, as text with its bound ('≥', '≤')."""
    (h, hq), (b, bq) = hedra, base
    low, high = hq == ">=" or bq == "<", hq == "<" or bq == ">="
    if low and high:
        return "n/a"
    return ("≥" if low else "≤" if high else "") + f"{h / b:.1f}×"


def _speedups(rows: pd.DataFrame, base: str, panels: list[str] | None = None) -> np.ndarray:
    """baseline mean latency / hedra's, at every point where hedra meets the SLO."""
    out = []
    for panel in panels or list(dict.fromkeys(rows["panel"])):
        h, b = _series(rows, panel, "hedra"), _series(rows, panel, base)
        ok = h <= SLO_S
        out += list((b[ok] / h[ok]).to_numpy())
    return np.asarray(out)


def _span(values: np.ndarray) -> str:
    return f"{values.min():.1f}–{values.max():.1f}×" if len(values) else "n/a"


def _best_baseline_rate(rows: pd.DataFrame, panel: str, baselines: tuple[str, ...]) -> tuple[float, str]:
    rates = [sustainable_rate(_series(rows, panel, b)) for b in baselines]
    return max(rates, key=lambda r: (r[0], r[1] == ">="))


def _rate_ratios(rows: pd.DataFrame, baselines: tuple[str, ...]) -> list[str]:
    return [rate_ratio(sustainable_rate(_series(rows, p, "hedra")), _best_baseline_rate(rows, p, baselines))
            for p in dict.fromkeys(rows["panel"])]


def _compare_12(rows: pd.DataFrame) -> list[Comparison]:
    out = [Comparison(f"mean latency, {b} / hedra (points where hedra ≤ 10 s)", "2.2–18.2× (both baselines)",
                      _span(_speedups(rows, b))) for b in ("langchain", "flashrag")]
    ratios = _rate_ratios(rows, ("langchain", "flashrag"))
    out.append(Comparison("sustainable rate at the 10 s SLO, hedra / best baseline (per panel)", "over 3×",
                          ", ".join(ratios)))
    for wf, nprobe, paper in (("one-shot", 256, "1.5×"), ("multistep", 256, "4×"), ("irg", 256, "3×"),
                              ("one-shot", 512, "4.4×")):
        panel = f"{wf}@{nprobe}"
        if panel in set(rows["panel"]):
            hedra = sustainable_rate(_series(rows, panel, "hedra"))
            base = _best_baseline_rate(rows, panel, ("langchain", "flashrag"))
            out.append(Comparison(f"throughput (sustainable rate) vs best baseline, {wf}, nprobe {nprobe}", paper,
                                  rate_ratio(hedra, base)))
    return out


def _compare_13(rows: pd.DataFrame) -> list[Comparison]:
    out = []
    for base, paper in (("langchain", "3.5×"), ("flashrag", "1.3×")):
        ratios = []
        for _key, g in rows.groupby(["panel", "workflow"], sort=False):
            t = g.set_index("policy")["makespan_s"]
            ratios.append(t[base] / t["hedra"])
        r = np.asarray(ratios)
        out.append(Comparison(f"offline total time, {base} / hedra (mean over bars; range)", paper,
                              f"{r.mean():.2f}× ({r.min():.2f}–{r.max():.2f}×)"))
    return out


def _compare_14(rows: pd.DataFrame) -> list[Comparison]:
    s = _speedups(rows, "flashrag")
    return [Comparison("mean latency, flashrag / hedra (max; range over points where hedra ≤ 10 s)", "5.5×",
                       f"{s.max():.1f}× ({_span(s)})" if len(s) else "n/a"),
            Comparison("throughput (sustainable rate), hedra / flashrag (per mix)", "3.3×",
                       ", ".join(_rate_ratios(rows, ("flashrag",))))]


def _compare_16(rows: pd.DataFrame) -> list[Comparison]:
    out = []
    for label in ("sub-stages", "sub-stages (artifact)"):
        ratios = []
        for panel in dict.fromkeys(rows["panel"]):
            base, split = _series(rows, panel, "no split"), _series(rows, panel, label)
            ratios += list((base / split).to_numpy())
        out.append(Comparison(f"retrieval latency, no split / {label} (all rates, both nprobe)", "1.09–1.77×",
                              _span(np.asarray(ratios))))
    return out


WORKFLOWS = ("one-shot", "hyde", "recomp", "multistep", "irg")

FIGURES: dict[int, Figure] = {f.number: f for f in (
    Figure(12, "Fig. 12: online mean latency vs request rate (Poisson; nprobe 128/256/512 rows)", _compare_12,
           "{mix}, nprobe {nprobe}", shape=(3, 5), quick_panels=tuple(f"{w}@256" for w in WORKFLOWS)),
    Figure(13, "Fig. 13: offline total time of 1024 requests, normalised to hedra", _compare_13, "nprobe {nprobe}",
           cap=2.0),
    Figure(14, "Fig. 14: concurrent workflow mixes, mean latency vs request rate (nprobe 128)", _compare_14,
           "{mix}, nprobe {nprobe}", shape=(2, 2)),
    Figure(16, "Fig. 16: retrieval alone, mean retrieval latency vs rate, sub-stages on and off", _compare_16,
           "{mix}, nprobe {nprobe}", shape=(1, 2), cap=None, ylabel="mean retrieval latency (s)"),
)}


@dataclass
class FigureResult:
    figure: Figure
    rows: pd.DataFrame
    comparisons: list[Comparison]
    wall_s: float


def figure_rows(table: pd.DataFrame) -> pd.DataFrame:
    """figure-N.csv's rows from the sweep's table: one per point and policy, the policy by its label."""
    rows = table[list(CSV_COLUMNS)].rename(columns=CSV_COLUMNS)
    return rows.assign(workflow=rows["workflow"].str.replace(",", "+"))


def _panels(fig: Figure, rows: pd.DataFrame) -> list[tuple[str, str]]:
    """(panel tag, title) of each panel that ran, in grid order."""
    out = []
    for key, g in rows.groupby("panel", sort=False):
        mix = " + ".join(dict.fromkeys(w for wf in g["workflow"] for w in wf.split("+")))
        out.append((str(key), fig.panel_title.format(mix=mix, nprobe=int(g["nprobe"].iloc[0]))))
    return out


def run_figure(number: int, out_dir: Path, runner: Runner, *, duration_s: float | None = None, quick: bool = False,
               log: bool = False, progress: Callable[[int, int], None] = lambda _d, _t: None) -> FigureResult:
    """Run figure `number`'s spec and write figure-N.png, figure-N.csv (one row per point and
    policy), figure-N-paper.csv (quantity, paper, hedra) and the sweep's folder (sweep/) into `out_dir`."""
    fig = FIGURES[number]
    started = time.perf_counter()
    spec = fig.run_spec(duration_s, quick)
    with atomic_dir(out_dir) as tmp:
        table = run_sweep(spec, expand(spec, fig.spec_path), tmp / "sweep", runner, progress)
        rows = figure_rows(table)
        comparisons = fig.compare(rows)
        panels = _panels(fig, rows)
        png = tmp / f"figure-{number}.png"
        if fig.offline:
            normalized_bars(rows, panels, png, f"{fig.title} (simulated)", fig.cap, log)
            rows = rows.drop(columns=["rate"])
        else:
            shape = fig.shape if len(panels) == fig.shape[0] * fig.shape[1] else (1, len(panels))
            latency_grid(rows, panels, shape, png, f"{fig.title} (simulated)", fig.cap, log, fig.ylabel)
        rows.to_csv(tmp / f"figure-{number}.csv", index=False, float_format="%.5g")
        pd.DataFrame([c.__dict__ for c in comparisons]).to_csv(tmp / f"figure-{number}-paper.csv", index=False)
    return FigureResult(fig, rows, comparisons, time.perf_counter() - started)
