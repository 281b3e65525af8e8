"""`hedra demo`: the default what-if study, a sweep spec shipped with the project.

`experiments/specs/demo.toml` simulates the five HedraRAG workflows under `langchain`,
`flashrag`, `hedra` and hedra's ablations (each technique off) at a range of Poisson
request rates on the default analytic profile. The demo runs it with the sweep machinery
(`experiments.sweep`) into a folder that appears whole or not at all, then writes a table
of P50/P99 latency with each policy's speedup over each baseline, one latency-versus-rate
plot per workflow (the shape of the paper's Figure 12) and one of speedups over flashrag.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import pandas as pd

from experiments.expand import expand
from experiments.sweep import Runner, run_sweep
from experiments.sweepspec import SweepSpec, load_spec
from runs.outdir import atomic_dir

DEMO_SPEC = Path(__file__).parent / "specs" / "demo.toml"
BASELINES = ("langchain", "flashrag")
COLUMNS = ["workflow", "rate", "policy", "requests", "completed", "failed", "mean_s", "p50_s", "p99_s", "sim_s",
           "sim_wall_s"]


def demo_spec(profile: str, duration_s: float, seed: int) -> SweepSpec:
    """The shipped spec with the demo's options applied."""
    spec = load_spec(DEMO_SPEC)
    return spec.model_copy(update={"profiles": [profile], "duration_s": duration_s, "seeds": [seed]})


def run_demo(out_dir: Path, runner: Runner, *, profile: str, duration_s: float = 60.0, seed: int = 2025,
             progress: Callable[[int, int], None] = lambda done, total: None) -> pd.DataFrame:
    """Run the study; write table.csv, summary.json, the sweep's table and plots into `out_dir`."""
    spec = demo_spec(profile, duration_s, seed)
    cells = expand(spec, DEMO_SPEC)
    started = time.perf_counter()
    with atomic_dir(out_dir) as tmp:
        sweep = run_sweep(spec, cells, tmp, runner, progress)
        table = with_speedups(sweep[COLUMNS])
        table.to_csv(tmp / "table.csv", index=False, float_format="%.4f")
        meta = {"profile": str(sweep["profile"].iloc[0]), "trace_duration_s": duration_s, "seed": seed,
                "policies": spec.policy_specs(), "wall_s": time.perf_counter() - started}
        (tmp / "summary.json").write_text(json.dumps({**meta, "runs": table.to_dict("records")}, indent=2) + "\n")
    return table


def with_speedups(table: pd.DataFrame) -> pd.DataFrame:
    """Add each row's P50/P99 speedup over each baseline (baseline latency / the row's) at the
    same workflow and rate: one value per row, the row's own."""
    out = table.copy()
    for base in BASELINES:
        b = table[table["policy"] == base].set_index(["workflow", "rate"])[["p50_s", "p99_s"]]
        joined = out.join(b.rename(columns=lambda c: f"base_{c}"), on=["workflow", "rate"])
        out[f"p50_x_vs_{base}"] = joined["base_p50_s"] / out["p50_s"]
        out[f"p99_x_vs_{base}"] = joined["base_p99_s"] / out["p99_s"]
    return out
