"""kvflow against vLLM's LRU on the real CPU body, and the simulator's prediction of the same runs.

KVFlow's looping setting, scaled to the CPU: `--workflows` concurrent agent-chain workflows
(each its own set of `--agents` agents called in turn, `--iterations` calls per workflow), each
agent's fixed prompt `--fixed` tokens (declared as shared prefix blocks), a dynamic part and a
short output; the engine's KV cache `--kv-cache-gib` (default 0.01 GiB: 40 blocks of 128
tokens with the tiny model), so the fixed prompts (4 x 4 x 512 tokens = 64 blocks) cannot all
stay cached: vLLM's LRU evicts the prompt a workflow calls next, kvflow (backends/kv_order.py)
keeps the prompts due soonest.

One real body (tiny model, the shipped CPU profile with the KV cache resized), one warm-up
replay, then `--repeats` rounds of lru and kvflow in turn, each replayed on the real body and
on the simulator with the same profile (`calibration.validate.validate_case`, the cell
`hedra validate --kv-policy lru,kvflow:no-prefetch,kvflow` makes). Printed per run: real and simulated P50/P99,
their errors, prompt tokens from cache; then the medians over the rounds and the ratios
lru / each on both bodies, and what the prefetches did. Real times on a shared machine are noisy: the load average is
printed before and after.

    python benchmarks/kv_real.py [--repeats 3] [--kv-cache-gib 0.01] [--policy hedra]
        [--kv-policies lru,kvflow:no-prefetch,kvflow]
"""

from __future__ import annotations

import argparse
import os
import statistics

# vLLM's LRU; kvflow's eviction order alone; with prefetch (on this body: a prefill-only warm-up of each
# prefix due within load_ahead steps; the simulator has no host tier here, so it predicts no prefetch)
POLICIES = ("lru", "kvflow:no-prefetch", "kvflow")


def requests_of(args):
    from ragraph.workflows import WorkflowRegistry
    from traces.generate import TraceConfig, generate_trace
    from traces.schema import TraceRequest, to_request

    registry = WorkflowRegistry()
    cfg = TraceConfig(("agent-chain",), 8.0, 3.0, args.seed, iterations=args.iterations,
                      agent_tokens=(args.fixed, args.dynamic, args.output), agent_sets=args.workflows,
                      agent_count=args.agents)
    rows = generate_trace(cfg, registry)[: args.workflows]
    return [to_request(TraceRequest.model_validate(row), registry) for row in rows]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--kv-cache-gib", type=float, default=0.01)
    ap.add_argument("--policy", default="hedra")
    ap.add_argument("--workflows", type=int, default=4)
    ap.add_argument("--agents", type=int, default=4)
    ap.add_argument("--iterations", type=int, default=24)
    ap.add_argument("--fixed", type=int, default=512)
    ap.add_argument("--dynamic", type=int, default=64)
    ap.add_argument("--output", type=int, default=8)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--kv-policies", default=",".join(POLICIES), help="lru first, then the KV policies to compare")
    args = ap.parse_args()
    from ragraph.kvpolicy import split_kv_policies

    policies = tuple(split_kv_policies(args.kv_policies))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    from backends.assembly import profile_of_body, real_options
    from backends.real import RealBackend
    from calibration.validate import Case, validate_case
    from experiments.cli.real import with_kv_cache
    from ragraph.kvpolicy import parse_kv_policy
    from ragraph.policies import parse_policy
    from runs.run import run_real

    prof = with_kv_cache(profile_of_body(None, "cpu"), args.kv_cache_gib)
    choice = parse_policy(args.policy)
    requests = requests_of(args)
    case = Case("agent-chain", 0.0, requests, "kv_real")
    print(f"profile {prof.name}, KV cache {args.kv_cache_gib} GiB = {prof.kv_capacity_blocks()} blocks;"
          f" {len(requests)} workflows x {args.iterations} calls, {args.agents} agents each,"
          f" {args.fixed}/{args.dynamic}/{args.output} tokens; load average {os.getloadavg()}", flush=True)
    body = RealBackend.open(real_options("cpu", None, None, None, None, prof))
    try:
        from hwmodel.latency import LatencyModel

        run_real(body, requests, choice, LatencyModel(prof), timeline=False, text=False,
                 kv_policy=parse_kv_policy("kvflow"))  # warm-up: every shape the runs below take
        rows: dict[str, list[dict]] = {kv: [] for kv in policies}
        print(f"{'kv':18} {'real P50':>9} {'sim P50':>8} {'err':>7} {'real P99':>9} {'sim P99':>8} {'err':>7}"
              f" {'hit real':>9} {'hit sim':>8} {'evicted real/sim':>17}", flush=True)
        for _ in range(args.repeats):
            for kv in policies:
                cell, _, _ = validate_case(body, prof, case, choice, kv_policy=parse_kv_policy(kv))
                rows[kv].append(cell)
                r, s, k = cell["real"], cell["sim"], cell["kv_cache"]
                print(f"{kv:18} {r['p50']:9.3f} {s['p50']:8.3f} {cell['p50_error']:+7.1%} {r['p99']:9.3f}"
                      f" {s['p99']:8.3f} {cell['p99_error']:+7.1%} {k['real']['hit_rate']:9.1%}"
                      f" {k['sim']['hit_rate']:8.1%} {k['real']['evicted_blocks']:>8}/{k['sim']['evicted_blocks']}",
                      flush=True)
    finally:
        body.close()
    med = {kv: {f"{b}_{p}": statistics.median(c[b][p] for c in cells) for b in ("real", "sim") for p in ("p50", "p99")}
           for kv, cells in rows.items()}
    for kv, m in med.items():
        print(f"median {kv}: real P50 {m['real_p50']:.3f} s, P99 {m['real_p99']:.3f} s; sim P50 {m['sim_p50']:.3f} s,"
              f" P99 {m['sim_p99']:.3f} s; errors P50 {m['sim_p50'] / m['real_p50'] - 1:+.1%},"
              f" P99 {m['sim_p99'] / m['real_p99'] - 1:+.1%}")
    for kv in policies[1:]:
        for b in ("real", "sim"):
            print(f"lru / {kv} ({b}): P50 {med['lru'][f'{b}_p50'] / med[kv][f'{b}_p50']:.2f}x,"
                  f" P99 {med['lru'][f'{b}_p99'] / med[kv][f'{b}_p99']:.2f}x")
    for kv in policies[1:]:
        pf = [c["kv_cache"]["real"] for c in rows[kv] if "prefetches" in c["kv_cache"]["real"]]
        if not pf:
            continue
        print(f"{kv} prefetch (real, per run): issued {[p.get('prefetches') for p in pf]}, used"
              f" {[p.get('prefetches_used') for p in pf]}, wasted {[p.get('prefetches_wasted') for p in pf]}")
    print(f"load average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
