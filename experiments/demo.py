"""`hedra demo`: the default what-if study, runnable with no GPU and no download.

Simulates the five HedraRAG workflows under `langchain`, `flashrag` and `hedra` at a
range of Poisson request rates on the default analytic profile, then writes a table of
P50/P99 latency with hedra's speedup over each baseline, and one latency-versus-rate plot
per workflow (the shape of the paper's Figure 12).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import pandas as pd

from experiments.outdir import atomic_dir
from experiments.plots import latency_vs_rate
from experiments.simulate import simulate
from hwmodel.latency import LatencyModel
from hwmodel.profile import Profile
from ragraph.graph import Request
from ragraph.workflows import BUILTIN_WORKFLOWS, WorkflowRegistry
from traces.generate import TraceConfig, generate_trace
from traces.schema import TraceRequest, to_request

POLICIES = ("langchain", "flashrag", "hedra")
# request rates per workflow, spanning the baselines' knee up to hedra's (nprobe 256)
RATES: dict[str, tuple[float, ...]] = {
    "one-shot": (4, 8, 16, 24, 32, 36),
    "hyde": (4, 8, 16, 24, 32, 36),
    "recomp": (4, 8, 16, 24, 32, 36),
    "multistep": (2, 4, 8, 12, 16, 20, 24),
    "irg": (1, 2, 4, 6, 8, 10, 12),
}


def trace_requests(cfg: TraceConfig, registry: WorkflowRegistry) -> list[Request]:
    """Generate a trace in memory and turn it into requests (validated as a file would be)."""
    return [to_request(TraceRequest.model_validate(row), registry) for row in generate_trace(cfg, registry)]


def run_demo(out_dir: Path, profile: Profile, *, duration_s: float = 60.0, seed: int = 2025,
             workflows: tuple[str, ...] = tuple(BUILTIN_WORKFLOWS), rates: dict[str, tuple[float, ...]] | None = None,
             progress: Callable[[str], None] = lambda _msg: None) -> pd.DataFrame:
    """Run the study; write table.csv, summary.json and <workflow>.png into `out_dir`."""
    rates = rates or RATES
    latency = LatencyModel(profile)
    registry = WorkflowRegistry()
    rows = []
    started = time.perf_counter()
    for wf in workflows:
        for rate in rates[wf]:
            cfg = TraceConfig((wf,), float(rate), duration_s, seed=seed, nlist=profile.index.nlist)
            requests = trace_requests(cfg, registry)
            for policy in POLICIES:
                s = simulate(requests, policy, profile, seed=seed, timeline=False, latency=latency).summary
                lat = s["latency_s"]
                rows.append({"workflow": wf, "rate": rate, "policy": policy, "requests": s["requests"],
                             "completed": s["completed"], "failed": s["failed"], "mean_s": lat["mean"],
                             "p50_s": lat["p50"], "p99_s": lat["p99"], "sim_s": s["sim_s"], "wall_s": s["wall_s"]})
                if s["completed"]:
                    progress(f"{wf} @ {rate:g} req/s {policy}: P50 {lat['p50']:.2f} s, P99 {lat['p99']:.2f} s")
    table = with_speedups(pd.DataFrame(rows))
    _write(out_dir, table, profile, workflows, time.perf_counter() - started, duration_s, seed)
    return table


def with_speedups(table: pd.DataFrame) -> pd.DataFrame:
    """Add hedra's P50/P99 speedup over each baseline at the same workflow and rate."""
    hedra = table[table["policy"] == "hedra"].set_index(["workflow", "rate"])[["p50_s", "p99_s"]]
    out = table.copy()
    for base in ("langchain", "flashrag"):
        b = table[table["policy"] == base].set_index(["workflow", "rate"])[["p50_s", "p99_s"]]
        ratio = (b / hedra).rename(columns={"p50_s": f"p50_x_vs_{base}", "p99_s": f"p99_x_vs_{base}"})
        out = out.join(ratio, on=["workflow", "rate"])
    return out


def _write(out_dir: Path, table: pd.DataFrame, profile: Profile, workflows: tuple[str, ...],
           wall_s: float, duration_s: float, seed: int) -> None:
    with atomic_dir(out_dir) as tmp:
        table.to_csv(tmp / "table.csv", index=False, float_format="%.4f")
        for wf in workflows:
            latency_vs_rate(table, wf, tmp / f"{wf}.png", profile.name)
        meta = {"profile": profile.name, "profile_kind": profile.kind, "trace_duration_s": duration_s,
                "seed": seed, "policies": list(POLICIES), "wall_s": wall_s}
        (tmp / "summary.json").write_text(json.dumps({**meta, "runs": table.to_dict("records")}, indent=2) + "\n")
