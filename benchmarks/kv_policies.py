"""KV policies on KVFlow's agent workloads, simulated on the H100 profile: kvflow against lru.

KVFlow (Pan et al., arXiv 2507.07400) reports, on an H100 with Qwen2.5-32B against SGLang's
hierarchical radix cache: up to 1.83x on single workflows with large prompts, up to 2.19x with
many concurrent workflows; eviction alone 1.11x, with prefetch 1.29x. Hedra's `kvflow` is the
eviction part (no host tier, no prefetch yet), so its figure to set beside is the 1.11x; our
`lru` baseline recomputes what it evicted (no host tier either).

Workloads (`hedra trace gen`, 10 agents, fixed prompts declared as shared prefix blocks; the
profile's KV cache holds 23,920 x 16 = 382,720 tokens, so each workload's fixed prompts are
made to exceed it; 7680-token prompts stand for KVFlow's 8192, the profile's max_model_len
being 8192):
A. concurrent looping workflows (KVFlow's setting: a workflow calls its agents in turn, round
   after round, here 3 rounds = 30 steps): N workflows arrive within the first second, each
   with its own agents; large prompts (7680/32/32, N = 8: 614k tokens of fixed prompts) and
   many workflows (64 x 1024/32/32: 655k; 64 x 512/32/32: 328k, which fits);
B. a stream of requests (Poisson, `--rates`), each one pass over the 10 agents of one of
   `sets` workflows taken in turn: 7680/32/32 over 8 workflows; agent-branch (levels 1, 2, 1,
   2, ...) the same.
Each is run under the `hedra` scheduling policy with `--kv-policy lru` and `kvflow`; printed:
mean and P50 request latency, the ratio lru / kvflow, and the prompt tokens served from cache.

    python benchmarks/kv_policies.py [--duration 120] [--rates 0.5,1,2]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from hwmodel.profile import load_profile
from ragraph.kvpolicy import parse_kv_policy
from ragraph.policies import parse_policy
from runs.run import simulate
from traces.generate import TraceConfig, generate_trace, write_jsonl
from traces.schema import load_trace

LOOPING = [  # (name, workflow, fixed/dynamic/output tokens, concurrent workflows)
    ("A large prompts, 8 workflows", "agent-chain", (7680, 32, 32), 8),
    ("A 64 workflows, 1024-token prompts", "agent-chain", (1024, 32, 32), 64),
    ("A 64 workflows, 512-token prompts", "agent-chain", (512, 32, 32), 64),
    ("A branches, 8 workflows", "agent-branch", (7680, 32, 32), 8),
]
STREAM = [  # (name, workflow, fixed/dynamic/output tokens, workflows taken in turn)
    ("B stream, 8 workflows", "agent-chain", (7680, 32, 32), 8),
    ("B stream, branches, 8 workflows", "agent-branch", (7680, 32, 32), 8),
]


def compare(name: str, rate: float, cfg: TraceConfig, profile, tmp: str) -> None:
    path = Path(tmp) / "t.jsonl"
    write_jsonl(generate_trace(cfg), path)
    requests = load_trace(path)
    out = {}
    for kv in ("lru", "kvflow"):
        s = simulate(requests, parse_policy("hedra"), profile, timeline=False, kv_policy=parse_kv_policy(kv)).summary
        out[kv] = (s["latency_s"]["mean"], s["latency_s"]["p50"], s["kv_cache"]["hit_rate"], s["completed"],
                   s["requests"])
    (lm, lp, lh, lc, n), (km, kp, kh, kc, _) = out["lru"], out["kvflow"]
    assert lc == kc == n, f"{name} at {rate}: not every request completed"
    print(f"{name:36} {n:4d} {rate:5g} {lm:9.2f} {km:9.2f} {lm / km:6.2f} {lp:8.2f} {kp:8.2f} {lp / kp:6.2f}"
          f" {lh:8.1%} {kh:7.1%}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--duration", type=float, default=120.0, help="seconds of arrivals per trace")
    ap.add_argument("--rates", default="0.5,1,2", help="arrival rates (workflows per second), comma-separated")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    profile = load_profile()
    print(f"profile {profile.name}: KV cache {profile.kv_capacity_blocks()} blocks of {profile.engine.block_size}")
    print(f"{'workload':36} {'reqs':>4} {'rate':>5} {'lru mean':>9} {'kvflow':>9} {'ratio':>6} {'lru P50':>8}"
          f" {'kvflow':>8} {'ratio':>6} {'hit lru':>8} {'kvflow':>7}")
    with tempfile.TemporaryDirectory() as tmp:
        for name, workflow, tokens, n in LOOPING:
            cfg = TraceConfig((workflow,), float(n), 1.0, args.seed, iterations=30, agent_tokens=tokens,
                              agent_sets=n, agent_count=10)
            compare(name, float(n), cfg, profile, tmp)
        for name, workflow, tokens, sets in STREAM:
            for rate in (float(r) for r in args.rates.split(",")):
                cfg = TraceConfig((workflow,), rate, args.duration, args.seed, iterations=10, agent_tokens=tokens,
                                  agent_sets=sets)
                compare(name, rate, cfg, profile, tmp)

if __name__ == "__main__":
    main()
