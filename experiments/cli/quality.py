"""`hedra quality measure`: a trace's quality tables measured on the real body (RAGServe / METIS).

The command checks its inputs (a trace with gold answers, a model that answers, the
configurations) before anything loads, opens the real body, and leaves the measuring and the
writing to `calibration.quality`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from experiments.cli.common import UsageError, WorkflowsOpt, app, user_errors
from experiments.cli.real import (
    BackendOpt,
    CorpusOpt,
    GenCoresOpt,
    ModelOpt,
    RealProfileOpt,
    RetrievalCoresOpt,
    VerboseOpt,
    _replay_progress,
    body_options,
    open_body,
    vllm_logs,
)
from experiments.workflowfile import load_workflows

quality_app = typer.Typer(help="Answer quality of synthesis configurations (RAGServe / METIS).",
                          no_args_is_help=True)
app.add_typer(quality_app, name="quality")


def _model_answers(model: str | None) -> None:
    """Refuse, before anything loads, a model that does not answer (no chat template)."""
    from backends.models import answers_text, check_model, resolve_model

    if model is None or model == "tiny":
        raise UsageError(f"--model {model or 'tiny (the default)'}: random weights answer nothing; quality needs"
                         " a model that answers, e.g. --model smollm2")
    check_model(model)
    if not answers_text(resolve_model(model)):
        raise UsageError(f"--model {model}: the model does not answer (no chat template); quality needs a model"
                         " that answers, e.g. --model smollm2")


@quality_app.command("measure")
def measure(
    trace: Annotated[Path, typer.Option(help="Trace with gold answers whose synthesis is chosen at run time"
                                             " (hedra trace gen --corpus wiki --dataset fanoutqa --workflow metis).")],
    out: Annotated[Path, typer.Option(help="Trace file to write: the input with measured quality tables.")],
    model: ModelOpt = None,
    configs: Annotated[str | None, typer.Option(
        help="Configurations to measure, separated by ';' (e.g. 'stuff:chunks=3;map_rerank:chunks=3;"
             "map_reduce:chunks=3,length=25'); default: every one a policy may choose for the trace.")] = None,
    profile: RealProfileOpt = None,
    backend: BackendOpt = "cpu",
    corpus: CorpusOpt = None,
    gen_cores: GenCoresOpt = None,
    retrieval_cores: RetrievalCoresOpt = None,
    workflows: WorkflowsOpt = None,
    verbose: VerboseOpt = False,
) -> None:
    """Measure each question's answer F1 under each synthesis configuration on the real body, and write
    the trace with those quality tables (source "measured:MODEL")."""
    from rich.console import Console

    from calibration.quality import default_configs, measurable, parse_configs, source_name, write_measured
    from ragraph.synthesis import ConfigError
    from traces.schema import load_trace

    console = Console(stderr=True)
    vllm_logs(verbose)
    body = None
    try:
        with user_errors():
            if out.exists():
                raise UsageError(f"--out {out}: already exists; choose a new file")
            registry = load_workflows(workflows)
            measurable(load_trace(trace, registry), trace)  # refuse a trace without gold answers first
            try:
                chosen = parse_configs(configs) if configs is not None else None
            except ConfigError as exc:
                raise UsageError(f"--configs: {exc}") from None
            if chosen == []:
                raise UsageError("--configs names no configuration")
            _model_answers(model)
            from backends.assembly import profile_of_body
            from calibration.quality import measure as measure_all
            from hwmodel.latency import LatencyModel

            prof = profile_of_body(profile, backend)
            options = body_options(backend, model, corpus, gen_cores, retrieval_cores, prof)
            body, (requests,), prof, _ = open_body(options, prof, [trace], registry, console)
            questions = measurable(requests, trace)
            grid = chosen or default_configs(questions)
            console.print(f"measuring {len(questions)} questions x {len(grid)} configurations with {model}"
                          f" on the {backend} backend")
            with _replay_progress(console) as hook:
                measured = measure_all(body, questions, grid, LatencyModel(prof), progress=console.print,
                                       executor_hook=hook)
            given = write_measured(trace, measured, source_name(str(model)), out)
    except KeyboardInterrupt:
        typer.echo("hedra: interrupted; nothing written", err=True)
        raise typer.Exit(130) from None
    finally:
        if body is not None:
            body.close()
    means = ", ".join(f"{label} {measured.mean(label):.3f}" for label in measured.wall_s)
    typer.echo(f"measured F1 ({source_name(str(model))}): {means}; {given} requests given a table -> {out}")

