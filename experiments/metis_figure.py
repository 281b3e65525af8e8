"""`hedra figure metis`: delay against F1 per policy, like METIS's headline figure.

Source: RAGServe / METIS (arXiv 2412.10543), its delay-quality plots: each fixed configuration
is a point, and so are ragserve and AdaptiveRAG*. Here, in simulation on the default (H100)
profile, on a METIS-like trace of the `metis` workflow (`traces.metis`: F1 from the declared
quality model `model:metis-curves-v1`, not a measurement). Writes `points.csv` (one row per
policy: policy, p50_s, mean_s, f1, plus p95_s and the rate), `metis.png` and `metis.json`
(the points and the headline ratios). `benchmarks/metis.py` runs the same over a rate grid.
"""

from __future__ import annotations

import csv
import json
import time
from dataclasses import dataclass
from pathlib import Path

from hwmodel.profile import load_profile
from ragraph.policies import parse_policy
from runs.outdir import atomic_dir
from runs.run import simulate
from traces.generate import TraceConfig, generate_trace, write_jsonl
from traces.schema import load_trace

FIXED = (*(f"fixed:synthesis=stuff,chunks={c}" for c in (2, 5, 10, 15, 20, 30, 35)),
         *(f"fixed:synthesis=map_reduce,chunks={c},length=50" for c in (5, 10, 20, 30)),
         "fixed:synthesis=map_reduce,chunks=30,length=100",
         *(f"fixed:synthesis=map_rerank,chunks={c}" for c in (3, 5, 10)))
QUICK_FIXED = ("fixed:synthesis=stuff,chunks=5", "fixed:synthesis=stuff,chunks=10", "fixed:synthesis=stuff,chunks=20",
               "fixed:synthesis=map_reduce,chunks=10,length=50", "fixed:synthesis=map_reduce,chunks=30,length=100",
               "fixed:synthesis=map_rerank,chunks=5")
RAGSERVE = ("ragserve", "ragserve:no-profiler", "ragserve:no-batching", "ragserve:no-best-fit", "ragserve:no-history",
            "ragserve:no-feedback")
CONTRIBUTIONS = ("profiler", "batching", "best-fit")  # METIS's breakdown of its delay savings


@dataclass(frozen=True)
class MetisFigure:
    points: dict[str, dict[str, float]]  # policy -> p50_s, p95_s, mean_s, f1, throughput_rps, completed, requests
    headline: dict[str, object]
    wall_s: float


def policies(quick: bool) -> tuple[str, ...]:
    return ("ragserve", "adaptive", *QUICK_FIXED) if quick else (*RAGSERVE, "adaptive", *FIXED)


def run_points(trace: Path, names: tuple[str, ...]) -> dict[str, dict[str, float]]:
    """Each policy simulated on `trace` (a metis trace) on the default profile."""
    requests = load_trace(trace)
    profile = load_profile()
    points = {}
    for policy in names:
        s = simulate(requests, parse_policy(policy), profile, timeline=False).summary
        lat = s["latency_s"]
        points[policy] = {"p50_s": lat["p50"], "p95_s": lat["p95"], "mean_s": lat["mean"],
                          "f1": s["quality"]["f1_mean"], "throughput_rps": s["throughput_rps"],
                          "completed": s["completed"], "requests": s["requests"]}
    return points


def headline(points: dict[str, dict[str, float]]) -> dict[str, object]:
    """ragserve against the fixed configurations and adaptive (the paper's comparisons): the best
    fixed configuration by F1 and its P50 over ragserve's; the best F1 of the fixed
    configurations no slower than ragserve (the F1 gain at equal delay); the fastest fixed
    configuration at least as good as ragserve and its P50 over ragserve's (the delay at equal
    F1); and per part of ragserve switched off, its P50 over ragserve's and its F1."""
    rs = points["ragserve"]
    fixed = {p: v for p, v in points.items() if p.startswith("fixed")}
    best = max(fixed, key=lambda p: fixed[p]["f1"])
    cheaper = {p: v for p, v in fixed.items() if v["p50_s"] <= rs["p50_s"]}
    equal_delay = max(cheaper, key=lambda p: cheaper[p]["f1"]) if cheaper else None
    as_good = {p: v for p, v in fixed.items() if v["f1"] >= rs["f1"]}
    equal_f1 = min(as_good, key=lambda p: as_good[p]["p50_s"]) if as_good else None
    out: dict[str, object] = {
        "best_fixed": best, "best_fixed_f1": fixed[best]["f1"], "ragserve_f1": rs["f1"],
        "delay_ratio_vs_best_fixed": fixed[best]["p50_s"] / rs["p50_s"],
        "ragserve_at_least_as_good": rs["f1"] >= fixed[best]["f1"],
        "delay_ratio_vs_adaptive": points["adaptive"]["p50_s"] / rs["p50_s"],
        "adaptive_f1": points["adaptive"]["f1"],
        "fixed_at_equal_delay": equal_delay,
        "f1_gain_at_equal_delay": rs["f1"] / cheaper[equal_delay]["f1"] - 1 if equal_delay else None,
        "fixed_at_equal_f1": equal_f1,
        "delay_ratio_at_equal_f1": as_good[equal_f1]["p50_s"] / rs["p50_s"] if equal_f1 else None,
    }
    for part in CONTRIBUTIONS:
        if (name := f"ragserve:no-{part}") in points:
            out[part] = {"p50_ratio_without": points[name]["p50_s"] / rs["p50_s"], "f1_without": points[name]["f1"]}
    return out


def plot(points: dict[str, dict[str, float]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, v in points.items():
        if name.startswith("fixed"):
            ax.scatter(v["p50_s"], v["f1"], color="grey", s=18)
            ax.annotate(name.removeprefix("fixed:synthesis=").replace(",length=", "/L"), (v["p50_s"], v["f1"]),
                        fontsize=6, color="grey", xytext=(3, 2), textcoords="offset points")
        else:
            marker = {"ragserve": "*", "adaptive": "^"}.get(name, "o")
            ax.scatter(v["p50_s"], v["f1"], marker=marker, s=90 if marker == "*" else 40, label=name, zorder=3)
    ax.set_xscale("log")
    ax.set_xlabel("P50 delay (s, log)")
    ax.set_ylabel("F1 (model:metis-curves-v1)")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


def run_figure(out: Path, *, quick: bool = False, rate: float = 2.0, seed: int = 1) -> MetisFigure:
    """Simulate the figure's points and write its files into `out` (atomically)."""
    start = time.perf_counter()
    duration = 30.0 if quick else 100.0
    with atomic_dir(out) as tmp:
        trace = tmp / "metis.jsonl"
        write_jsonl(generate_trace(TraceConfig(("metis",), rate=rate, duration_s=duration, seed=seed)), trace)
        points = run_points(trace, policies(quick))
        head = headline(points)
        with (tmp / "points.csv").open("w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["policy", "p50_s", "mean_s", "f1", "p95_s", "rate"])
            for name, v in points.items():
                w.writerow([name, f"{v['p50_s']:.4f}", f"{v['mean_s']:.4f}", f"{v['f1']:.4f}", f"{v['p95_s']:.4f}",
                            rate])
        (tmp / "metis.json").write_text(json.dumps({"rate": rate, "points": points, "headline": head},
                                                   indent=2) + "\n")
        plot(points, tmp / "metis.png", f"METIS-like workload, Poisson {rate:g} req/s, {duration:g} s, H100 profile"
                                        " (simulated)")
    return MetisFigure(points, head, time.perf_counter() - start)
