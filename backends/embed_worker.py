"""The embedder in its own process, so the retrieval lane does not fight the engine for the GIL.

On the real CPU backend the engine thread (vLLM's scheduler and model runner: much Python
per step on a small model) and the retrieval thread share one interpreter. A sentence
embedding is hundreds of small torch calls, each of which must take the GIL back from the
engine thread, which holds it for up to the interpreter's switch interval: measured here,
embedding 8 questions took 25 ms alone and 540 ms beside a Python-busy thread. In a worker
process, pinned to the retrieval cores, the lane thread only waits on a pipe (GIL released)
and takes the GIL back once per batch.

The worker is started with `spawn` (forking a process that holds vLLM and OpenMP state is
unsafe), loads the same model as the corpus's embedder, and serves `encode` calls until
`close()`. Its vectors are identical to the in-process embedder's.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
from collections.abc import Sequence

import numpy as np


def _serve(conn, model: str | None, cores: tuple[int, ...], threads: int) -> None:
    """The worker's loop: (texts) -> vectors, until None arrives."""
    if cores:
        os.sched_setaffinity(0, set(cores))
    import torch

    torch.set_num_threads(threads)
    from backends.embedder import Embedder

    try:
        emb = Embedder(model)
    except Exception as exc:  # reported to the parent, which raises it
        conn.send(("error", f"{type(exc).__name__}: {exc}"))
        return
    conn.send(("ready", emb.dim))
    while True:
        texts = conn.recv()
        if texts is None:
            return
        try:
            conn.send(("ok", emb.encode(texts)))
        except Exception as exc:
            conn.send(("error", f"{type(exc).__name__}: {exc}"))


class EmbedderProcess:
    """`encode(texts)` served by a worker process pinned to `cores` (the `Embedder` interface)."""

    def __init__(self, model: str | None = None, *, cores: Sequence[int] = (), threads: int = 1) -> None:
        ctx = mp.get_context("spawn")
        self._conn, child = ctx.Pipe()
        self._proc = ctx.Process(target=_serve, args=(child, model, tuple(cores), threads), daemon=True,
                                 name="hedra-embedder")
        self._proc.start()
        child.close()
        status, payload = self._conn.recv()
        if status != "ready":
            self._proc.join(5)
            raise RuntimeError(f"the embedding worker failed to start: {payload}")
        self.dim = int(payload)

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        self._conn.send(list(texts))
        status, payload = self._conn.recv()
        if status != "ok":
            raise RuntimeError(f"embedding failed: {payload}")
        return payload

    def close(self) -> None:
        if self._proc.is_alive():
            with contextlib.suppress(OSError):
                self._conn.send(None)
            self._proc.join(10)
            if self._proc.is_alive():
                self._proc.kill()
