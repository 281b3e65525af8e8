"""A model of vLLM's continuous-batching engine, stepped one engine step at a time.

Each step spends a token budget (`max_num_batched_tokens`): one token per decoding
sequence first, then prefill chunks for sequences still reading their prompt (chunked
prefill), then admission of waiting sequences while the budget, `max_num_seqs` and the KV
cache allow. KV capacity comes from the profile (GPU memory minus weights, activations and
the index cache). A sequence reserves the KV blocks of its whole final length when admitted
(the trace pins output lengths), so the model queues instead of preempting; shared prompt
prefixes occupy their full blocks once, reference-counted, and are kept after use until
their blocks are needed (prefix caching). The work per step is O(events), not O(batch):
decoding sequences sit in a heap keyed by the step of their last token.
"""

from __future__ import annotations

import heapq
from collections import deque
from dataclasses import dataclass

from hwmodel.latency import LatencyModel
from ragraph.graph import NodeKey
from ragraph.work import GenStep, GenStepResult, GenTask


@dataclass(slots=True, eq=False)  # identity equality: deque.remove must find this very sequence
class _Seq:
    task: GenTask
    blocks: int = 0  # KV blocks reserved (shared prefix blocks excluded)
    cached: int = 0  # prompt tokens served from the prefix cache
    prefill_left: int = 0  # prompt tokens still to compute
    finish_step: int = -1  # step of its last token, once decoding
    gone: bool = False  # aborted (lazy deletion from the decode heap)


@dataclass(slots=True)
class _Prefix:
    blocks: int
    refs: int = 0
    last_used: int = 0


