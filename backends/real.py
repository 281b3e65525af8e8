"""The real body, assembled: engine, index, embedder, cluster cache and cores.

`RealBackend.open(options)` builds the parts once (model load and index load take tens of
seconds); the engine runs the one engine configuration `options.engine` (the same
`hwmodel.profile.Engine` the simulator reads from a profile). `replay(requests, policy)`
then runs one trace through `RealExecutor` under a built policy (`runs.run_real` builds it
from a validated `PolicyChoice` and the profile's latency model, as `runs.simulate` does),
and can be called again with another policy on the same warm engines. Heavy libraries load here, lazily.

Cores: on a CPU-only machine the engine thread and the retrieval threads are pinned to
disjoint cores (default: the first usable core generates, the rest retrieve), each with its
own thread count, so generation and retrieval overlap on separate silicon as they would on
a GPU server.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from backends.embedder import Embedder
from backends.executor import RealExecutor, RetrievalBody, pin_current_thread
from backends.models import answers_text, is_named, resolve_model
from backends.retrieval import RetrievalService
from backends.retrieval_worker import RetrievalProcess
from backends.vllm_engine import warms_kernels
from backends.worker_process import WorkerProcess
from hwmodel.embedder_tokens import token_counter
from hwmodel.profile import Engine, Profile
from ragraph.graph import Request
from ragraph.kvpolicy import KV_POLICIES, SIM_ONLY_KV_POLICIES, KVPolicy
from ragraph.policies.base import Policy
from ragraph.records import RunResult
from ragraph.work import Lane

if TYPE_CHECKING:
    from backends.answers import AnswerFlow

# The GIL switch interval during a replay (Python's default is 5 ms). The retrieval lane,
# returning from the retrieval worker's pipe, must take the GIL back from the engine thread,
# which on a small model runs Python most of the time; it waits up to one interval each time
# (longer when the engine thread is inside a C call that keeps the GIL). Measured in replays
# (one-shot, 93 req/s, hedra): at 0.1 ms scan-only sub-stages took no less (0.65 ms) and engine
# steps ran 14% slower than alone, against 5% at 0.5 ms.
SWITCH_INTERVAL_S = 0.0005


class BackendError(ValueError):
    """A real-backend option that cannot work (message names the option)."""


def usable_cores() -> list[int]:
    """The cores the calling thread may run on (Linux: its own affinity, which `thread_setup` narrows)."""
    try:
        return sorted(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return list(range(os.cpu_count() or 1))


class RealOptions(BaseModel):
    """How to build the real body (`hedra run` options)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    backend: Literal["cpu", "gpu"] = "cpu"
    # a model name (backends.models: tiny, smollm2; built on first use) or a local Hugging Face model
    # folder; None: the tiny model
    model: str | Path | None = None
    corpus: Path | None = None  # a corpus folder (hedra corpus build); None: the default wiki corpus
    gen_cores: tuple[int, ...] | None = None  # cores of the engine thread (cpu backend)
    retrieval_cores: tuple[int, ...] | None = None  # cores of the retrieval thread (FAISS threads = their count)
    engine: Engine  # the engine configuration (a profile's `engine`): block size, batch limits, KV cache...
    cache_vectors: int = Field(default=0, ge=0)  # GPU cluster cache capacity in vectors (gpu backend)
    seed: int = 0

    @model_validator(mode="after")
    def _cores(self) -> RealOptions:
        cores = set(usable_cores())
        for name in ("gen_cores", "retrieval_cores"):
            bad = set(getattr(self, name) or ()) - cores
            if bad:
                raise ValueError(f"{name}: cores {sorted(bad)} are not usable here (usable: {sorted(cores)})")
        if self.gen_cores and self.retrieval_cores and set(self.gen_cores) & set(self.retrieval_cores):
            raise ValueError("gen_cores and retrieval_cores overlap; generation and retrieval need their own cores")
        return self

    @classmethod
    def of_profile(cls, profile: Profile, **options: object) -> RealOptions:
        """Options that run `profile`'s engine configuration on the cores it was measured on, and
        its model where that is a named one (`backends.models`, e.g. smollm2; the tiny model's
        profiles name `tiny-llama`, the default anyway); `options` override (cores or model
        given as None fall back to the profile's)."""
        hw = profile.hardware
        if options.get("model") is None and is_named(profile.model.name):  # e.g. smollm2's profile serves smollm2
            options["model"] = profile.model.name
        for name, cores in (("gen_cores", hw.gen_cores), ("retrieval_cores", hw.retrieval_cores)):
            if options.get(name) is None and cores:
                options[name] = tuple(cores)
        return cls(engine=profile.engine, **options)

    def core_split(self) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """(engine cores, retrieval cores): the first usable core generates, the rest retrieve."""
        cores = usable_cores()
        gen = self.gen_cores or (tuple(c for c in cores if c not in (self.retrieval_cores or ()))[:1])
        ret = self.retrieval_cores or tuple(c for c in cores if c not in gen) or tuple(gen)
        return tuple(gen), tuple(ret)


