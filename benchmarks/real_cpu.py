"""flashrag vs hedra on the real CPU backend: vLLM (CPU build) + FAISS on disjoint cores.

Builds (once, cached under $HEDRA_HOME) the tiny random-weight Llama and the Wikipedia
corpus, generates one trace shape with real questions and real probe lists at each load,
and replays it under flashrag and hedra on the same warm engines, in the same run. Prints
P50/P99 latency and flashrag's latency as a multiple of hedra's (>1: hedra is faster),
with the busy fraction of the engine and retrieval lanes.

    python benchmarks/real_cpu.py [--workflow irg] [--rates 2,8] [--duration 30] [--seed 1]
"""

from __future__ import annotations

import argparse
import os

POLICIES = ("flashrag", "hedra")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workflow", default="irg", help="workflow name(s), comma-separated")
    ap.add_argument("--rates", default="2,8", help="arrival rates (req/s), comma-separated")
    ap.add_argument("--duration", type=float, default=30.0, help="seconds of arrivals per load")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--nprobe", type=int, default=None, help="default: nlist/8")
    ap.add_argument("--profile", default=None, help="measured profile of the rig (default: the shipped CPU profile)")
    args = ap.parse_args()
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    from backends.real import RealBackend, RealOptions
    from backends.real_trace import realize_trace
    from hwmodel.latency import LatencyModel
    from hwmodel.profile import DEFAULT_CPU_PROFILE, load_profile
    from ragraph.policies import parse_policy
    from ragraph.workflows import WorkflowRegistry
    from runs.run import run_real
    from traces.generate import TraceConfig, generate_trace
    from traces.schema import TraceRequest, to_request

    prof = load_profile(args.profile or DEFAULT_CPU_PROFILE)
    body = RealBackend.open(RealOptions.of_profile(prof), progress=lambda m: print(f"[setup] {m}", flush=True))
    costs = LatencyModel(prof)
    nlist = body.retriever.nlist
    nprobe = args.nprobe or max(1, nlist // 8)
    print(f"index: {body.retriever.ntotal} passages, nlist {nlist}, nprobe {nprobe}; engine cores"
          f" {list(body.gen_cores)}, retrieval cores {list(body.retrieval_cores)}; cost model: profile {prof.name}")
    registry = WorkflowRegistry()
    workflows = tuple(w.strip() for w in args.workflow.split(","))
    for rate in (float(r) for r in args.rates.split(",")):
        cfg = TraceConfig(workflows, rate, args.duration, seed=args.seed, nprobe=nprobe, nlist=nlist)
        rows = realize_trace(generate_trace(cfg, registry), body.corpus, body.embedder, seed=args.seed)
        requests = [to_request(TraceRequest.model_validate(r), registry) for r in rows]
        results = {}
        for policy in POLICIES:
            s = run_real(body, requests, parse_policy(policy), costs, timeline=False).summary
            results[policy] = s
        print(f"\n{args.workflow} at {rate:g} req/s: {len(requests)} requests, {args.duration:.0f} s of arrivals,"
              f" seed {args.seed}")
        print(f"{'policy':10s} {'done':>5s} {'P50 s':>7s} {'P99 s':>7s} {'FR/x P50':>9s} {'FR/x P99':>9s}"
              f" {'gen busy':>9s} {'retr busy':>9s}")
        ref = results["flashrag"]["latency_s"]
        for policy, s in results.items():
            lat, util = s["latency_s"], s["lane_utilization"]
            print(f"{policy:10s} {s['completed']:5d} {lat['p50']:7.3f} {lat['p99']:7.3f}"
                  f" {ref['p50'] / lat['p50']:9.2f} {ref['p99'] / lat['p99']:9.2f}"
                  f" {util['gpu_gen']:9.2f} {util['cpu_retrieval']:9.2f}")
    body.close()


if __name__ == "__main__":
    main()
