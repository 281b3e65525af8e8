"""`hedra trace gen|stats`: make and inspect workload traces."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Annotated

import typer

from experiments.cli.common import (
    UsageError,
    WorkflowsOpt,
    app,
    user_errors,
)
from experiments.workflowfile import load_workflows
from ragraph.workflows import BUILTIN_WORKFLOWS, WorkflowError
from runs.outdir import check_output_file, output_errors
from traces.schema import TraceError, load_trace

trace_app = typer.Typer(help="Make and inspect workload traces.", no_args_is_help=True)

app.add_typer(trace_app, name="trace")


@trace_app.command("gen")
def trace_gen(
    workflow: Annotated[str, typer.Option(
        help=f"Workflow name ({', '.join(BUILTIN_WORKFLOWS)}, metis, or one of --workflows), or several comma-separated"
             " (equal mix).")],
    rate: Annotated[float, typer.Option(help="Mean arrivals per second.")],
    duration: Annotated[float, typer.Option(help="Seconds of arrivals.")],
    out: Annotated[Path, typer.Option(help="Trace file to write (JSON Lines).")],
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    arrival: Annotated[str, typer.Option(help="poisson or gamma.")] = "poisson",
    cv: Annotated[float, typer.Option(help="Gap coefficient of variation (gamma; >1 is bursty).")] = 1.0,
    nprobe: Annotated[int | None, typer.Option(
        help="IVF lists searched per retrieval (default 256; with --corpus, the corpus nlist/8).")] = None,
    k: Annotated[int, typer.Option(help="Passages kept per retrieval.")] = 1,
    nlist: Annotated[int | None, typer.Option(
        help="IVF lists of the index the trace targets (default 4096; with --corpus, the corpus index's).")] = None,
    zipf: Annotated[float, typer.Option(help="Zipf exponent of list popularity.")] = 0.8,
    overlap: Annotated[float, typer.Option(help="Fraction of lists a follow-up retrieval keeps.")] = 0.5,
    iterations: Annotated[int | None, typer.Option(help="Fixed loop iterations (default: per workflow).")] = None,
    workflows: WorkflowsOpt = None,
    corpus: Annotated[str | None, typer.Option(
        help="Real corpus: 'wiki' (the default Wikipedia corpus, built on first use) or a folder made by"
             " `hedra corpus build`; writes real questions, queries and the index's probe lists.")] = None,
    questions: Annotated[Path | None, typer.Option(
        help="FlashRAG dataset JSONL (question, golden_answers) whose questions the trace asks, in order;"
             " needs --corpus.")] = None,
    dataset: Annotated[str | None, typer.Option(
        help="Named dataset whose questions the trace asks, in order: 'fanoutqa' (the FanOutQA dev set, from the"
             " fanoutqa package; its sub-questions are the follow-up queries); needs --corpus.")] = None,
    agent_tokens: Annotated[str, typer.Option(
        help="Agent workflows: FIXED/DYNAMIC/OUTPUT tokens of each agent (the fixed prompt is shared"
             " prefix blocks).")] = "8192/32/32",
    agent_sets: Annotated[int, typer.Option(
        help="Agent workflows: distinct workflows (sets of agent prompts); requests take them in turn.")] = 1,
    agent_system: Annotated[int, typer.Option(
        help="Agent workflows: leading tokens of every fixed prompt shared by all agents of a set.")] = 0,
    agent_count: Annotated[int, typer.Option(
        help="Agent workflows: distinct agents, called in turn (0: one per step; with --iterations 30 and"
             " --agent-count 10, each agent runs 3 times).")] = 0,
) -> None:
    """Generate a trace: synthetic, or with real questions and probe lists from a corpus (--corpus)."""
    with user_errors():
        check_output_file(out)
        registry = load_workflows(workflows)
        names = tuple(w.strip() for w in workflow.split(",") if w.strip())
        if not names:
            raise UsageError("--workflow names no workflow")
        for name in names:
            registry.get(name)
        if questions is not None and corpus is None:
            raise UsageError("--questions needs --corpus (the probe lists come from the corpus index)")
        if dataset is not None and (corpus is None or questions is not None):
            raise UsageError("--dataset needs --corpus (the probe lists come from the corpus index)" if corpus is None
                             else "--dataset and --questions both name the questions; pass one")
        real, asked = None, None
        if corpus is not None:
            from backends.corpus import (
                FILES,
                default_corpus_dir,
                ensure_wiki_corpus,
                load_corpus,
                load_flashrag_dataset,
            )

            asked = load_flashrag_dataset(questions) if questions is not None else None
            if dataset is not None:
                from traces.questions import named_dataset

                asked = named_dataset(dataset)
            if corpus == "wiki" and not (default_corpus_dir() / FILES["manifest"]).exists():
                typer.echo(f"building the Wikipedia corpus into {default_corpus_dir()} (once; minutes)", err=True)
            real = ensure_wiki_corpus(progress=sys.stderr.isatty()) if corpus == "wiki" else load_corpus(corpus)
            if nlist is not None and nlist != real.nlist:
                raise UsageError(f"--nlist {nlist}: the corpus index at {real.path} has {real.nlist} lists;"
                                 " leave --nlist out with --corpus")
            nlist = real.nlist
            nprobe = max(1, nlist // 8) if nprobe is None else nprobe
            if nprobe > nlist:
                raise UsageError(f"--nprobe {nprobe} exceeds the {nlist} lists of the corpus index at {real.path}")
        _check_trace_options(rate=rate, duration=duration, arrival=arrival, cv=cv, k=k, zipf=zipf, overlap=overlap,
                             nprobe=256 if nprobe is None else nprobe, nlist=4096 if nlist is None else nlist,
                             iterations=iterations)
        agent = _agent_tokens(agent_tokens)
        from traces.generate import TraceConfig, generate_trace, write_jsonl  # numpy and the models: `trace gen` only

        try:
            cfg = TraceConfig(names, rate, duration, seed, arrival, cv, 256 if nprobe is None else nprobe, k,
                              4096 if nlist is None else nlist, zipf, overlap, iterations, agent_tokens=agent,
                              agent_sets=agent_sets, agent_system=agent_system, agent_count=agent_count)
            rows = generate_trace(cfg, registry)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
        if not rows:
            raise UsageError(f"no arrivals in {duration} s at {rate} req/s; raise --rate or --duration")
        if real is not None:
            from backends.corpus import embedder_for
            from backends.real_trace import realize_trace

            rows = realize_trace(rows, real, embedder_for(real), seed=seed, questions=asked,
                                 progress=sys.stderr.isatty())
        check_output_file(out)
        with output_errors(out):
            write_jsonl(rows, out)
    typer.echo(f"wrote {len(rows)} requests to {out}")


def _agent_tokens(text: str) -> tuple[int, int, int]:
    parts = text.split("/")
    try:
        fixed, dynamic, output = (int(p) for p in parts)
    except ValueError:
        raise UsageError(f"--agent-tokens {text}: expected FIXED/DYNAMIC/OUTPUT token counts, e.g. 8192/32/32"
                         ) from None
    return fixed, dynamic, output


@trace_app.command("import")
def trace_import(
    format_: Annotated[str, typer.Argument(metavar="FORMAT", help="Trace format: mooncake.")],
    file: Annotated[Path, typer.Argument(help="The trace to import.")],
    out: Annotated[Path, typer.Option(help="Hedra trace to write (JSON Lines).")],
    workflow: Annotated[str, typer.Option(
        help="Workflow of each request: one generation (gen-only), or with a retrieval before it (one-shot).")
                        ] = "gen-only",
    block_tokens: Annotated[int, typer.Option(help="Prompt tokens per hash id.")] = 512,
    nprobe: Annotated[int, typer.Option(help="IVF lists searched per retrieval (workflows that retrieve).")] = 256,
    nlist: Annotated[int, typer.Option(help="IVF lists of the index the trace targets.")] = 4096,
    k: Annotated[int, typer.Option(help="Passages kept per retrieval.")] = 1,
    seed: Annotated[int, typer.Option(help="Seed of the synthetic probe lists.")] = 0,
    workflows: WorkflowsOpt = None,
) -> None:
    """Import a public trace (Mooncake's format: timestamp ms, input_length, output_length, hash_ids)."""
    from traces.generate import write_jsonl
    from traces.mooncake import import_mooncake

    with user_errors():
        if format_ != "mooncake":
            raise UsageError(f"trace format {format_!r}: known formats: mooncake")
        check_output_file(out)
        try:
            rows = import_mooncake(file, workflow, block_tokens=block_tokens, registry=load_workflows(workflows),
                                   nprobe=nprobe, k=k, nlist=nlist, seed=seed)
        except ValueError as exc:
            if isinstance(exc, TraceError | WorkflowError):
                raise
            raise UsageError(str(exc)) from None
        with output_errors(out):
            write_jsonl(rows, out)
    typer.echo(f"wrote {len(rows)} requests to {out}")


def _check_trace_options(*, rate: float, duration: float, arrival: str, cv: float, k: int, zipf: float,
                         overlap: float, nprobe: int, nlist: int, iterations: int | None) -> None:
    """Refuse the first impossible `trace gen` option, by its name and the value typed."""
    checks = [
        ("--rate", rate, math.isfinite(rate) and rate > 0, "need a finite number of arrivals per second > 0"),
        ("--duration", duration, math.isfinite(duration) and duration > 0, "need a finite number of seconds > 0"),
        ("--arrival", arrival, arrival in ("poisson", "gamma"), "expected poisson or gamma"),
        ("--cv", cv, math.isfinite(cv) and cv > 0, "need a finite coefficient of variation > 0"),
        ("--k", k, k >= 1, "need at least 1 passage per retrieval"),
        ("--nlist", nlist, nlist >= 1, "need at least 1 list"),
        ("--nprobe", nprobe, 1 <= nprobe <= nlist, f"need 1 <= nprobe <= nlist ({nlist})"),
        ("--zipf", zipf, math.isfinite(zipf) and zipf >= 0, "need a finite exponent >= 0"),
        ("--overlap", overlap, 0 <= overlap <= 1, "need a fraction between 0 and 1"),
        ("--iterations", iterations, iterations is None or iterations >= 0, "need 0 or more"),
    ]
    for option, value, ok, need in checks:
        if not ok:
            raise UsageError(f"{option} {f'{value:g}' if isinstance(value, float) else value}: {need}")
    from traces.generate import MAX_REQUESTS

    if rate * duration > MAX_REQUESTS:
        raise UsageError(f"--rate {rate:g} x --duration {duration:g}: over {MAX_REQUESTS:,} requests; split the trace")


@trace_app.command("stats")
def trace_stats(
    trace: Annotated[Path, typer.Argument(help="Trace file (JSON Lines).")],
    workflows: WorkflowsOpt = None,
) -> None:
    """Print a trace's counts, arrival rate and burstiness, token means and list skew (JSON)."""
    from traces.stats import trace_stats as stats_of

    with user_errors():
        requests = load_trace(trace, load_workflows(workflows))
    stats = stats_of(requests)
    typer.echo(json.dumps(stats, indent=2))
    if stats["out_of_order_arrivals"]:
        typer.echo(f"note: {stats['out_of_order_arrivals']} requests arrive before a line above them;"
                   " hedra sim and hedra run sort requests by arrival_s", err=True)

