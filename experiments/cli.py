"""The `hedra` command line.

Bad input (unknown policy or workflow, malformed trace, missing or inconsistent profile,
impossible option) prints one line `hedra: error: ...` naming file, line and field where
there is one, exits with code 2 and writes nothing.
"""

from __future__ import annotations

import json
import sys
import tomllib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer
from pydantic import ValidationError

from calibration.profile import DEFAULT_PROFILE, ProfileError, load_profile
from experiments.outdir import OutputError, check_output_dir
from ragraph.policies import PolicyError, make_policy
from ragraph.workflows import WorkflowError, WorkflowRegistry, WorkflowSpec
from traces.generate import TraceConfig, generate_trace, write_jsonl
from traces.schema import TraceError, load_trace

app = typer.Typer(help="Hedra: RAG serving policies, simulated (and later real).", no_args_is_help=True,
                  pretty_exceptions_enable=False, add_completion=False)
trace_app = typer.Typer(help="Make and inspect workload traces.", no_args_is_help=True)
app.add_typer(trace_app, name="trace")


class UsageError(ValueError):
    """An option value that cannot work."""


@contextmanager
def user_errors() -> Iterator[None]:
    """Turn input errors into one stderr line and exit code 2."""
    try:
        yield
    except (TraceError, ProfileError, PolicyError, WorkflowError, UsageError, OutputError) as exc:
        typer.echo(f"hedra: error: {exc}", err=True)
        raise typer.Exit(2) from None
    except OSError as exc:  # e.g. an output path under a regular file, or no permission
        where = exc.filename or ""
        typer.echo(f"hedra: error: {where}: {exc.strerror or exc}", err=True)
        raise typer.Exit(2) from None


def load_workflows(path: Path | None) -> WorkflowRegistry:
    """Built-in workflows plus those in a TOML or JSON file ([[workflow]] tables)."""
    registry = WorkflowRegistry()
    if path is None:
        return registry
    try:
        text = path.read_text()
        data = tomllib.loads(text) if path.suffix == ".toml" else json.loads(text)
    except (OSError, ValueError) as exc:
        raise WorkflowError(f"{path}: cannot read workflows ({exc})") from None
    tables = data.get("workflow") if isinstance(data, dict) else None
    if not isinstance(tables, list) or not all(isinstance(t, dict) for t in tables):
        raise WorkflowError(f"{path}: field workflow: expected a list of workflow tables ([[workflow]])")
    for i, raw in enumerate(tables):
        try:
            registry.register(WorkflowSpec.model_validate(raw))
        except ValidationError as exc:
            err = exc.errors()[0]
            field = ".".join(str(p) for p in err["loc"])
            raise WorkflowError(f"{path}: workflow[{i}] field {field}: {err['msg']}") from None
    return registry


WorkflowsOpt = Annotated[Path | None, typer.Option("--workflows", help="TOML/JSON file of extra workflows.")]


@trace_app.command("gen")
def trace_gen(
    workflow: Annotated[str, typer.Option(help="Workflow name, or several comma-separated (equal mix).")],
    rate: Annotated[float, typer.Option(help="Mean arrivals per second.")],
    duration: Annotated[float, typer.Option(help="Seconds of arrivals.")],
    out: Annotated[Path, typer.Option(help="Trace file to write (JSON Lines).")],
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    arrival: Annotated[str, typer.Option(help="poisson or gamma.")] = "poisson",
    cv: Annotated[float, typer.Option(help="Gap coefficient of variation (gamma; >1 is bursty).")] = 1.0,
    nprobe: Annotated[int, typer.Option(help="IVF lists searched per retrieval.")] = 256,
    k: Annotated[int, typer.Option(help="Passages kept per retrieval.")] = 1,
    nlist: Annotated[int, typer.Option(help="IVF lists of the index the trace targets.")] = 4096,
    zipf: Annotated[float, typer.Option(help="Zipf exponent of list popularity.")] = 0.8,
    overlap: Annotated[float, typer.Option(help="Fraction of lists a follow-up retrieval keeps.")] = 0.5,
    iterations: Annotated[int | None, typer.Option(help="Fixed loop iterations (default: per workflow).")] = None,
    workflows: WorkflowsOpt = None,
) -> None:
    """Generate a synthetic trace."""
    with user_errors():
        registry = load_workflows(workflows)
        names = tuple(w.strip() for w in workflow.split(",") if w.strip())
        if not names:
            raise UsageError("--workflow names no workflow")
        for name in names:
            registry.get(name)
        try:
            cfg = TraceConfig(names, rate, duration, seed, arrival, cv, nprobe, k, nlist, zipf, overlap, iterations)
            rows = generate_trace(cfg, registry)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
        if not rows:
            raise UsageError(f"no arrivals in {duration} s at {rate} req/s; raise --rate or --duration")
        write_jsonl(rows, out)
    typer.echo(f"wrote {len(rows)} requests to {out}")


