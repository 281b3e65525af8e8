"""`hedra figure N`: HedraRAG's evaluation figures (SOSP 2025, §6) reproduced in simulation.

Each figure is data: its panels (workflow mix and nprobe), request rates, policies, axis
cap and the paper's numbers (`../shared/PAPERS.md`); one runner turns it into cells
(`experiments.cells`), runs them on a process pool, plots, and compares Hedra's values with
the paper's. What each figure shows and how each number is computed: docs/figures.md.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from experiments.cells import Cell, run_cells
from experiments.figplot import latency_grid, normalized_bars
from ragraph.policies import parse_policy
from runs.outdir import atomic_dir

SLO_S = 10.0  # the paper's latency SLO and Fig. 12/14 y-axis cap
WORKFLOWS = ("one-shot", "hyde", "recomp", "multistep", "irg")
PAPER_RATES = (4, 8, 12, 16, 20, 24, 28)  # the artifact's range(4, 30, 4), Poisson, seed 2025
QUICK_RATES = (4, 28)
BASELINES = (("langchain", "langchain"), ("flashrag", "flashrag"), ("hedra", "hedra"))
NO_EXTRAS = "no-reorder,no-spec-gen"  # Fig. 16 isolates sub-stages


@dataclass(frozen=True)
class Panel:
    key: str  # column `panel` of the CSV
    title: str
    nprobe: int
    mixes: tuple[tuple[str, ...], ...]  # one mix per line figure; one per bar group (offline)


@dataclass(frozen=True)
class Comparison:
    quantity: str
    paper: str
    hedra: str


@dataclass(frozen=True)
class Figure:
    number: int
    title: str
    panels: tuple[Panel, ...]
    policies: tuple[tuple[str, str], ...]  # (label, policy spec)
    compare: Callable[[pd.DataFrame], list[Comparison]]
    shape: tuple[int, int] = (1, 1)  # subplot grid (line figures)
    offline: bool = False  # all requests at t = 0; bars of total time normalised to hedra
    requests: int | None = None  # offline: requests per run (the artifact's)
    cap: float | None = SLO_S  # y-axis cap of the paper's plot
    quick_panels: tuple[str, ...] = ()  # panel keys kept by --quick (empty: all)
    rates: tuple[float, ...] = PAPER_RATES

    def cells(self, duration_s: float, quick: bool) -> list[Cell]:
        panels = [p for p in self.panels if not (quick and self.quick_panels) or p.key in self.quick_panels]
        policies = tuple((label, parse_policy(spec)) for label, spec in self.policies)
        if self.offline:
            n = 64 if quick else self.requests
            return [Cell(mix, 1000.0, p.nprobe, policies, requests=n, offline=True,
                         tags=(("panel", p.key),)) for p in panels for mix in p.mixes]
        rates = QUICK_RATES if quick else self.rates
        return [Cell(mix, float(r), p.nprobe, policies, duration_s=duration_s, tags=(("panel", p.key),))
                for p in panels for mix in p.mixes for r in rates]


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


def _line_panels(nprobes: tuple[int, ...], mixes: tuple[tuple[str, ...], ...]) -> tuple[Panel, ...]:
    return tuple(Panel(f"{'+'.join(m)}@{n}", f"{' + '.join(m)}, nprobe {n}", n, (m,)) for n in nprobes for m in mixes)


FIGURES: dict[int, Figure] = {f.number: f for f in (
    Figure(12, "Fig. 12: online mean latency vs request rate (Poisson; nprobe 128/256/512 rows)",
           _line_panels((128, 256, 512), tuple((w,) for w in WORKFLOWS)), BASELINES, _compare_12, shape=(3, 5),
           quick_panels=tuple(f"{w}@256" for w in WORKFLOWS)),
    Figure(13, "Fig. 13: offline total time of 1024 requests, normalised to hedra",
           tuple(Panel(f"nprobe {n}", f"nprobe {n}", n, tuple((w,) for w in WORKFLOWS)) for n in (128, 256, 512)),
           BASELINES, _compare_13, offline=True, requests=1024, cap=2.0),
    Figure(14, "Fig. 14: concurrent workflow mixes, mean latency vs request rate (nprobe 128)",
           _line_panels((128,), (("one-shot", "recomp"), ("hyde", "recomp"), ("multistep", "recomp"),
                                 ("multistep", "irg"))), BASELINES[1:], _compare_14, shape=(2, 2)),
    Figure(16, "Fig. 16: retrieval alone, mean retrieval latency vs rate, sub-stages on and off",
           _line_panels((128, 512), (("retrieval-only",),)),
           (("no split", f"hedra:substages=off,{NO_EXTRAS}"), ("sub-stages", f"hedra:{NO_EXTRAS}"),
            ("sub-stages (artifact)", f"hedra:substages=fixed,{NO_EXTRAS}")), _compare_16, shape=(1, 2), cap=None),
)}


@dataclass
class FigureResult:
    figure: Figure
    rows: pd.DataFrame
    comparisons: list[Comparison]
    wall_s: float


def run_figure(number: int, out_dir: Path, *, duration_s: float = 30.0, quick: bool = False, log: bool = False,
               workers: int | None = None, progress: Callable[[int, int], None] = lambda _d, _t: None
               ) -> FigureResult:
    """Run figure `number`'s cells and write figure-N.png, figure-N.csv (one row per cell and
    policy) and figure-N-paper.csv (quantity, paper, hedra) into `out_dir`."""
    fig = FIGURES[number]
    started = time.perf_counter()
    rows = pd.DataFrame(run_cells(fig.cells(duration_s, quick), workers, progress))
    comparisons = fig.compare(rows)
    kept = {r for r in rows["panel"]}
    panels = [(p.key, p.title) for p in fig.panels if p.key in kept]
    with atomic_dir(out_dir) as tmp:
        png = tmp / f"figure-{number}.png"
        if fig.offline:
            normalized_bars(rows, panels, png, f"{fig.title} (simulated)", fig.cap, log)
            rows = rows.drop(columns=["rate"])
        else:
            shape = fig.shape if len(panels) == len(fig.panels) else (1, len(panels))
            ylabel = "mean retrieval latency (s)" if number == 16 else "mean latency (s)"
            latency_grid(rows, panels, shape, png, f"{fig.title} (simulated)", fig.cap, log, ylabel)
        rows.to_csv(tmp / f"figure-{number}.csv", index=False, float_format="%.5g")
        pd.DataFrame([c.__dict__ for c in comparisons]).to_csv(tmp / f"figure-{number}-paper.csv", index=False)
    return FigureResult(fig, rows, comparisons, time.perf_counter() - started)
