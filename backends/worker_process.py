"""A lane's heavy work in a worker process: the plumbing `engine_worker` and `retrieval_worker` share.

The worker is started with `spawn` (never fork a process that holds vLLM, torch or OpenMP
state), pinned by its own target, and talks over one pipe: the parent sends `(command,
payload)`, the worker answers `("ok", reply, seconds in its handler)` or `("error", (exception
type name, message))`; its first answer says it is ready. One exchange at a time (a lock), so
two lane threads can share a worker safely.

The handler's seconds split a call's time as its caller sees it into the work and the hand-off
around it (pickling, the pipe, the waiting thread's wake-up and its GIL):
`WorkerProcess.handler_log`, kept when a caller asks (`benchmarks/handoff.py`).
"""

from __future__ import annotations

import contextlib
import ctypes
import multiprocessing as mp
import threading
import time
from collections.abc import Callable
from typing import Any

# glibc's malloc hands large freed blocks back to the kernel (a block over the mmap threshold is a mapping of
# its own; free memory at the heap's top is trimmed), so the next engine step that needs them faults them in
# again: measured on the CPU rig, 2,048-token prefill steps faulted ~4,000 pages (16 MB) each, median 37.0 ms
# against 32.9 ms with freed memory kept. A CPU serving deployment runs with an allocator that keeps it (vLLM's
# CPU guide preloads tcmalloc); here glibc is told to, in each worker (`keep_freed_memory`).
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # mallopt parameters (malloc.h)
KEEP_FREED_BYTES = 1 << 30  # free memory the heap keeps at its top before it gives any back
HEAP_BLOCK_BYTES = 32 << 20  # blocks up to this (glibc's largest threshold) come from the heap, and stay


def keep_freed_memory() -> bool:
    """Make this process's malloc keep the memory it frees (see `KEEP_FREED_BYTES`); False where
    the C library is not glibc (nothing changed)."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(_M_TRIM_THRESHOLD, KEEP_FREED_BYTES)) and bool(
            libc.mallopt(_M_MMAP_THRESHOLD, HEAP_BLOCK_BYTES))
    except (OSError, AttributeError):
        return False


class WorkerError(RuntimeError):
    """The worker reported an error, or exited."""


class WorkerProcess:
    """A spawned worker running `target(conn, *args)`; `call` is one exchange on its pipe.

    `errors` maps an exception type name the worker may report to the type raised here
    (others raise `WorkerError`), so start-up errors keep their one-line meaning."""

    def __init__(self, target: Callable[..., None], args: tuple, *, name: str,
                 errors: dict[str, type[Exception]] | None = None) -> None:
        ctx = mp.get_context("spawn")
        self._conn, child = ctx.Pipe()
        self._proc = ctx.Process(target=target, args=(child, *args), daemon=True, name=name)
        self._proc.start()
        child.close()
        self.name = name
        self._errors = errors or {}
        self._lock = threading.Lock()
        # a list: each answered call appends (command, seconds in the worker's handler); None: not kept
        self.handler_log: list[tuple[str, float]] | None = None
        self.ready: Any = self._reply()  # what the worker said when it was ready

    def _reply(self, command: str = "") -> Any:
        try:
            status, payload, *handler_s = self._conn.recv()
        except EOFError:
            raise WorkerError(f"the {self.name} worker exited") from None
        if status == "error":
            kind, message = payload
            raise self._errors.get(kind, WorkerError)(message if kind in self._errors else f"{kind}: {message}")
        if handler_s and self.handler_log is not None:
            self.handler_log.append((command, handler_s[0]))
        return payload

    def call(self, command: str, payload: object = None) -> Any:
        with self._lock:
            self._conn.send((command, payload))
            return self._reply(command)

    def close(self, timeout_s: float = 30.0) -> None:
        """Ask the worker to end ("close"), and kill it if it does not."""
        if self._proc.is_alive():
            with contextlib.suppress(OSError, WorkerError, EOFError):
                self.call("close")
            self._proc.join(timeout_s)
            if self._proc.is_alive():
                self._proc.kill()


def serve(conn: Any, handle: Callable[[str, Any], Any]) -> None:
    """The worker side's loop: answer each `(command, payload)` with `handle`'s reply (or its
    error) until "close" (answered, then the loop ends)."""
    while True:
        try:
            command, payload = conn.recv()
        except (EOFError, OSError):  # the parent went away (it failed or was stopped): end quietly
            return
        began = time.perf_counter()
        try:
            reply = handle(command, payload)
        except Exception as exc:
            if not _send(conn, ("error", (type(exc).__name__, str(exc).splitlines()[0] if str(exc) else ""))):
                return
            continue
        if not _send(conn, ("ok", reply, time.perf_counter() - began)) or command == "close":
            return


def _send(conn: Any, message: tuple[Any, ...]) -> bool:
    """Send `message` to the parent; False when it has gone away (nobody to answer, nothing to say)."""
    try:
        conn.send(message)
    except (BrokenPipeError, ConnectionResetError, EOFError):
        return False
    return True


def started(conn: Any, build: Callable[[], Any]) -> Any:
    """Run the worker's start-up `build()`; report it ready (with what `build` returns as
    `(state, ready info)`) or failed. Returns the state, or None after a failure."""
    try:
        state, info = build()
    except Exception as exc:  # reported to the parent, which raises it
        _send(conn, ("error", (type(exc).__name__, str(exc))))
        return None
    return state if _send(conn, ("ready", info)) else None
