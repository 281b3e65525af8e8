"""`hedra demo|sweep|compare|figure`: studies of many simulations, and their comparison."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer

from experiments.cli.common import (
    UsageError,
    app,
    user_errors,
)
from hwmodel.profile import DEFAULT_PROFILE, load_profile
from runs.outdir import check_output_dir


@app.command("demo")
def demo(
    out: Annotated[Path, typer.Option(help="Output folder.")] = Path("hedra-demo"),
    profile: Annotated[str, typer.Option(help="Shipped profile name or a profile file.")] = DEFAULT_PROFILE,
    duration: Annotated[float, typer.Option(help="Seconds of arrivals per run.")] = 60.0,
    seed: Annotated[int, typer.Option(help="Trace seed.")] = 2025,
    workers: Annotated[int | None, typer.Option(help="Worker processes (default: one per core).")] = None,
) -> None:
    """What-if study: five workflows x {langchain, flashrag, hedra, hedra's ablations} x request rates
    (the sweep spec experiments/specs/demo.toml)."""
    from rich.console import Console

    from experiments.demo import run_demo
    from experiments.report import ablation_table, demo_table

    with user_errors():
        if not (10 <= duration <= 3600):
            raise UsageError(f"--duration {duration}: the demo needs between 10 and 3600 s of arrivals")
        check_output_dir(out)
        prof = load_profile(profile)
        runner = _sweep_runner(workers, None)
        try:
            with _sweep_progress("simulating") as progress:
                table = run_demo(out, runner, profile=profile, duration_s=duration, seed=seed, progress=progress)
        except KeyboardInterrupt:
            typer.echo(f"hedra: interrupted; nothing written to {out}", err=True)
            raise typer.Exit(130) from None
    out_console = Console()
    if not out_console.is_terminal:
        out_console.width = 132
    out_console.print(demo_table(table, prof.name))
    out_console.print(ablation_table(table) or "")
    typer.echo(f"table, summary and plots in {out}/")


@app.command("sweep")
def sweep(
    spec: Annotated[Path, typer.Argument(help="Sweep spec (TOML): workloads x policies x profiles x seeds.")],
    out: Annotated[Path, typer.Option(help="Sweep folder; a rerun with the same folder skips finished cells.")],
    workers: Annotated[int | None, typer.Option(help="Worker processes, or local Ray CPUs (default: cores).")]
    = None,
    ray: Annotated[str | None, typer.Option(
        "--ray", metavar="[ADDRESS]", help="Run cells on Ray: a cluster's address (auto, ray://host:10001), or"
                                           " no address for a local instance.")] = None,
) -> None:
    """Run a grid of simulations; write sweep.parquet (one row per cell) and the spec's plots."""
    from experiments.expand import expand
    from experiments.sweep import SweepError, SweepInterrupted, prepare_out, run_sweep
    from experiments.sweepspec import SpecError, load_spec

    with user_errors():
        try:
            spec_model = load_spec(spec)
            cells = expand(spec_model, spec)
        except SpecError as exc:
            raise UsageError(str(exc)) from None
        if workers is not None and workers < 1:
            raise UsageError(f"--workers {workers}: need at least 1")
        runner = _sweep_runner(workers, ray)
        prepare_out(out)  # refuses a folder Hedra did not write, before the progress bar starts
        try:
            with _sweep_progress(spec_model.name) as progress:
                table = run_sweep(spec_model, cells, out, runner, progress,
                                  capacity_workers=_capacity_workers(workers, ray),
                                  capacity_progress=_capacity_progress)
        except SweepInterrupted as exc:
            typer.echo(f"hedra: interrupted: {exc.done} of {exc.total} cells done, kept in {out}/cells;"
                       " run the same command again to resume", err=True)
            raise typer.Exit(130) from None
        except KeyboardInterrupt:  # every cell was done: only the table and plots are missing
            typer.echo(f"hedra: interrupted: all cells done, kept in {out}/cells; run the same command again"
                       " to write the table and plots", err=True)
            raise typer.Exit(130) from None
        except SweepError as exc:
            typer.echo(f"hedra: error: {exc}", err=True)
            raise typer.Exit(1) from None
    typer.echo(f"{len(table)} cells -> {out}/sweep.parquet")


@app.command("compare")
def compare(
    runs: Annotated[list[Path], typer.Argument(help="Run folders (hedra sim / run) and sweep folders (hedra sweep).")],
    out: Annotated[Path, typer.Option(help="Output folder: compare.csv and plots.")],
    by: Annotated[str, typer.Option(help="What the series are: policy, workflow, body, profile, seed, trace, run.")]
    = "policy",
    baseline: Annotated[str | None, typer.Option(
        help="The --by value speedups are against (default: the first run's), e.g. flashrag.")] = None,
) -> None:
    """Compare runs: one table (CSV and printed) and plots (latency CDFs, latency against rate, lane
    utilisation, speedups against the baseline)."""
    from rich.console import Console

    from experiments.compare import BY, CompareError
    from experiments.compare import compare as run_compare
    from experiments.report import compare_table

    with user_errors():
        if by not in BY:
            raise UsageError(f"--by {by}: expected one of {', '.join(BY)}")
        check_output_dir(out)
        try:
            table, base = run_compare(runs, out, by=by, baseline=baseline)
        except CompareError as exc:
            raise UsageError(str(exc)) from None
    console = Console()
    if not console.is_terminal:
        console.width = 160
    console.print(compare_table(table, by, base))
    typer.echo(f"compare.csv and plots in {out}/")


@app.command("figure")
def figure(
    number: Annotated[str, typer.Argument(help="The HedraRAG paper's figure: 12, 13, 14 or 16; or metis"
                                               " (RAGServe/METIS's delay against F1).")],
    out: Annotated[Path | None, typer.Option(help="Output folder (default hedra-figure-N).")] = None,
    log: Annotated[bool, typer.Option("--log", help="Log-scale y axis instead of the paper's capped one.")] = False,
    duration: Annotated[float | None, typer.Option(
        help="Seconds of Poisson arrivals per point (default 30; --quick 10); figure 13 is offline (1024 requests"
             " at once) and takes none.")] = None,
    quick: Annotated[bool, typer.Option("--quick", help="Two rates, one nprobe row, 64 offline requests:"
                                                        " a smoke run in seconds.")] = False,
    workers: Annotated[int | None, typer.Option(help="Processes (default: all cores).")] = None,
) -> None:
    """Reproduce a HedraRAG (SOSP 2025) figure in simulation on the default profile (the sweep spec
    experiments/specs/figure-N.toml); write PNG and CSV and print the paper's numbers beside Hedra's."""
    from rich.console import Console
    from rich.table import Table

    from experiments.figures import FIGURES, run_figure

    console = Console(stderr=True)
    if number == "metis":
        return _figure_metis(out, quick, console)
    with user_errors():
        if not number.isdigit():
            raise UsageError(f"figure {number}: not a figure (figures: {', '.join(map(str, FIGURES))}, metis)")
        number = int(number)
        if number not in FIGURES:
            raise UsageError(f"figure {number}: not reproduced (figures: {', '.join(map(str, FIGURES))})")
        fig = FIGURES[number]
        if duration is not None and fig.offline:
            raise UsageError(f"--duration {duration:g}: figure {number} is offline ({fig.requests} requests at"
                             " t = 0); leave --duration out")
        if duration is not None and not (1 <= duration <= 3600):
            raise UsageError(f"--duration {duration:g}: need between 1 and 3600 s of arrivals")
        if workers is not None and workers < 1:
            raise UsageError(f"--workers {workers}: need at least 1")
        out = out if out is not None else Path(f"hedra-figure-{number}")
        check_output_dir(out)
        runner = _sweep_runner(workers, None)
        with console.status(f"figure {number}: simulating...") as status:
            result = run_figure(number, out, runner, duration_s=duration, quick=quick, log=log,
                                progress=lambda d, t: status.update(f"figure {number}: {d}/{t} simulations"))
    table = Table(title=f"{fig.title}\nHedra: simulated on {DEFAULT_PROFILE}; paper: H100 + 64-core EPYC"
                        " (docs/figures.md)", title_justify="left")
    for col in ("quantity", "paper", "hedra"):
        table.add_column(col, overflow="fold")
    for c in result.comparisons:
        table.add_row(c.quantity, c.paper, c.hedra)
    stdout = Console()
    if not stdout.is_terminal:
        stdout.width = 132
    stdout.print(table)
    typer.echo(f"figure-{number}.png, figure-{number}.csv and figure-{number}-paper.csv in {out}/"
               f" ({len(result.rows)} simulations, {result.wall_s:.0f} s)")


def _figure_metis(out: Path | None, quick: bool, console) -> None:
    """`hedra figure metis`: delay against F1 per policy (experiments.metis_figure)."""
    from experiments.metis_figure import run_figure

    with user_errors():
        out = out if out is not None else Path("hedra-figure-metis")
        check_output_dir(out)
        with console.status("figure metis: simulating..."):
            result = run_figure(out, quick=quick)
    h = result.headline
    typer.echo(f"ragserve F1 {h['ragserve_f1']:.3f}; best fixed {h['best_fixed']} F1 {h['best_fixed_f1']:.3f},"
               f" its P50 / ragserve's {h['delay_ratio_vs_best_fixed']:.2f}x;"
               f" adaptive's {h['delay_ratio_vs_adaptive']:.2f}x (F1 from model:metis-curves-v1)")
    typer.echo(f"points.csv, metis.png and metis.json in {out}/ ({len(result.points)} simulations,"
               f" {result.wall_s:.0f} s)")


def _sweep_runner(workers: int | None, ray: str | None):
    """The runner of `--workers N` / `--ray [ADDRESS]` (checked before anything runs)."""
    from experiments.sweep import default_workers, inline_runner, pool_runner, ray_runner

    n = workers or default_workers()
    if ray is not None:
        try:
            import ray as _ray  # noqa: F401
        except ImportError:
            raise UsageError("--ray: Ray is not installed (pip install -e '.[ray]')") from None
        return ray_runner(ray, n)
    return inline_runner if n == 1 else pool_runner(n)


def _capacity_workers(workers: int | None, ray: str | None) -> int:
    """Local processes for a spec's capacity searches (on Ray too: they run before the cells)."""
    from experiments.sweep import default_workers

    return workers or default_workers()


def _capacity_progress(done: int, total: int) -> None:
    if total:
        typer.echo(f"capacity searches: {done} of {total} done", err=True)


RAY_LOCAL = "local"  # what a bare `--ray` stands for: start a local Ray instance (Ray's own word for it)


@contextmanager
def _sweep_progress(what: str) -> Iterator:
    """A progress bar on stderr (cells done of N, time left); silent when stderr is not a terminal."""
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    console = Console(stderr=True)
    bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("cells"),
                   TimeElapsedColumn(), TextColumn("left"), TimeRemainingColumn(), console=console,
                   disable=not console.is_terminal)
    task = bar.add_task(what, total=None)
    first = True

    def update(done: int, total: int) -> None:
        nonlocal first
        if first:  # cells stored by an earlier run: not part of this run's speed
            bar.reset(task, total=total, completed=done)
            first = False
        else:
            bar.update(task, completed=done, total=total)

    with bar:
        yield update


def bare_ray(argv: list[str]) -> list[str]:
    """`--ray` with no address (last, or before another option) means a local instance."""
    return [a for i, arg in enumerate(argv)
            for a in ([arg, RAY_LOCAL] if arg == "--ray" and (i + 1 == len(argv) or argv[i + 1].startswith("-"))
                      else [arg])]

