"""The real body, assembled: engine, index, embedder, cluster cache, cores and cost model.

`RealBackend.open(options)` builds the parts once (model load and index load take tens of
seconds); `replay(requests, policy)` then runs one trace through `RealExecutor` under a
policy built from its spec, exactly as `hedra sim` builds it, and can be called again with
another policy on the same warm engines. Heavy libraries load here, lazily.

Cores: on a CPU-only machine the engine thread and the retrieval threads are pinned to
disjoint cores (default: the first usable core generates, the rest retrieve), each with its
own thread count, so generation and retrieval overlap on separate silicon as they would on
a GPU server.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from functools import cached_property
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from backends.embed_worker import EmbedderProcess
from backends.embedder import Embedder
from backends.executor import RealExecutor, pin_current_thread
from backends.paths import hedra_home
from backends.retrieval import RetrievalService
from backends.search_cost import MeasuredSearchCost, measure_search_cost
from ragraph.graph import Request
from ragraph.policies import make_policy
from ragraph.records import RunResult
from ragraph.work import Lane

# The GIL switch interval during a replay (Python's default is 5 ms). A lane returning from
# FAISS or from the embedding worker must take the GIL back from the engine thread, which on a
# small model runs Python most of the time; it waits up to one interval each time.
SWITCH_INTERVAL_S = 0.0005


class BackendError(ValueError):
    """A real-backend option that cannot work (message names the option)."""


def default_model_dir() -> Path:
    return hedra_home() / "models" / "tiny-llama"


def usable_cores() -> list[int]:
    try:
        return sorted(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return list(range(os.cpu_count() or 1))


class RealOptions(BaseModel):
    """How to build the real body (`hedra run` options)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    backend: Literal["cpu", "gpu"] = "cpu"
    model: Path | None = None  # a local Hugging Face model folder; None: the tiny model (built if missing)
    corpus: Path | None = None  # a corpus folder (hedra corpus build); None: the default wiki corpus
    gen_cores: tuple[int, ...] | None = None  # cores of the engine thread (cpu backend)
    retrieval_cores: tuple[int, ...] | None = None  # cores of the retrieval thread (FAISS threads = their count)
    max_model_len: int = Field(default=4096, gt=0)
    max_num_seqs: int = Field(default=256, gt=0)
    max_num_batched_tokens: int = Field(default=2048, gt=0)
    kv_cache_gib: float = Field(default=1.0, gt=0)  # cpu: VLLM_CPU_KVCACHE_SPACE
    gpu_memory_utilization: float = Field(default=0.8, gt=0, le=1)
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

    def core_split(self) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """(engine cores, retrieval cores): the first usable core generates, the rest retrieve."""
        cores = usable_cores()
        gen = self.gen_cores or (tuple(c for c in cores if c not in (self.retrieval_cores or ()))[:1])
        ret = self.retrieval_cores or tuple(c for c in cores if c not in gen) or tuple(gen)
        return tuple(gen), tuple(ret)


