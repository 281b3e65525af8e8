"""Simulator speed: simulated seconds per wall-clock second.

Generates a 300-second `irg` trace at 12 req/s (seed 0, the default nprobe 256), writes and
reloads it as a user would, and simulates it under `hedra` (goal: >= 500x real time on a
2-core machine) and, as the in-run reference, under `flashrag`. Each policy runs
`--repeats` times; medians are printed. `--demo` also times `hedra demo` end to end.

    python benchmarks/sim_speed.py [--repeats 3] [--demo]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from hwmodel.latency import LatencyModel
from hwmodel.profile import load_profile
from ragraph.policies import make_policy
from sim.executor import Simulation
from traces.generate import TraceConfig, generate_trace, write_jsonl
from traces.schema import load_trace


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--duration", type=float, default=300.0)
    ap.add_argument("--rate", type=float, default=12.0)
    ap.add_argument("--demo", action="store_true", help="also time `hedra demo`")
    args = ap.parse_args()
    profile = load_profile()
    latency = LatencyModel(profile)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "irg.jsonl"
        t0 = time.perf_counter()
        write_jsonl(generate_trace(TraceConfig(("irg",), args.rate, args.duration, seed=0)), path)
        t1 = time.perf_counter()
        requests = load_trace(path, nlist=profile.index.nlist)
        t2 = time.perf_counter()
        print(f"trace: {len(requests)} irg requests over {args.duration:.0f} s at {args.rate:g} req/s;"
              f" generated in {t1 - t0:.2f} s, loaded in {t2 - t1:.2f} s")
        speeds = {}
        for policy in ("flashrag", "hedra"):
            runs = []
            for _ in range(args.repeats):
                res = Simulation(requests, make_policy(policy, latency), latency, timeline=False).run()
                runs.append((res.sim_s / res.wall_s, res.wall_s, res.sim_s))
            speed, wall, sim_s = (statistics.median(r[0] for r in runs), statistics.median(r[1] for r in runs),
                                  runs[0][2])
            speeds[policy] = speed
            print(f"{policy:9s} {sim_s:7.1f} simulated s in {wall:.3f} wall s (median of {args.repeats}):"
                  f" {speed:7.0f}x real time")
        print(f"hedra speed: {speeds['hedra']:.0f}x real time (goal >= 500x);"
              f" hedra/flashrag speed ratio {speeds['hedra'] / speeds['flashrag']:.2f}")
        if args.demo:
            t = time.perf_counter()
            subprocess.run([sys.executable, "-m", "experiments.cli", "demo", "--out", str(Path(tmp) / "demo")],
                           check=True, capture_output=True)
            print(f"hedra demo: {time.perf_counter() - t:.1f} s wall (goal < 120 s)")


if __name__ == "__main__":
    main()