class RealBackend:
    """vLLM + FAISS + embedder (+ GPU cluster cache), built once, replayed many times."""

    def __init__(self, options: RealOptions, engine, retriever, retrieval: RetrievalProcess | Embedder, corpus,
                 cache, cores: tuple[tuple[int, ...], tuple[int, ...]], text: bool = False) -> None:
        self.options = options
        # the model answers (it has a chat template): requests with a question are prompted with real text
        self.text = text
        self.engine, self.retriever, self.corpus, self.cache = engine, retriever, corpus, cache
        # cpu: the retrieval worker process that runs the lane's searches; gpu: the in-process query embedder
        self._retrieval = retrieval
        self.gen_cores, self.retrieval_cores = cores

    @classmethod
    def open(cls, options: RealOptions, progress: Callable[[str], None] = lambda msg: None) -> RealBackend:
        from backends.corpus import FILES, CorpusError, embedder_for, ensure_wiki_corpus, load_corpus
        from backends.engine_worker import EngineProcess
        from backends.ivf import IVFRetriever

        gpu = options.backend == "gpu"
        if gpu:
            require_cuda()
        gen_cores, ret_cores = options.core_split()  # on a GPU machine the engine thread only drives the GPU
        threads = len(ret_cores)
        progress("loading the corpus and its index (built on first use)")
        corpus = load_corpus(options.corpus) if options.corpus else ensure_wiki_corpus(progress=progress)
        progress("loading the embedder")
        # on the CPU the lane's searches run in a worker process on the retrieval cores (GIL: see retrieval_worker.py)
        retrieval = embedder_for(corpus, device="cuda") if gpu else RetrievalProcess(
            corpus.path / FILES["index"], corpus.manifest["embedder"]["name"], cores=ret_cores, threads=threads)
        if retrieval.dim != corpus.dim:
            raise CorpusError(f"{corpus.path}: field embedder.dim: the index has {corpus.dim} dimensions,"
                              f" the embedder gives {retrieval.dim}")
        retriever = IVFRetriever(corpus.index, threads=threads)
        cache = None
        if gpu and options.cache_vectors:
            from backends.gpu_cache import ClusterCache

            cache = ClusterCache(corpus.index, device="cuda", capacity_vectors=options.cache_vectors)
        model = resolve_model(options.model, progress)
        then = f", then warming its kernels (step sizes 1-{options.engine.max_num_batched_tokens}: about a minute)"
        progress(f"starting vLLM on {model}" + (then if warms_kernels(options.engine) else ""))
        # the engine runs in a worker process on the engine cores (the GIL: see engine_worker.py)
        engine = EngineProcess(model, options.engine, device="cuda" if gpu else "cpu", seed=options.seed,
                               cores=gen_cores, threads=len(gen_cores))
        return cls(options, engine, retriever, retrieval, corpus, cache, (tuple(gen_cores), tuple(ret_cores)),
                   answers_text(model))

    @cached_property
    def text_tokens(self) -> Callable[[str], int]:
        """A query text's tokens as the corpus's embedder counts them (the search features)."""
        return token_counter(self.corpus.manifest["embedder"]["name"])

    @cached_property
    def embedder(self) -> Embedder:
        """The corpus's embedder in this process, loaded on first use (for making traces)."""
        from backends.corpus import embedder_for

        return self._retrieval if isinstance(self._retrieval, Embedder) else embedder_for(self.corpus)

    def retrieval_body(self, requests: Sequence[Request]) -> RetrievalBody:
        """What the retrieval lanes run for a replay of `requests` (their query texts): the
        worker process's service on the CPU, an in-process service on the GPU."""
        if isinstance(self._retrieval, RetrievalProcess):
            return self._retrieval.begin(requests)
        return RetrievalService(self.retriever, self._retrieval.encode, requests, self.cache)

    def replay(self, requests: list[Request], policy: Policy, *, timeline: bool = True,
               executor_hook: Callable[[RealExecutor], None] | None = None, text: bool = True,
               kv_policy: KVPolicy | None = None) -> RunResult:
        """Run `requests` under `policy` (built for this run, with the profile's latency model
        as its cost model: `runs.run_real` does it); every request ends in the records.
        `executor_hook` sees the executor before it starts (tests use it to inject faults).
        `text=False` keeps every prompt synthetic (the trace's token counts) even for a model
        that answers: what the simulator replays too (`hedra validate`, `hedra calibrate`).
        `kv_policy` (default lru): the order vLLM's cached free blocks are evicted in
        (`backends.kv_order`); a policy only the simulator has is refused.

        Each replay starts with vLLM's prefix cache empty, as a simulation starts with its own:
        traces number their requests alike and synthetic prompts are seeded by request and node,
        so without it a replay found the previous replay's blocks for its own prompts (the
        fidelity benchmark's replays served 22-74% of their prompt tokens from blocks an earlier
        replay of the same requests had left; the simulator, none)."""
        if kv_policy is not None:
            check_real_kv_policy(kv_policy)
        if not self.engine.reset_prefix_cache():
            raise BackendError("the engine's prefix cache could not be emptied before the replay:"
                               " sequences of an earlier replay are still running")
        service = self.retrieval_body(requests)
        gen_cores, ret_cores = self.gen_cores, self.retrieval_cores
        setup = {Lane.GPU_GEN: lambda: thread_setup(gen_cores),
                 Lane.CPU_RETRIEVAL: lambda: thread_setup(ret_cores, search_threads=len(ret_cores))}
        answers = self.answer_flow(requests) if text else None
        executor = RealExecutor(requests, policy, self.engine, service,
                                lane_setup=setup, timeline=timeline, answers=answers,
                                kv_policy=kv_policy, text_tokens=self.text_tokens)
        if executor_hook is not None:
            executor_hook(executor)
        switch = sys.getswitchinterval()
        sys.setswitchinterval(SWITCH_INTERVAL_S)
        try:
            result = executor.run()
        finally:
            sys.setswitchinterval(switch)
        return result if answers is None else replace(result, records=answers.scored(result.records))

    def answer_flow(self, requests: Sequence[Request]) -> AnswerFlow | None:
        """Real text for a replay of `requests` (`backends.answers`): when the model answers and
        some request carries a question; None otherwise (synthetic prompts, the trace's queries)."""
        if not self.text or not any(r.question for r in requests):
            return None
        from backends.answers import AnswerFlow

        return AnswerFlow(requests, self.corpus.contents)

    def describe(self) -> dict[str, object]:
        """What this body is made of, for a run's summary."""
        return {"backend": self.options.backend, "model": str(self.engine.model), "text_prompts": self.text,
                "corpus": str(self.corpus.path),
                "index": self.corpus.manifest.get("index", {}), "gen_cores": list(self.gen_cores),
                "retrieval_cores": list(self.retrieval_cores), "engine": self.options.engine.model_dump()}

    def workers(self) -> dict[str, WorkerProcess]:
        """The worker processes the lanes call, by lane name (the CPU body's engine and retrieval;
        none for the GPU body's in-process retrieval): `benchmarks/handoff.py` reads their logs."""
        found = {"gpu_gen": self.engine.worker}
        if isinstance(self._retrieval, RetrievalProcess):
            found["cpu_retrieval"] = self._retrieval.worker
        return found

    def close(self) -> None:
        self.engine.close()
        if isinstance(self._retrieval, RetrievalProcess):
            self._retrieval.close()