@trace_app.command("stats")
def trace_stats(
    trace: Annotated[Path, typer.Argument(help="Trace file (JSON Lines).")],
    workflows: WorkflowsOpt = None,
) -> None:
    """Print a trace's counts, arrival rate and burstiness, token means and list skew (JSON)."""
    from traces.stats import trace_stats as stats_of

    with user_errors():
        requests = load_trace(trace, load_workflows(workflows))
    typer.echo(json.dumps(stats_of(requests), indent=2))


@app.command("sim")
def sim(
    trace: Annotated[Path, typer.Option(help="Trace file (JSON Lines).")],
    policy: Annotated[str, typer.Option(help="Policy spec, e.g. hedra or hedra:no-wavefront.")],
    out: Annotated[Path, typer.Option(help="Output folder.")],
    profile: Annotated[str, typer.Option(help="Shipped profile name or a profile file.")] = DEFAULT_PROFILE,
    seed: Annotated[int, typer.Option(help="Seed for stochastic result models.")] = 0,
    workflows: WorkflowsOpt = None,
) -> None:
    """Simulate a trace under a policy; write requests.parquet, summary.json, timeline.json."""
    from calibration.latency import LatencyModel
    from experiments.results import write_run
    from experiments.simulate import simulate

    with user_errors():
        check_output_dir(out)
        prof = load_profile(profile)
        requests = load_trace(trace, load_workflows(workflows), nlist=prof.index.nlist)
        make_policy(policy, LatencyModel(prof))  # refuse a bad spec before running
        run = simulate(requests, policy, prof, seed=seed, meta={"trace": str(trace)})
        write_run(out, run.result.records, run.summary, run.result.timeline)
    s = run.summary
    lat = s["latency_s"]
    latency = f"latency P50 {lat['p50']:.3f} s, P99 {lat['p99']:.3f} s" if s["completed"] else "no latency"
    typer.echo(f"{s['completed']}/{s['requests']} completed, {s['failed']} failed; {latency};"
               f" {s['sim_s']:.1f} simulated s in {s['wall_s']:.2f} s -> {out}")


@app.command("demo")
def demo(
    out: Annotated[Path, typer.Option(help="Output folder.")] = Path("hedra-demo"),
    profile: Annotated[str, typer.Option(help="Shipped profile name or a profile file.")] = DEFAULT_PROFILE,
    duration: Annotated[float, typer.Option(help="Seconds of arrivals per run.")] = 60.0,
    seed: Annotated[int, typer.Option(help="Trace seed.")] = 2025,
) -> None:
    """What-if study: five workflows x {langchain, flashrag, hedra} x request rates."""
    from rich.console import Console

    from experiments.demo import run_demo
    from experiments.report import demo_table

    console = Console(stderr=True)
    with user_errors():
        if not (10 <= duration <= 3600):
            raise UsageError(f"--duration {duration}: the demo needs between 10 and 3600 s of arrivals")
        check_output_dir(out)
        prof = load_profile(profile)
        with console.status("simulating...") as status:
            table = run_demo(out, prof, duration_s=duration, seed=seed, progress=lambda m: status.update(m))
    out_console = Console()
    if not out_console.is_terminal:
        out_console.width = 132
    out_console.print(demo_table(table, prof.name))
    typer.echo(f"table, summary and plots in {out}/")


def main() -> None:
    app(prog_name="hedra")


if __name__ == "__main__":
    sys.exit(main())
