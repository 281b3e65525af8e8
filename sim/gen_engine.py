"""A model of vLLM V1's engine: its scheduler and KV cache, stepped one engine step at a time.

Over 600 lines: one model of vLLM's scheduler (and its waits for the host tier's loads); its
step phases, sequence transitions and the decode fast paths share the sequences' private state
(the KV blocks are `sim.block_pool`).

It follows vLLM's `Scheduler.schedule` (`vllm/v1/core/sched/scheduler.py`), `KVCacheManager`
(`allocate_slots`, `get_computed_blocks`) and `BlockPool` (read on vLLM 0.32), with the
settings of `profile.engine` and nothing else: block size, `max_num_seqs`,
`max_num_batched_tokens`, `enable_prefix_caching`, `max_model_len`, and the KV capacity of
`Profile.kv_capacity_blocks`.

Theory of operation. A sequence has `computed` tokens in the KV cache and `generated` output
tokens; it needs `prompt + generated - computed` tokens computed, and the step that brings
`computed` to `prompt + generated` samples its next token (a decoding sequence needs 1
token, one reading its prompt its next chunk). Each step spends a token budget:

1. Running sequences, in running order (admission order), each get min(tokens needed,
   budget left). KV blocks are allocated for the tokens computed so far plus this step's.
   When free blocks are too few, the *last* running sequence is preempted (recompute: its
   blocks are freed, `computed` drops to 0, it goes to the front of the waiting queue); if
   that is the sequence being scheduled, no further running sequence is served.
2. Only if nothing was preempted in this step, waiting sequences are admitted in queue
   order while the budget and `max_num_seqs` allow and the free blocks hold the sequence's
   whole current length less its prefix-cache hit (vLLM's default
   `scheduler_reserve_full_isl`); the first that does not fit stops admission. A resumed
   sequence recomputes its prompt and the tokens it had generated.
3. Prefix caching: full blocks are content-addressed (`sim.block_pool`). At admission a
   sequence reuses the longest run of cached blocks (at most its length - 1 tokens): its
   declared prefix's blocks (a template prefix id is one token sequence, whatever its
   length; a chain of block ids is a path in the prefix tree) and, after a preemption, its
   own blocks still cached. Free blocks form vLLM's free queue: blocks with no cached
   content (a partial last block; every block when caching is off) are reused first, cached
   ones in the KV policy's order (`lru`: vLLM's, a freed sequence's tail first; `kvflow`:
   by the workflows' steps to execution); reusing a cached block evicts it.

A sequence ends when its last token is sampled; its blocks are freed after the step. Tasks
longer than `max_model_len`, or needing more blocks than the cache has, are rejected with
the real driver's reasons. KV use counts blocks held by running sequences (cached free
blocks are free, as in vLLM's usage); prefix-cache hits are reported with a sequence's
first token, those of its first admission only (as vLLM reports `num_cached_tokens`).

Simplified: one cached copy per block (a block computed while an equal one is cached, as
when two sequences compute one prefix at once, is freed as content nobody reuses); no
watermark (vLLM's default 0), speculative decoding, `long_prefill_token_threshold`, async
or priority scheduling, KV connectors; output lengths are the trace's (no early stop). A
step takes `hwmodel.latency.gen_step_s(prefill tokens, sequences scheduled, context tokens)`:
the figures its `GenStepResult` reports, as the real driver reports them and calibration fits them,
plus the refill of the steps after a prefill (`LatencyModel.refill_s`, `AfterPrefill`) and the
kernels of a step size not run lately (`LatencyModel.kernel_s`, `KernelSizes`).

Cost: a decoding sequence's computed tokens are `tick - base`, so a step where every
running sequence decodes is O(events) (sequences that end; blocks allocated by count, from
a tally of `base mod block_size`), not O(batch), and a run of such steps is advanced in one
loop (`decode_run`). Other steps visit the sequences that prefill and the waiting queue's
head; only a step that preempts or runs out of token budget walks the whole running list.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

from hwmodel.latency import REFILL_STEPS, AfterPrefill, LatencyModel, contended_s
from ragraph.graph import NodeKey
from ragraph.kvpolicy import KVPolicy, parse_kv_policy
from ragraph.work import GenStep, GenStepResult, GenTask, never_runs
from sim.block_pool import BlockPool, Chain, Run
from sim.host_tier import HostTier

_WAITING, _PREFILL, _DECODE, _DONE = range(4)


@dataclass(slots=True, eq=False)  # identity equality: a key of the running dicts
class _Seq:
    """One task in the engine, waiting or running."""

    task: GenTask
    path: tuple[Chain, ...]  # the prefix tree's nodes of its declared prefix (() : none, or caching off)
    kp: int  # full blocks of its declared prefix
    state: int = _WAITING
    computed: int = 0  # tokens in the KV cache (vLLM's num_computed_tokens); while decoding: tick - base
    generated: int = 0  # output tokens sampled
    shared: int = 0  # prefix blocks 0..shared-1 it holds from the cache (the rest of its blocks are its own)
    base: int = 0  # while decoding: computed = engine tick - base
    finish_tick: int = -1  # while decoding: the tick of the step that samples its last token
    own_run: Run | None = None  # while preempted: its own blocks still cached
    first_hit: int = -1  # prefix-cache tokens at its first admission (reported with its first token)


class _Plan:
    """What one step schedules."""

    __slots__ = ("chunks", "context", "decoders", "preempted", "skipped")

    def __init__(self) -> None:
        self.chunks: list[tuple[_Seq, int, int]] = []  # (seq, computed before, tokens), not decoding
        self.decoders = 0  # decoding sequences served (one token each)
        self.context = 0  # their computed tokens before the step
        self.skipped: list[_Seq] = []  # decoding sequences the budget did not reach
        self.preempted = 0


class GenEngineModel:
    """vLLM V1's scheduler and KV cache, simulated; `step()` returns (seconds, result)."""

    fast_path = True  # run steps where everything decodes by counts (tests switch it off: same results)

    def __init__(self, latency: LatencyModel, kv_policy: str | KVPolicy = "lru") -> None:
        policy = kv_policy if isinstance(kv_policy, KVPolicy) else parse_kv_policy(kv_policy)
        kv_policy = policy.name
        engine = latency.profile.engine
        self.latency = latency
        self.block = engine.block_size
        self.token_budget = engine.max_num_batched_tokens
        self.max_seqs = engine.max_num_seqs
        self.max_model_len = engine.max_model_len
        self.caching = engine.enable_prefix_caching
        self.total_blocks = latency.profile.kv_capacity_blocks()
        self._longest = min(self.max_model_len, self.total_blocks * self.block)  # tokens a sequence may reach
        host_blocks = latency.profile.host_kv_blocks() if self.caching else 0
        self.host = HostTier(host_blocks, latency.kv_block_bytes, latency.pcie_s) if host_blocks else None
        prefetch = self.host is not None and policy.name == "kvflow" and policy.prefetch
        self.skip_loading = prefetch  # a sequence whose prefix is still loading waits (kvflow), else the step stalls
        self.pool = BlockPool(self.total_blocks, self.block, self.caching, kv_policy, self.host,
                              self._recompute_s if kv_policy == "ragcache" else None,
                              policy.load_ahead if prefetch else -1)
        self.kv_policy = policy.spec
        self.stall_s = 0.0  # seconds steps waited for KV blocks loading from the host tier
        self.stalls = 0  # steps that waited
        self.skips = 0  # admissions put off because the sequence's prefix was still loading (kvflow)
        self.loaded_tokens = 0  # prompt tokens loaded from the host tier at admission (not prefetched)
        self.copy_marks: list[int] = []  # decode_run with a host tier: copies queued before each step
        self._stall_until = 0.0  # the step being planned waits for loads until then
        self.hit_tokens = 0  # prompt tokens found in the prefix cache, every admission
        self.prefill_tokens = 0  # prompt tokens computed (recomputation after preemption included)
        self.preemptions = 0
        self.seqs: dict[NodeKey, _Seq] = {}
        self.waiting: deque[_Seq] = deque()
        self.running: dict[_Seq, None] = {}  # in running order
        self.prefilling: dict[_Seq, None] = {}  # running, not decoding, in running order
        self.n_dec = 0  # running sequences that decode
        self.base_sum = 0  # sum of their `base`
        self.need = [0] * self.block  # decoding sequences by base mod block: those that need a block at tick = base
        self.finishing: dict[int, list[_Seq]] = {}  # tick -> decoding sequences sampling their last token then
        self.tick = 0  # steps taken
        self._rejected: list[tuple[NodeKey, str]] = []
        self._admitted = 0  # tasks queued by `apply` since the last step (their add_request costs time)
        self._admitted_tokens = 0  # their prompt tokens
        self._aborted_tokens = 0  # output tokens of the sequences aborted since the last step
        self._decode_terms: dict[int, tuple[float, float]] = {}  # decoding sequences -> decode_step_terms
        g = latency.profile.gen_step
        self._spill = (g.context_spill_token_s, g.context_cached_tokens)  # hwmodel.latency.context_spill_s
        self.after_prefill = AfterPrefill()  # the steps since the last prefill (their refill)
        self.kernels = latency.kernel_sizes()  # the step sizes with kernels compiled (a new size costs kernel_s)

    # --- the scheduler's requests -----------------------------------------------------------

    def apply(self, step: GenStep) -> None:
        """Drop `step.abort` (unknown keys are ignored), then queue `step.admit`; tasks that can
        never run are reported by the next `step()`. Raises ValueError for a key already queued."""
        if step.kv_steps is not None:
            self.pool.set_steps(step.kv_steps)
        for key in step.abort:
            self._abort(key)
        for task in step.admit:
            if task.key in self.seqs:
                raise ValueError(f"{task.key} is already in the engine (abort it before admitting it again)")
            if not (task.prompt_tokens > 0 and task.output_tokens > 0
                    and task.prompt_tokens + task.output_tokens <= self._longest):
                self._rejected.append((task.key, self._never_runs(task)))
                continue
            path: tuple[Chain, ...] = ()
            kp = 0
            if self.caching:
                if task.hash_ids:
                    kp = min(len(task.hash_ids) * task.block_tokens, task.prompt_tokens) // self.block
                    path = self.pool.path(task.hash_ids, task.block_tokens, kp) if kp else ()
                elif task.prefix:
                    kp = min(task.prefix_tokens, task.prompt_tokens) // self.block
                    path = (self.pool.chain(task.prefix),) if kp else ()
            self.seqs[task.key] = seq = _Seq(task, path, kp)
            self.waiting.append(seq)
            self._admitted += 1
            self._admitted_tokens += task.prompt_tokens

    @property
    def now(self) -> float:
        """The body's clock (matters only with a host tier: its copies and loads are timed)."""
        return self.host.now if self.host is not None else 0.0

    @now.setter
    def now(self, t: float) -> None:
        if self.host is not None:
            self.host.now = t

    def loads_due(self) -> float:
        """When the earliest load a waiting sequence is skipped for ends (0.0: none); the body
        wakes the engine then when nothing else runs."""
        if self.host is None or not self.waiting:
            return 0.0
        now, due = self.host.now, 0.0
        for seq in self.waiting:
            for node in seq.path:
                if node.ready_at > now and node.cached > node.start and (not due or node.ready_at < due):
                    due = node.ready_at
        return due

    def step(self) -> tuple[float, GenStepResult]:
        """Called by the body once per `GenStep`, after `apply`: run one engine step. Returns its
        modelled seconds (0.0 when nothing ran), a wait for KV blocks still loading from the host
        tier included, and what it did. Raises RuntimeError if the waiting queue's head cannot
        enter an empty engine (a bug of this model; state undefined)."""
        n = self.n_dec
        if n and self.fast_path and not (self.prefilling or self.waiting or self._rejected or self._aborted_tokens) \
                and n <= self.token_budget:
            k = self.need[self.tick % self.block]  # blocks the decoders need: allocated by count
            pool = self.pool
            if k <= pool.anon:
                pool.anon -= k
                return self._decode_step(n)
            if k <= pool.anon + pool.cached_free:
                pool.take(k)
                return self._decode_step(n)
        plan = _Plan()
        budget = self._serve_running(plan)
        self.preemptions += plan.preempted
        if not plan.preempted:
            self._admit_waiting(plan, budget)
        rejected: tuple[tuple[NodeKey, str], ...] = ()
        if self._rejected:
            rejected, self._rejected = tuple(self._rejected), []
        scheduled = plan.decoders + len(plan.chunks)
        admitted, self._admitted = self._admitted, 0
        admitted_tokens, self._admitted_tokens = self._admitted_tokens, 0
        aborted_tokens, self._aborted_tokens = self._aborted_tokens, 0
        if not scheduled:
            if self.waiting and not plan.preempted and not (self.skip_loading and self.loads_due()):
                raise RuntimeError(f"engine model cannot admit {self.waiting[0].task.key} into an empty engine")
            return 0.0, GenStepResult(rejected=rejected, kv_used_blocks=self.kv_used_blocks,
                                      kv_total_blocks=self.total_blocks, kv_block_tokens=self.block,
                                      waiting=len(self.waiting),
                                      preempted=plan.preempted, admitted=admitted, admitted_tokens=admitted_tokens,
                                      aborted_tokens=aborted_tokens)
        prefill, sampled, context, attention = self._tally(plan)
        self.prefill_tokens += prefill
        seconds = self.latency.gen_step_s(prefill, scheduled, context, admitted, admitted_tokens, attention)
        if prefill or self.after_prefill.pending:
            seconds += self.latency.refill_s(*self.after_prefill.step(prefill))
        computed = prefill + plan.decoders
        seconds += self.latency.kernels_s(self.kernels, computed)
        if self._stall_until:
            wait = self._stall_until - self.host.now if self.host is not None else 0.0
            self._stall_until = 0.0
            if wait > 0:
                self.stall_s += wait
                self.stalls += 1
                seconds += wait
        finished, cached = self._advance(plan)
        return seconds, GenStepResult(
            finished=finished, rejected=rejected, kv_used_blocks=self.kv_used_blocks,
            kv_total_blocks=self.total_blocks, kv_block_tokens=self.block, running=scheduled,
            waiting=len(self.waiting), prefill_tokens=prefill, computed_tokens=computed,
            decode_tokens=sampled, cached_prompt_tokens=cached, context_tokens=context, preempted=plan.preempted,
            admitted=admitted, admitted_tokens=admitted_tokens, prefill_attention=attention,
            aborted_tokens=aborted_tokens)

    def decode_run(self, limit: int, end: float, dispatch: float, horizon: float, slow_until: float = -math.inf,
                   slowdown: float = 0.0) -> list[tuple[float, float, int, int]]:
        """Called by the body instead of `step()` for a run of steps it advances together: take up to
        `limit` steps while each is a decode step of the fast path (every running sequence decodes,
        nothing waits or prefills, free blocks suffice) that ends no sequence and ends before
        `horizon`; a step ends at the previous one's `end` + its seconds + `dispatch`. With a host
        tier, an eviction's copy starts at its step's start at the earliest, and `copy_marks` tells
        how many copies were queued before each step taken (the body's timeline). A step that starts
        before `slow_until` runs `slowdown` slower over the overlap (`hwmodel.latency.contended_s`:
        the other lane's item in flight). Returns
        (seconds, end, context tokens, KV blocks used after it) per step taken; their results are
        `step()`'s (running = decode tokens = the decoding sequences, nothing else)."""
        n = self.n_dec
        if not n or not self.fast_path or self.prefilling or self.waiting or self._rejected or \
                self._aborted_tokens or n > self.token_budget:
            return []
        pool, need, block, finishing = self.pool, self.need, self.block, self.finishing
        terms = self._decode_terms.get(n)
        if terms is None:
            terms = self._decode_terms[n] = self.latency.decode_step_terms(n)
        fixed, per_token = terms  # gen_step_s(0, n, context) = fixed + per_token * context + spill, bit for bit
        spill, cached = self._spill
        after_prefill, latency = self.after_prefill, self.latency
        since, tokens = after_prefill.since, after_prefill.tokens
        # every step of the run computes n tokens: only its first can meet n's kernels uncompiled
        kernel = latency.kernel_s if latency.kernel_s and not self.kernels.cached(n) else 0.0
        t, anon = self.tick, pool.anon
        context = n * t - self.base_sum
        used = pool.total - anon - pool.cached_free - pool.lent
        out: list[tuple[float, float, int, int]] = []
        append, stop = out.append, t + limit
        host = self.host
        if host is not None:
            marks = self.copy_marks = []
        while t < stop and t not in finishing:
            k = need[t % block]
            seconds = fixed + per_token * context
            if spill and context > cached:
                seconds += spill * (context - cached)
            refill = since < REFILL_STEPS  # (as `AfterPrefill.step(0)`, committed once the step is taken)
            if refill:
                seconds += latency.refill_s(tokens, since + 1)
            if kernel:
                seconds += kernel
            if slowdown and end < slow_until:
                seconds = contended_s(seconds, slow_until - end, slowdown)
            after = end + (seconds + dispatch)
            if after >= horizon:
                break
            if host is not None:
                marks.append(len(host.copies))
            if k <= anon:  # blocks allocated as `step()` allocates them
                anon -= k
            elif k <= anon + pool.cached_free:
                pool.anon = anon
                if host is not None:
                    host.now = end  # (when this step starts)
                pool.take(k)
                anon = pool.anon
            else:
                break
            used += k
            append((seconds, after, context, used))
            end = after
            t += 1
            kernel = 0.0
            context += n
            since += refill
        pool.anon, self.tick = anon, t
        after_prefill.since = since
        if out and latency.kernel_s:
            self.kernels.run(n)
        return out

    def kv_cache_report(self) -> dict[str, object]:
        """What the KV cache did over the run (summary.json `kv_cache`)."""
        cached, computed = self.hit_tokens, self.prefill_tokens
        out: dict[str, object] = {
            "kv_policy": self.kv_policy, "prompt_tokens_cached": cached, "prompt_tokens_computed": computed,
            "hit_rate": round(cached / (cached + computed), 6) if cached + computed else 0.0,
            "evicted_blocks": self.pool.evicted, "preemptions": self.preemptions}
        if self.host is not None:  # (absent without a host tier: outputs as before)
            out.update(self.host.report())
            out["prompt_tokens_loaded"] = self.loaded_tokens
            out["stall_s"] = round(self.stall_s, 9)
            out["stalled_steps"] = self.stalls
            out["skipped_admissions"] = self.skips
            out["prefetches"] = self.pool.prefetch_report()
        return out

    def _recompute_s(self, start: int, tokens: int) -> float:
        """ragcache's cost: seconds to recompute `tokens` prompt tokens after `start` ones (their
        prefill and attention terms of `hwmodel.latency.gen_step_s`)."""
        g = self.latency.profile.gen_step
        return tokens * g.prefill_token_s + (tokens * start + tokens * tokens // 2) * g.prefill_attention_s

    @property
    def kv_used_blocks(self) -> int:
        """Blocks held by running sequences (cached free blocks count as free, as in vLLM's usage)."""
        pool = self.pool
        return pool.total - pool.anon - pool.cached_free - pool.lent

    # --- memory shared with the GPU index cache ---------------------------------------------------

    def lend(self, blocks: int) -> int:
        """Give up to `blocks` free blocks (cached content evicted if need be) to the GPU index
        cache; returns how many it got. KV use plus lent blocks never exceed the capacity, and
        enough stay free for the longest sequence, so an emptied engine can always admit."""
        return self.pool.lend(blocks, self._blocks(self._longest))

    def reclaim(self, blocks: int) -> None:
        """The GPU index cache returns `blocks` lent blocks (they become free, with no content)."""
        self.pool.reclaim(blocks)

    def audit_blocks(self) -> int:
        """Blocks held, recounted from the sequences' state (for tests: equals `kv_used_blocks`)."""
        own = sum(self._blocks(self._computed(s)) - s.shared for s in self.running)
        return own + self.pool.audit()

    # --- steps ----------------------------------------------------------------------------------

    def _decode_step(self, n: int) -> tuple[float, GenStepResult]:
        """`step()` when all `n` running sequences decode one token (the budget holds them all and
        their blocks are allocated), nothing waits: nothing is preempted or admitted."""
        t = self.tick
        context = n * t - self.base_sum
        seconds = self.latency.gen_step_s(0, n, context)
        if self.after_prefill.pending:
            seconds += self.latency.refill_s(*self.after_prefill.step(0))
        seconds += self.latency.kernels_s(self.kernels, n)
        finished = self._finish_decoders(t) if t in self.finishing else ()
        self.tick = t + 1
        pool = self.pool
        total = pool.total
        used = total - pool.anon - pool.cached_free - pool.lent
        return seconds, GenStepResult(finished=finished, kv_used_blocks=used,
                                      kv_total_blocks=total, kv_block_tokens=self.block, running=n,
                                      decode_tokens=n, computed_tokens=n, context_tokens=context)

    def _serve_running(self, plan: _Plan) -> int:
        """Phase 1: serve the running sequences; returns the token budget left. When every one
        gets all it needs without preemption the order does not matter and decoders are
        counted, not visited; otherwise the running list is walked in order."""
        t, n_dec = self.tick, self.n_dec
        tokens, blocks = n_dec, self.need[t % self.block]
        chunks = []
        if self.prefilling:
            chunks = [(s, s.computed, s.task.prompt_tokens + s.generated - s.computed) for s in self.prefilling]
            for _, c, n in chunks:
                tokens += n
                blocks += self._blocks(c + n) - self._blocks(c)
        pool = self.pool
        if tokens > self.token_budget or blocks > pool.anon + pool.cached_free:
            return self._walk_running(plan)
        if blocks:
            pool.take(blocks)
        plan.decoders, plan.context = n_dec, n_dec * t - self.base_sum
        for seq, c, n in chunks:
            plan.chunks.append((seq, c, n))
            if seq.path:
                pool.register(seq, c, c + n)
        return self.token_budget - tokens

    def _walk_running(self, plan: _Plan) -> int:
        """Phase 1 as vLLM runs it: in running order, preempting from the end when blocks run out."""
        t, pool = self.tick, self.pool
        order = list(self.running)
        end, i, budget = len(order), 0, self.token_budget
        while i < end and budget > 0:
            seq = order[i]
            decoding = seq.state == _DECODE
            c = t - seq.base if decoding else seq.computed
            n = 1 if decoding else min(seq.task.prompt_tokens + seq.generated - c, budget)
            need = self._blocks(c + n) - self._blocks(c)
            while need > pool.anon + pool.cached_free and end > i:
                end -= 1
                self._preempt(order[end])
                plan.preempted += 1
            if end == i:  # it was preempted itself: serve no further running sequence
                break
            pool.take(need)
            budget -= n
            if decoding:
                plan.decoders += 1
                plan.context += c
            else:
                plan.chunks.append((seq, c, n))
                pool.register(seq, c, c + n)
            i += 1
        plan.skipped = [s for s in order[i:end] if s.state == _DECODE]
        return budget

    def _admit_waiting(self, plan: _Plan, budget: int) -> None:
        """Phase 2: admit waiting sequences in order while budget, max_num_seqs and blocks allow."""
        b, waiting, running, pool, host = self.block, self.waiting, self.running, self.pool, self.host
        skipped: list[_Seq] = []
        while budget > 0 and waiting and len(running) < self.max_seqs:
            seq = waiting[0]
            hit = touched = 0
            path = seq.path
            if path and not path[-1].alive:  # a node of its id chain left the tree while it waited
                seq.path = path = pool.path(seq.task.hash_ids, seq.task.block_tokens, seq.kp)
            if path or seq.own_run is not None:
                hit, touched = pool.lookup(seq)
                if host is not None and self.skip_loading and path:
                    if pool.loads:  # kvflow: start loading its prefix and let others go first
                        pool.prefetch(seq.task.prefix or (seq.task.block_tokens, *seq.task.hash_ids), demand=True)
                        hit, touched = pool.lookup(seq)
                    if pool.ready > host.now:
                        skipped.append(waiting.popleft())
                        self.skips += 1
                        continue
            length = seq.task.prompt_tokens + seq.generated
            if -(-length // b) - hit + touched > pool.anon + pool.cached_free:
                break
            waiting.popleft()
            if host is not None and pool.loads:
                self.loaded_tokens += b * sum(u - c for _, c, u in pool.loads)
            if hit or seq.own_run is not None:
                pool.touch(seq, hit)
            if host is not None and pool.ready > host.now and pool.ready > self._stall_until:
                self._stall_until = pool.ready  # the step waits for its blocks
            c = hit * b
            n = length - c if length - c < budget else budget
            k = -(-(c + n) // b) - hit
            if k <= pool.anon:
                pool.anon -= k
            else:
                pool.take(k)
            if seq.first_hit < 0:
                seq.first_hit = c
            self.hit_tokens += c
            seq.state, seq.computed = _PREFILL, c
            running[seq] = None
            self.prefilling[seq] = None
            plan.chunks.append((seq, c, n))
            if path:
                pool.register(seq, c, c + n)
            budget -= n
        if skipped:
            waiting.extendleft(reversed(skipped))

    def _tally(self, plan: _Plan) -> tuple[int, int, int, int]:
        """(prefill tokens, tokens sampled, context tokens, prefill attention) of a plan. A chunk
        is a decode, not prefill, when it computes a sequence's last sampled token (as the real
        driver counts)."""
        prefill, sampled, context, attention = 0, plan.decoders, plan.context, 0
        for seq, c, n in plan.chunks:
            length = seq.task.prompt_tokens + seq.generated
            if not (seq.generated and c == length - 1):
                prefill += n
                attention += n * c + n * n // 2
            sampled += c + n == length
            context += c
        return prefill, sampled, context, attention

    def _advance(self, plan: _Plan) -> tuple[tuple[NodeKey, ...], int]:
        """Apply a step's tokens: sample, start decoding, end; (finished keys, cached tokens reported)."""
        t, finished, cached = self.tick, [], 0
        for seq, c, n in plan.chunks:
            seq.computed = c + n
            if seq.computed < seq.task.prompt_tokens + seq.generated:
                continue
            if not seq.generated:
                cached += seq.first_hit
            seq.generated += 1
            del self.prefilling[seq]
            if seq.generated == seq.task.output_tokens:
                del self.running[seq]
                self._end(seq)
                finished.append(seq.task.key)
            else:
                self._start_decoding(seq, t + 1)
        for seq in plan.skipped:  # not served: one tick later for everything
            seq.computed = t - seq.base
            self._stop_decoding(seq)
            self._start_decoding(seq, t + 1)
        ended = self._finish_decoders(t)
        self.tick = t + 1
        return (*finished, *ended), cached

    # --- sequence transitions -------------------------------------------------------------------

    def _start_decoding(self, seq: _Seq, tick: int) -> None:
        seq.state = _DECODE
        seq.base = base = tick - seq.computed
        self.n_dec += 1
        self.base_sum += base
        self.need[base % self.block] += 1
        seq.finish_tick = tick = seq.task.prompt_tokens + seq.task.output_tokens - 2 + base
        ending = self.finishing.get(tick)
        if ending is None:
            self.finishing[tick] = [seq]
        else:
            ending.append(seq)

    def _stop_decoding(self, seq: _Seq) -> None:
        self.n_dec -= 1
        self.base_sum -= seq.base
        self.need[seq.base % self.block] -= 1
        seq.finish_tick = -1

    def _finish_decoders(self, t: int) -> tuple[NodeKey, ...]:
        """End the decoding sequences whose last token step `t` samples (`_stop_decoding` and
        `_end`, inline: this runs for most sequences)."""
        ending = self.finishing.pop(t, None)
        if ending is None:
            return ()
        done = []
        need, block, running, seqs = self.need, self.block, self.running, self.seqs
        for seq in ending:
            if seq.state == _DECODE and seq.finish_tick == t:  # else a stale entry (skipped, preempted, aborted)
                base = seq.base
                seq.computed = t + 1 - base
                self.n_dec -= 1
                self.base_sum -= base
                need[base % block] -= 1
                del running[seq]
                self.pool.release(seq, preempted=False)
                seq.state = _DONE
                key = seq.task.key
                del seqs[key]
                done.append(key)
        return tuple(done)

    def _leave_running(self, seq: _Seq) -> None:
        del self.running[seq]
        if seq.state == _DECODE:
            seq.computed = self.tick - seq.base
            seq.generated = seq.computed - seq.task.prompt_tokens + 1
            self._stop_decoding(seq)
        else:
            del self.prefilling[seq]

    def _preempt(self, seq: _Seq) -> None:
        """Recompute preemption: free its blocks, back to the front of the waiting queue."""
        self._leave_running(seq)
        self.pool.release(seq, preempted=True)
        seq.state, seq.computed = _WAITING, 0
        self.waiting.appendleft(seq)

    def _end(self, seq: _Seq) -> None:
        """It has left the running list: it ended, or was aborted."""
        self.pool.release(seq, preempted=False)
        seq.state = _DONE
        del self.seqs[seq.task.key]

    def _abort(self, key: NodeKey) -> None:
        seq = self.seqs.get(key)
        if seq is None:
            return
        decoded = self._computed(seq) - seq.task.prompt_tokens + 1 if seq.state == _DECODE else seq.generated
        self._aborted_tokens += max(decoded, 0)
        if seq.state == _WAITING:
            self.waiting.remove(seq)
            if seq.own_run is not None:
                seq.own_run.owner = None
            del self.seqs[key]
            seq.state = _DONE
            return
        self._leave_running(seq)
        self._end(seq)

    def _never_runs(self, task: GenTask) -> str:
        """Why the engine can never run `task` ("" if it can); the real driver's reasons."""
        return never_runs(task, max_model_len=self.max_model_len, block_size=self.block, total_blocks=self.total_blocks)

    # --- KV blocks ------------------------------------------------------------------------------

    def _blocks(self, tokens: int) -> int:
        return -(-tokens // self.block)

    def _computed(self, seq: _Seq) -> int:
        return self.tick - seq.base if seq.state == _DECODE else seq.computed
