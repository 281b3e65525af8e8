"""`hedra sim|list`: one simulated run, and what the commands accept."""

from __future__ import annotations

import gc
from pathlib import Path
from typing import Annotated

import typer

from experiments.cli.common import (
    UsageError,
    WorkflowsOpt,
    app,
    measured_space_note,
    user_errors,
)
from experiments.listing import KINDS, workflow_lines
from experiments.listing import lines as listing_lines
from experiments.workflowfile import load_workflows
from hwmodel.profile import DEFAULT_PROFILE, load_profile
from ragraph.kvpolicy import DEFAULT_KV_POLICY, KV_POLICIES, parse_kv_policy
from ragraph.policies import POLICIES, PolicyError, parse_policy
from runs.outdir import check_output_dir
from traces.schema import load_trace


@app.command("sim")
def sim(
    trace: Annotated[Path, typer.Option(help="Trace file (JSON Lines).")],
    policy: Annotated[str, typer.Option(help=f"Policy spec: {', '.join(POLICIES)}, with options, e.g."
                                             " hedra:no-wavefront (hedra list policies).")],
    out: Annotated[Path, typer.Option(help="Output folder.")],
    profile: Annotated[str, typer.Option(help="Shipped profile name (hedra list profiles) or a profile file.")
                       ] = DEFAULT_PROFILE,
    seed: Annotated[int, typer.Option(help="Seed for stochastic result models.")] = 0,
    workflows: WorkflowsOpt = None,
    kv_policy: Annotated[str, typer.Option(help=f"KV-cache policy: {', '.join(KV_POLICIES)}.")] = DEFAULT_KV_POLICY,
) -> None:
    """Simulate a trace under a policy; write requests.parquet, summary.json, timeline.json."""
    from runs.outputs import lane_tracks, write_run
    from runs.run import simulate

    with user_errors():
        check_output_dir(out)
        choice = parse_policy(policy)  # refuse a bad spec before anything runs
        kv = parse_kv_policy(kv_policy)
        prof = load_profile(profile)
        requests = load_trace(trace, load_workflows(workflows), nlist=prof.index.nlist, index=prof.index.identity,
                              target=f"the profile {prof.name} describes index {prof.index.name}"
                                     f" ({prof.index.identity or 'no identity'}); calibrate a profile on that index"
                                     " (hedra calibrate) or regenerate the trace")
        gc.freeze()  # the trace lives as long as the command: no collection walks its objects (~0.1 s of irg's)
        try:
            try:
                run = simulate(requests, choice, prof, seed=seed, meta={"trace": str(trace)}, kv_policy=kv)
            except PolicyError as exc:  # the policy cannot run this trace's requests (Policy.accepts)
                raise UsageError(f"{trace}: {exc}") from None
            hw = prof.hardware
            write_run(out, run.result.records, run.summary, run.result.timeline,
                      lane_tracks(hw.gpu, hw.gen_cores, hw.retrieval_cores))
        finally:
            gc.unfreeze()  # (a caller in the same process, e.g. a test, collects as before)
    s = run.summary
    lat = s["latency_s"]
    latency = f"latency P50 {lat['p50']:.3f} s, P99 {lat['p99']:.3f} s" if s["completed"] else "no latency"
    q = s.get("quality")
    if isinstance(q, dict) and q.get("f1_mean") is not None:  # a run that chose synthesis configurations
        latency += f"; F1 {q['f1_mean']:.3f} ({q['source']})"
    latency += measured_space_note(s)
    typer.echo(f"{s['completed']}/{s['requests']} completed, {s['failed']} failed; {latency};"
               f" {s['sim_s']:.1f} simulated s in {s['wall_s']:.2f} s -> {out}")


@app.command("list")
def list_(
    kind: Annotated[str, typer.Argument(help="policies, workflows or profiles.",
                                        metavar="policies|workflows|profiles")],
    workflows: WorkflowsOpt = None,
) -> None:
    """Print the policies (with their options), workflows or shipped profiles a command accepts."""
    with user_errors():
        if kind not in KINDS:
            raise UsageError(f"hedra list {kind}: expected one of {', '.join(KINDS)}")
        registry = load_workflows(workflows) if workflows is not None else None
        text = workflow_lines(registry) if kind == "workflows" else listing_lines(kind)
    typer.echo("\n".join(text))

