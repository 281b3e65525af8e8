"""A sparse trace costs what its requests cost, not its span: the same requests spread over 7 days
and compressed 500x, simulated in process (goal: spread <= 1.5x compressed).

The trace: 7,106 Mooncake-format lines (seeded): arrivals uniform over 7 days, prompts of
1,000-4,000 tokens whose first two 512-token blocks are one of 20 shared system prompts (hash
ids), outputs of 20-180 tokens; imported as `hedra trace import mooncake` does (gen-only), once
as is and once with every timestamp divided by 500. Spread out, each request is alone in the
engine, so it takes ~5x more engine steps than compressed; the simulator advances a quiet run of
decode steps with one timeout, and keeps that run's timeline slices as its rows until the
timeline is read (`sim/timeline.py`), so the spread run's cost is close to the compressed one's.
What is left is per engine step: pricing each decode step (`GenEngineModel.decode_run`), the
core's `complete_quiet`, and the rows kept for the timeline.

Each figure is the median of `--repeats` runs of `Simulation.run()` (timeline kept, as `hedra
sim` keeps it) under `flashrag`; CPU seconds (the process's own) are printed beside wall seconds,
as the machine may be shared.

    python benchmarks/sparse_trace.py [--repeats 3] [--requests 7106] [--policy flashrag] [--no-timeline]
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import tempfile
import time
from pathlib import Path

from hwmodel.latency import LatencyModel
from hwmodel.profile import load_profile
from ragraph.policies import make_policy
from ragraph.workflows import WorkflowRegistry
from sim.executor import Simulation
from traces.mooncake import import_mooncake
from traces.schema import TraceRequest, to_request

DAYS = 7
COMPRESS = 500


def mooncake_lines(n: int, span_ms: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    stamps = sorted(rng.randrange(span_ms) for _ in range(n))
    rows = []
    for i, ts in enumerate(stamps):
        blocks = rng.randint(2, 7)
        system = rng.randrange(20)
        ids = [system * 2, system * 2 + 1, *range(100 + 8 * i, 100 + 8 * i + blocks - 2)]
        rows.append({"timestamp": ts, "input_length": blocks * 512 - rng.randrange(400),
                     "output_length": rng.randint(20, 180), "hash_ids": ids})
    return rows


def requests_of(rows: list[dict], tmp: Path, name: str):
    path = tmp / f"{name}.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    registry = WorkflowRegistry()
    return [to_request(TraceRequest.model_validate(r), registry) for r in import_mooncake(path, "gen-only")]


def timed(requests, policy: str, repeats: int, timeline: bool = True) -> tuple[float, float, float, int]:
    """(median wall s, median CPU s, simulated s, engine steps) of in-process runs."""
    latency = LatencyModel(load_profile())
    walls, cpus = [], []
    for _ in range(repeats):
        sim = Simulation(requests, make_policy(policy, latency), latency, timeline=timeline)
        cpu = time.process_time()
        result = sim.run()
        cpus.append(time.process_time() - cpu)
        walls.append(result.wall_s)
    steps = sum(1 for e in result.timeline if e[0] == "gpu_gen") if timeline else -1
    return statistics.median(walls), statistics.median(cpus), result.sim_s, steps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--requests", type=int, default=7106)
    ap.add_argument("--policy", default="flashrag")
    ap.add_argument("--no-timeline", action="store_true", help="keep no timeline (a slice per engine step)")
    args = ap.parse_args()
    rows = mooncake_lines(args.requests, DAYS * 86400 * 1000)
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        spread = requests_of(rows, tmp, "spread")
        compressed = requests_of([{**r, "timestamp": r["timestamp"] // COMPRESS} for r in rows], tmp, "compressed")
    figures = {}
    for label, reqs in (("spread", spread), ("compressed", compressed)):
        wall, cpu, sim_s, steps = timed(reqs, args.policy, args.repeats, not args.no_timeline)
        figures[label] = (wall, cpu)
        print(f"{label:10s}: {len(reqs)} requests over {sim_s:9.0f} simulated s, {steps} engine steps:"
              f" {wall:.2f} s wall, {cpu:.2f} s CPU ({sim_s / wall:.0f}x real time)")
    (ws, cs), (wc, cc) = figures["spread"], figures["compressed"]
    print(f"spread / compressed: {ws / wc:.2f}x wall, {cs / cc:.2f}x CPU (goal <= 1.5x)")


if __name__ == "__main__":
    main()