class GenEngineModel:
    """vLLM's scheduler and KV cache, simulated; `step()` returns (seconds, result)."""

    def __init__(self, latency: LatencyModel) -> None:
        profile = latency.profile
        self.latency = latency
        self.block = profile.engine.block_size
        self.token_budget = profile.engine.max_num_batched_tokens
        self.max_seqs = profile.engine.max_num_seqs
        self.total_blocks = profile.kv_capacity_blocks()
        self.free_blocks = self.total_blocks
        self.waiting: deque[_Seq] = deque()
        self.prefilling: deque[_Seq] = deque()
        self.decoding: list[tuple[int, int, _Seq]] = []  # heap of (finish step, tiebreak, seq)
        self.n_decoding = 0
        self.context = 0  # tokens in the KV cache of running sequences
        self.seqs: dict[NodeKey, _Seq] = {}
        self.prefixes: dict[tuple[str, int], _Prefix] = {}  # (prefix id, full blocks) -> cached blocks
        self.step_no = 0
        self._tiebreak = 0
        self._rejected: list[tuple[NodeKey, str]] = []

    # --- the scheduler's requests -----------------------------------------------------------

    def apply(self, step: GenStep) -> None:
        """Drop `step.abort`, then queue `step.admit` (in that order)."""
        for key in step.abort:
            self._abort(key)
        for task in step.admit:
            seq = _Seq(task)
            need = self._blocks(task.prompt_tokens + task.output_tokens)
            if need > self.total_blocks:
                self._rejected.append((task.key, f"needs {need} KV blocks, engine has {self.total_blocks}"))
                continue
            self.seqs[task.key] = seq
            self.waiting.append(seq)

    def step(self) -> tuple[float, GenStepResult]:
        """Run one engine step: the modelled seconds and what it produced."""
        if not (self.prefilling or self.waiting or self._rejected) and self.n_decoding:
            return self._decode_step()
        decodes = self.n_decoding
        budget = self.token_budget - decodes
        prefill = 0
        done_prefill: list[_Seq] = []
        for seq in self.prefilling:
            if budget <= 0:
                break
            chunk = min(seq.prefill_left, budget)
            seq.prefill_left -= chunk
            budget -= chunk
            prefill += chunk
            if seq.prefill_left == 0:
                done_prefill.append(seq)
        cached = 0
        while budget > 0 and self.waiting and self._running() < self.max_seqs and self._admit(self.waiting[0]):
            seq = self.waiting.popleft()
            cached += seq.cached
            chunk = min(seq.prefill_left, budget)
            seq.prefill_left -= chunk
            budget -= chunk
            prefill += chunk
            self.prefilling.append(seq)
            if seq.prefill_left == 0:
                done_prefill.append(seq)
        running = decodes + len(self.prefilling)
        if not running and self.waiting:  # an empty engine admits its queue head; anything else is a bug
            raise RuntimeError(f"engine model cannot admit {self.waiting[0].task.key} into an empty engine")
        rejected, self._rejected = tuple(self._rejected), []
        if running == 0:
            return 0.0, GenStepResult(rejected=rejected, kv_used_blocks=self.total_blocks - self.free_blocks,
                                      kv_total_blocks=self.total_blocks, waiting=len(self.waiting))
        seconds = self.latency.gen_step_s(prefill, decodes, self.context)
        self.step_no += 1
        self.context += prefill + decodes + cached + len(done_prefill)  # + first tokens
        finished = self._advance(done_prefill)
        return seconds, GenStepResult(
            finished=tuple(finished), rejected=rejected, kv_used_blocks=self.total_blocks - self.free_blocks,
            kv_total_blocks=self.total_blocks, running=running, waiting=len(self.waiting),
            prefill_tokens=prefill, decode_tokens=decodes + len(done_prefill), cached_prompt_tokens=cached)

    def _decode_step(self) -> tuple[float, GenStepResult]:
        """`step()` when every running sequence decodes and nothing waits (the common case)."""
        decodes = self.n_decoding
        seconds = self.latency.gen_step_s(0, decodes, self.context)
        self.step_no += 1
        self.context += decodes
        finished = self._advance(())
        return seconds, GenStepResult(finished=tuple(finished), kv_used_blocks=self.total_blocks - self.free_blocks,
                                      kv_total_blocks=self.total_blocks, running=decodes, decode_tokens=decodes)

    @property
    def kv_used_blocks(self) -> int:
        return self.total_blocks - self.free_blocks

    # --- internals ------------------------------------------------------------------------------

    def _blocks(self, tokens: int) -> int:
        return -(-tokens // self.block)

    def _running(self) -> int:
        return self.n_decoding + len(self.prefilling)

    def _admit(self, seq: _Seq) -> bool:
        """Reserve KV for `seq` (using a cached prefix where there is one); False if full."""
        t = seq.task
        key = self._prefix_key(t)
        prefix = self.prefixes.get(key) if key else None
        prefix_blocks = key[1] if key else 0
        shared = prefix_blocks if prefix is not None else 0
        need = self._blocks(t.prompt_tokens + t.output_tokens) - shared
        if need > self.free_blocks and not self._evict_prefixes(need, keep=key):
            return False
        self.free_blocks -= need
        seq.blocks = need
        if key:
            if prefix is None:  # this sequence computes the prefix; its blocks become shared
                prefix = self.prefixes[key] = _Prefix(prefix_blocks)
                seq.blocks -= prefix_blocks
            else:
                seq.cached = min(prefix_blocks * self.block, t.prompt_tokens - 1)
            prefix.refs += 1
            prefix.last_used = self.step_no
        seq.prefill_left = t.prompt_tokens - seq.cached
        return True

    def _prefix_key(self, t: GenTask) -> tuple[str, int] | None:
        """Cache identity of a task's shared prefix: its id and its number of full blocks
        (only full blocks are shared, as in vLLM); None when it has none."""
        blocks = t.prefix_tokens // self.block if t.prefix else 0
        return (t.prefix, blocks) if blocks else None

    def _evict_prefixes(self, need: int, keep: tuple[str, int] | None) -> bool:
        """Free unreferenced cached prefixes (except `keep`, the one about to be reused), least
        recently used first, until `need` fits."""
        idle = sorted((p.last_used, name) for name, p in self.prefixes.items() if p.refs == 0 and name != keep)
        for _, name in idle:
            if need <= self.free_blocks:
                break
            self.free_blocks += self.prefixes.pop(name).blocks
        return need <= self.free_blocks

    def _advance(self, done_prefill: list[_Seq] | tuple[()]) -> list[NodeKey]:
        finished: list[NodeKey] = []
        for seq in done_prefill:
            self.prefilling.remove(seq)
            if seq.task.output_tokens <= 1:  # the prefill step samples the first token
                self._release(seq)
                finished.append(seq.task.key)
            else:
                seq.finish_step = self.step_no + seq.task.output_tokens - 1
                self._tiebreak += 1
                heapq.heappush(self.decoding, (seq.finish_step, self._tiebreak, seq))
                self.n_decoding += 1
        heap = self.decoding
        while heap and heap[0][0] <= self.step_no:
            seq = heapq.heappop(heap)[2]
            if seq.gone:
                continue
            self.n_decoding -= 1
            self._release(seq)
            finished.append(seq.task.key)
        return finished

    def _release(self, seq: _Seq) -> None:
        t = seq.task
        self.context -= t.prompt_tokens + t.output_tokens
        self.free_blocks += seq.blocks
        key = self._prefix_key(t)
        if key:
            self.prefixes[key].refs -= 1
        del self.seqs[t.key]

    def _abort(self, key: NodeKey) -> None:
        seq = self.seqs.get(key)
        if seq is None:
            return
        if seq in self.waiting:
            self.waiting.remove(seq)
            del self.seqs[key]
            return
        t = seq.task
        if seq.finish_step >= 0:  # decoding: tokens so far = prompt + generated
            seq.gone = True
            self.n_decoding -= 1
            generated = t.output_tokens - (seq.finish_step - self.step_no)
            self.context += t.prompt_tokens + t.output_tokens - (t.prompt_tokens + generated)
        else:
            self.prefilling.remove(seq)
            self.context += t.prompt_tokens + t.output_tokens - (t.prompt_tokens - seq.prefill_left)
        self._release(seq)