def check_real_kv_policy(kv_policy: KVPolicy) -> KVPolicy:
    """Refuse a KV policy the real body cannot run (vLLM's block pool is reordered for `kvflow`
    only; `lru` is vLLM's own order), rather than run it as lru under another name."""
    if kv_policy.name in SIM_ONLY_KV_POLICIES:
        real = ", ".join(k for k in KV_POLICIES if k not in SIM_ONLY_KV_POLICIES)
        raise BackendError(f"--kv-policy {kv_policy.spec}: the real body implements {real} only;"
                           f" {kv_policy.name} runs in the simulator (hedra sim --kv-policy {kv_policy.spec})")
    return kv_policy


def require_cuda() -> None:
    try:
        import torch
    except ImportError:
        raise BackendError("--backend gpu: torch is not installed") from None
    if not torch.cuda.is_available():
        raise BackendError("--backend gpu: no CUDA device is visible (torch.cuda.is_available() is False)")


def _set_search_threads(n: int) -> None:
    import faiss

    faiss.omp_set_num_threads(n)


def thread_setup(cores: tuple[int, ...], search_threads: int | None = None) -> None:
    """First thing in a lane thread: pin it, and size the OpenMP teams it will start.

    OpenMP's thread count is per calling thread, so each lane sets its own: torch's (the
    engine's kernels, the embedder) through `torch._C.set_num_threads`, because vLLM-CPU
    replaces `torch.set_num_threads` with a no-op once it has started; FAISS's likewise."""
    pin_current_thread(cores)
    import torch

    torch._C.set_num_threads(max(1, len(cores)))
    if search_threads is not None:
        _set_search_threads(search_threads)


@contextlib.contextmanager
def lanes_on_this_thread() -> Iterator[None]:
    """Run lanes' work on the calling thread (`thread_setup` inside: the calibration, the stale
    probe), then give the thread back the cores and OpenMP thread counts it had. Without it the
    thread stayed pinned to the last lane's cores: after a probe, a replay's arrivals thread
    (started from it, never pinned) shared the retrieval worker's core."""
    import faiss
    import torch

    cores, torch_threads, search_threads = usable_cores(), torch.get_num_threads(), faiss.omp_get_max_threads()
    try:
        yield
    finally:
        pin_current_thread(cores)
        torch._C.set_num_threads(torch_threads)
        _set_search_threads(search_threads)
