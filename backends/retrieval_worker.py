"""The retrieval lane's work in its own process, so its timing does not depend on the engine thread.

On the real CPU body the engine thread (vLLM's scheduler and model runner: mostly Python on a
small model) and the retrieval lane share one interpreter. Every time the lane comes back
from FAISS or from the embedder it must take the GIL back from the engine thread, and its
own Python (building heaps, results) runs between the engine's: measured here, embedding 8
questions took 25 ms alone and 540 ms beside a Python-busy thread, and a search call's
duration depended on what the engine was doing. The simulator cannot see that, so the body
removes it: `RetrievalProcess` runs the whole `RetrievalService` (embedding and FAISS scans,
the running top-k heaps) in a worker process pinned to the retrieval cores, with its own
interpreter. The lane thread only sends the item down a pipe and waits (GIL released), and
takes the GIL back once per call.

The worker is started with `spawn` (forking a process that holds vLLM and OpenMP state is
unsafe); it reads the corpus's index file and loads its embedder. Each replay begins a fresh
service with the replay's requests (their query texts) and ends it. GPU cache items are
not served here (the GPU body keeps its retrieval in process, where the CUDA context is).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from backends.worker_process import WorkerProcess, keep_freed_memory, serve, started
from ragraph.graph import NodeKey, Request
from ragraph.work import CacheLoad, CacheLoadResult, SearchBatch, SearchResult


def _serve(conn: Any, index_path: str, model: str | None, cores: tuple[int, ...], threads: int) -> None:
    """The worker: load the index and the embedder, then serve begin / search / close."""
    if cores:
        os.sched_setaffinity(0, set(cores))
    keep_freed_memory()

    def build() -> tuple[tuple[Any, Any], tuple[int, list[int]]]:
        import faiss
        import torch

        torch.set_num_threads(threads)
        faiss.omp_set_num_threads(threads)
        from backends.embedder import Embedder
        from backends.ivf import IVFRetriever, load_index

        retriever = IVFRetriever(load_index(index_path), threads=threads)
        embedder = Embedder(model)
        return (retriever, embedder), (embedder.dim, retriever.list_sizes())

    parts = started(conn, build)
    if parts is None:
        return
    retriever, embedder = parts
    from backends.retrieval import RetrievalService

    services: list[RetrievalService] = []  # the current replay's

    def handle(command: str, payload: Any) -> object:
        if command == "begin":
            services[:] = [RetrievalService(retriever, embedder.encode, payload)]
            return None
        if command == "search":  # (request ids that ended, the batch, query texts of its first sub-stages)
            if not services:
                raise RuntimeError("search before begin")
            for rid in payload[0]:
                services[0].forget(rid)
            return services[0].search(payload[1], payload[2])
        if command == "close":
            return None
        raise ValueError(f"unknown command {command!r}")

    serve(conn, handle)


class RetrievalProcess:
    """A retrieval worker process pinned to `cores`; `begin(requests)` gives the lane's `RetrievalBody`."""

    def __init__(self, index_path: str | Path, model: str | None = None, *, cores: Sequence[int] = (),
                 threads: int = 1) -> None:
        self.worker = WorkerProcess(_serve, (str(index_path), model, tuple(cores), threads), name="hedra-retrieval")
        self.dim, self.list_sizes = self.worker.ready

    def call(self, command: str, payload: object) -> Any:
        return self.worker.call(command, payload)

    def begin(self, requests: Sequence[Request]) -> RemoteRetrieval:
        """A fresh service for one replay: per-query state of an earlier replay is dropped."""
        self.call("begin", list(requests))
        return RemoteRetrieval(self)

    def close(self) -> None:
        self.worker.close(10)


class RemoteRetrieval:
    """The `RetrievalBody` of one replay, served by a `RetrievalProcess`.

    `forget` is called by the executor under the scheduler's lock, while the lane may be
    waiting on a search: it never touches the pipe, the ids ride with the next search."""

    def __init__(self, worker: RetrievalProcess) -> None:
        self._worker = worker
        self.list_sizes = worker.list_sizes
        self._ended: list[str] = []
        self._ended_lock = threading.Lock()

    def search(self, batch: SearchBatch, queries: Mapping[NodeKey, str] | None = None) -> SearchResult:
        with self._ended_lock:
            ended, self._ended = self._ended, []
        return self._worker.call("search", (ended, batch, queries))

    def load(self, item: CacheLoad) -> CacheLoadResult:
        raise RuntimeError("a pcie item on the CPU body: the retrieval worker has no GPU cluster cache")

    def forget(self, request_id: str) -> None:
        with self._ended_lock:
            self._ended.append(request_id)
