"""Assembling the real body from a command's options: which profile, which options, which
corpus, and the checks that refuse a body that cannot match its traces or profile.

`hedra run`, `calibrate` and `validate` parse their options and call these; a mismatch
raises `BackendError` (one line, naming the option and the command that fixes it) before
the engines load wherever that can be known then.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from backends.models import check_model
from backends.real import BackendError, RealBackend, RealOptions, require_cuda
from hwmodel.profile import DEFAULT_CPU_PROFILE, Engine, Profile, load_profile
from ragraph.graph import Request
from ragraph.workflows import WorkflowRegistry
from traces.schema import TraceError, load_trace


def real_options(backend: str, model: str | Path | None, corpus: Path | None, gen_cores: tuple[int, ...] | None,
                 retrieval_cores: tuple[int, ...] | None, setup: Profile | Engine,
                 cache_vectors: int = 0) -> RealOptions:
    """Validated `RealOptions`; `setup` is a measured profile (its engine configuration, and its
    cores unless given) or, for `hedra calibrate`, the engine configuration to measure.
    Raises BackendError, or pydantic's ValidationError for an option RealOptions refuses."""
    if backend not in ("cpu", "gpu"):
        raise BackendError(f"--backend {backend!r}: expected cpu or gpu")
    try:
        check_model(model)  # a name (tiny, smollm2) or a model folder; smollm2's package, before anything loads
    except FileNotFoundError as exc:
        raise BackendError(str(exc)) from None
    options = {"backend": backend, "model": model, "corpus": corpus, "cache_vectors": cache_vectors,
               "gen_cores": gen_cores, "retrieval_cores": retrieval_cores}
    if isinstance(setup, Profile):
        return RealOptions.of_profile(setup, **options)
    return RealOptions(engine=setup, **options)


def profile_of_body(profile: str | None, backend: str) -> Profile:
    """The measured profile a real run uses (`--profile`, else the shipped one of the CPU rig)."""
    if backend == "gpu":
        require_cuda()
    if profile is None and backend == "gpu":
        raise BackendError("--profile: the gpu backend needs a measured profile of this machine"
                           " (hedra calibrate --backend gpu --out PROFILE.json)")
    return load_profile(profile or DEFAULT_CPU_PROFILE)


def profile_for_corpus(profile: Profile, corpus_dir: Path, manifest: dict,
                       list_sizes: list[int] | None = None) -> Profile:
    """The profile the body runs with on the corpus at `corpus_dir` (its `manifest`).

    A profile measured on this index, as is. One measured on another index carries over when
    what its search costs depend on is the same: an IVF index of flat vectors, their
    dimension, the metric and the query embedder (scan cost is per byte of a list, embedding
    cost per token of query text); the lists are this index's (`list_sizes` once the body has read
    them). Anything else is refused with the command that measures this body (issue 16)."""
    from backends.corpus import index_identity

    identity = index_identity(manifest)
    if profile.index.identity == identity:
        return profile
    fix = (f"calibrate this body (hedra calibrate --corpus {corpus_dir} --out PROFILE.json) and pass"
           " --profile PROFILE.json")
    have, index, embedder = profile.index, manifest["index"], manifest["embedder"]
    if profile.kind != "measured" or have.identity is None:
        raise BackendError(f"--profile {profile.name}: not measured on a real index ({profile.kind}), and the corpus"
                           f" at {corpus_dir} has index {identity}; {fix}")
    differ = [(field, mine, theirs) for field, mine, theirs in (
        ("index type", index["type"], "IndexIVFFlat" if have.name.endswith(",Flat") else have.name),
        ("dimension", embedder["dim"], have.dim),
        ("metric", index["metric"], have.metric),
        ("embedder", embedder["name"], have.embedder or "(not recorded)"),
    ) if mine != theirs]
    if differ:
        field, mine, theirs = differ[0]
        raise BackendError(f"--profile {profile.name}: measured on index {have.identity} ({field} {theirs}), the"
                           f" corpus at {corpus_dir} has index {identity} ({field} {mine}): its search costs do not"
                           f" carry over; {fix}")
    return profile.on_index(have.model_copy(update={
        "name": f"IVF{index['nlist']},Flat", "nlist": index["nlist"], "ntotal": index["ntotal"],
        "list_size_sigma": 0.0, "list_sizes": list_sizes, "identity": identity}))


def open_checked(options: RealOptions, profile: Profile, traces: list[Path], registry: WorkflowRegistry,
                 progress: Callable[[str], None] = lambda msg: None
                 ) -> tuple[RealBackend, list[list[Request]], Profile]:
    """Open the real body after refusing what cannot match it: traces made on another index
    than the corpus, a profile whose costs do not carry over to it (`profile_for_corpus`).
    Returns (body, the requests of each trace, the profile for this corpus); the checks run
    before the engines load where the corpus exists already, and once more after a first-use
    build."""
    from backends.corpus import default_corpus_dir, index_identity, read_manifest

    corpus_dir = options.corpus or default_corpus_dir()

    def against(ident: str) -> str:
        return (f"the corpus at {corpus_dir} has index {ident}; replay the trace on the corpus it was made on"
                f" (--corpus) or regenerate it on this one (hedra trace gen --corpus {corpus_dir})")

    def check(manifest: dict) -> list[list[Request]]:
        ident = index_identity(manifest)
        loaded = [load_trace(p, registry, nlist=manifest["index"]["nlist"], index=ident, target=against(ident))
                  for p in traces]
        profile_for_corpus(profile, corpus_dir, manifest)
        return loaded

    identity = ""
    if (corpus_dir / "manifest.json").is_file():
        manifest = read_manifest(corpus_dir)
        identity = index_identity(manifest)
        loaded = check(manifest)
    else:  # no corpus yet: RealBackend.open builds it, and everything is checked against it then
        loaded = [load_trace(p, registry) for p in traces]
    body = RealBackend.open(options, progress=progress)
    try:
        if identity != body.corpus.index_identity:  # the corpus was built just now
            loaded = check(body.corpus.manifest)
        carried = profile_for_corpus(profile, corpus_dir, body.corpus.manifest, body.retriever.list_sizes())
    except (TraceError, BackendError):
        body.close()
        raise
    return body, loaded, carried