class RealBackend:
    """vLLM + FAISS + embedder (+ GPU cluster cache), built once, replayed many times."""

    def __init__(self, options: RealOptions, engine, retriever, encoder, corpus, cache,
                 cost: MeasuredSearchCost, cores: tuple[tuple[int, ...], tuple[int, ...]]) -> None:
        self.options = options
        self.engine, self.retriever, self.corpus, self.cache = engine, retriever, corpus, cache
        self.encoder = encoder  # what the retrieval lane embeds queries with
        self.cost = cost
        self.gen_cores, self.retrieval_cores = cores

    @classmethod
    def open(cls, options: RealOptions, progress: Callable[[str], None] = lambda msg: None) -> RealBackend:
        from backends.corpus import CorpusError, embedder_for, ensure_wiki_corpus, load_corpus
        from backends.ivf import IVFRetriever
        from backends.vllm_engine import VLLMEngine

        gpu = options.backend == "gpu"
        if gpu:
            _require_cuda()
        gen_cores, ret_cores = options.core_split()  # on a GPU machine the engine thread only drives the GPU
        threads = len(ret_cores)
        progress("loading the corpus and its index (built on first use)")
        corpus = load_corpus(options.corpus) if options.corpus else ensure_wiki_corpus()
        progress("loading the embedder")
        # on the CPU, queries are embedded by a worker process on the retrieval cores (GIL: see embed_worker.py)
        encoder = embedder_for(corpus, device="cuda") if gpu else EmbedderProcess(
            corpus.manifest["embedder"]["name"], cores=ret_cores, threads=threads)
        if encoder.dim != corpus.dim:
            raise CorpusError(f"{corpus.path}: field embedder.dim: the index has {corpus.dim} dimensions,"
                              f" the embedder gives {encoder.dim}")
        retriever = IVFRetriever(corpus.index, threads=threads)
        cache = None
        if gpu and options.cache_vectors:
            from backends.gpu_cache import ClusterCache

            cache = ClusterCache(corpus.index, device="cuda", capacity_vectors=options.cache_vectors)
        model = options.model or ensure_tiny_model(progress)
        progress(f"starting vLLM on {model}")
        pin_current_thread(gen_cores)  # vLLM-CPU binds its threads at start-up from the calling thread
        engine = VLLMEngine(model, device="cuda" if gpu else "cpu", max_model_len=options.max_model_len,
                            max_num_seqs=options.max_num_seqs, max_num_batched_tokens=options.max_num_batched_tokens,
                            kv_cache_gib=None if gpu else options.kv_cache_gib,
                            gpu_memory_utilization=options.gpu_memory_utilization, seed=options.seed)
        progress("measuring the retrieval cost model")
        pin_current_thread(ret_cores)
        _set_search_threads(threads)
        # embedding time grows with text length: time it on the corpus's questions-plus-passage sized texts
        probe_texts = [corpus.contents(i) for i in range(0, corpus.ntotal, max(1, corpus.ntotal // 16))][:16]
        cost = measure_search_cost(retriever, threads=threads, seed=options.seed, encode=encoder.encode,
                                   texts=probe_texts)
        pin_current_thread(usable_cores())
        return cls(options, engine, retriever, encoder, corpus, cache, cost,
                   (tuple(gen_cores), tuple(ret_cores)))

    @cached_property
    def embedder(self) -> Embedder:
        """The corpus's embedder in this process, loaded on first use (for making traces)."""
        from backends.corpus import embedder_for

        return self.encoder if isinstance(self.encoder, Embedder) else embedder_for(self.corpus)

    def replay(self, requests: list[Request], policy: str, *, timeline: bool = True,
               executor_hook: Callable[[RealExecutor], None] | None = None) -> RunResult:
        """Run `requests` under the policy spec `policy`; every request ends in the records.
        `executor_hook` sees the executor before it starts (tests use it to inject faults)."""
        service = RetrievalService(self.retriever, self.encoder.encode, requests, self.cache)
        gen_cores, ret_cores, threads = self.gen_cores, self.retrieval_cores, self.cost.threads
        setup = {Lane.GPU_GEN: lambda: _thread_setup(gen_cores),
                 Lane.CPU_RETRIEVAL: lambda: _thread_setup(ret_cores, search_threads=threads)}
        executor = RealExecutor(requests, make_policy(policy, self.cost), self.engine, service,
                                lane_setup=setup, timeline=timeline)
        if executor_hook is not None:
            executor_hook(executor)
        switch = sys.getswitchinterval()
        sys.setswitchinterval(SWITCH_INTERVAL_S)
        try:
            return executor.run()
        finally:
            sys.setswitchinterval(switch)

    def describe(self) -> dict[str, object]:
        """What this body is made of, for a run's summary."""
        return {"backend": self.options.backend, "model": str(self.engine.model), "corpus": str(self.corpus.path),
                "index": self.corpus.manifest.get("index", {}), "gen_cores": list(self.gen_cores),
                "retrieval_cores": list(self.retrieval_cores), "search_cost": self.cost.as_dict()}

    def close(self) -> None:
        self.engine.close()
        if isinstance(self.encoder, EmbedderProcess):
            self.encoder.close()


def ensure_tiny_model(progress: Callable[[str], None] = lambda msg: None) -> Path:
    """The default model: the tiny random-weight Llama, built once under hedra_home()."""
    from backends.tiny_model import make_tiny_model

    path = default_model_dir()
    if not (path / "config.json").is_file():
        progress(f"building the tiny model in {path}")
        make_tiny_model(path)
    return path


def _require_cuda() -> None:
    try:
        import torch
    except ImportError:
        raise BackendError("--backend gpu: torch is not installed") from None
    if not torch.cuda.is_available():
        raise BackendError("--backend gpu: no CUDA device is visible (torch.cuda.is_available() is False)")


def _set_search_threads(n: int) -> None:
    import faiss

    faiss.omp_set_num_threads(n)


def _thread_setup(cores: tuple[int, ...], search_threads: int | None = None) -> None:
    """First thing in a lane thread: pin it, and size the OpenMP teams it will start.

    OpenMP's thread count is per calling thread, so each lane sets its own: torch's (the
    engine's kernels, the embedder) through `torch._C.set_num_threads`, because vLLM-CPU
    replaces `torch.set_num_threads` with a no-op once it has started; FAISS's likewise."""
    pin_current_thread(cores)
    import torch

    torch._C.set_num_threads(max(1, len(cores)))
    if search_threads is not None:
        _set_search_threads(search_threads)
