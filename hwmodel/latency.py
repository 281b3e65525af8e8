"""Latency models: pure functions of (work, profile) that the simulator times items with.

These are the model forms the calibration fits (DESIGN §7). They never read a clock or a
file; `LatencyModel` binds a profile and precomputes the IVF list sizes.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping

import numpy as np

from hwmodel.embedder_tokens import EmbedderUnavailable, token_counter
from hwmodel.profile import Profile, ProfileError


def gen_step_s(profile: Profile, prefill_tokens: int, seqs: int, context_tokens: int, admitted: int = 0,
               admitted_tokens: int = 0, prefill_attention: int = 0) -> float:
    """One engine step: fixed cost (weights streamed once) + prefill compute + per scheduled
    sequence (decode compute, the engine's per-request bookkeeping) + attention over the KV
    context read this step + the prefill chunks' own attention (query-key pairs, quadratic in
    a prompt's length) + the requests handed to the engine with it (`add_request`: a cost per
    request and per prompt token) + the context beyond what the chip's caches hold between
    steps, read from memory (`context_spill_s`). What the steps before it leave (a prefill's
    refill, an idle spell's cold caches) is added by the caller (`LatencyModel.refill_s`,
    `LatencyModel.engine_cold_s`)."""
    m = profile.gen_step
    return (m.base_s + m.prefill_token_s * prefill_tokens + m.seq_s * seqs + m.context_token_s * context_tokens
            + m.admit_s * admitted + m.admit_token_s * admitted_tokens + m.prefill_attention_s * prefill_attention
            + context_spill_s(profile, context_tokens))


def context_spill_s(profile: Profile, context_tokens: int) -> float:
    """What a step's KV context beyond `context_cached_tokens` adds: read from memory, not from
    the caches that hold the rest between steps (0.0 where the profile has no such term)."""
    m = profile.gen_step
    return m.context_spill_token_s * (context_tokens - m.context_cached_tokens) \
        if context_tokens > m.context_cached_tokens else 0.0


def decode_step_terms(profile: Profile, seqs: int) -> tuple[float, float]:
    """(fixed, per context token) of a step where `seqs` sequences decode and nothing else runs:
    `gen_step_s(profile, 0, seqs, c) == fixed + per * c + context_spill_s(profile, c)` bit for
    bit (its terms of work that is zero add 0.0, which changes no sum), so a run of decode steps
    is priced without a call each."""
    m = profile.gen_step
    return m.base_s + m.prefill_token_s * 0 + m.seq_s * seqs, m.context_token_s


def contended_s(seconds: float, overlap_s: float, slowdown: float) -> float:
    """An item that takes `seconds` alone, started while the other lane is busy for `overlap_s`
    more seconds, during which it progresses at 1 / (1 + slowdown) of its speed alone
    (`Profile.contention`): the time it takes. `seconds` itself where nothing overlaps."""
    if overlap_s <= 0.0 or not slowdown:
        return seconds
    done = overlap_s / (1.0 + slowdown)  # work done while the other lane is busy
    return seconds * (1.0 + slowdown) if seconds <= done else overlap_s + (seconds - done)


def transfer_s(latency_s: float, bytes_per_s: float, nbytes: int) -> float:
    """A PCIe copy or a GPU-resident scan of `nbytes`."""
    return latency_s + nbytes / bytes_per_s if nbytes else 0.0


def ivf_list_sizes(profile: Profile) -> np.ndarray:
    """Vectors per IVF list: measured sizes if the profile has them, else a seeded
    lognormal draw (real k-means lists are skewed) scaled to sum to ntotal."""
    idx = profile.index
    if idx.list_sizes is not None:
        return np.asarray(idx.list_sizes, dtype=np.int64)
    rng = np.random.default_rng(idx.list_size_seed)
    w = rng.lognormal(0.0, idx.list_size_sigma, idx.nlist)
    sizes = np.floor(w / w.sum() * idx.ntotal).astype(np.int64)
    sizes[np.argsort(-w)[: idx.ntotal - int(sizes.sum())]] += 1  # hand out the rounding remainder
    return sizes


def _unpriced(text: str) -> int:
    """The token count where the profile does not price query texts: 0 (nothing is counted)."""
    return 0


def _embedder_tokens(profile: Profile) -> Callable[[str], int]:
    """The profile's embedder's token counter (its search model prices the embedding per token)."""
    try:
        return token_counter(str(profile.index.embedder))
    except EmbedderUnavailable as exc:
        raise ProfileError(f"profile {profile.name}: prices the query embedding in tokens of"
                           f" {profile.index.embedder}, which cannot be counted here: {exc}") from None


PEAK_CONTEXT_TOKENS = 1024  # context per sequence at which peak decode throughput is quoted
# steps after a prefill that pay its refill (the 8th pays decay^7 of it: 2e-4 at 0.3, 0.03 at 0.6); the fit's
# features stop at the same step, so the fitted term is this truncated one
REFILL_STEPS = 8


def refill_share(prefill_tokens: int, steps_after: int, refill_tokens: float, decay: float) -> float:
    """The share of `GenStepModel.refill_s` the `steps_after`-th step after a prefill of
    `prefill_tokens` pays: (1 - exp(-prefill / refill_tokens)) x decay^(steps_after - 1); 0.0
    for (0, 0). The one form the simulator charges and the calibration fits (its feature)."""
    if not steps_after:
        return 0.0
    return -math.expm1(-prefill_tokens / refill_tokens) * decay ** (steps_after - 1)


class AfterPrefill:
    """An engine's history as the refill term reads it: feed each step's prefill tokens in
    order (`step`); `pending` while a step would still pay a refill."""

    __slots__ = ("since", "tokens")

    def __init__(self) -> None:
        self.tokens = 0  # prompt tokens of the last step that computed any
        self.since = REFILL_STEPS  # steps since it that computed none

    @property
    def pending(self) -> bool:
        return self.since < REFILL_STEPS

    def step(self, prefill_tokens: int) -> tuple[int, int]:
        """Record one step; returns its (last prefill's tokens, steps since it) for `refill_s`,
        (0, 0) when it computes prompt tokens itself or pays no refill."""
        if prefill_tokens:
            self.tokens, self.since = prefill_tokens, 0
            return 0, 0
        if self.since >= REFILL_STEPS:
            return 0, 0
        self.since += 1
        return self.tokens, self.since


class KernelSizes:
    """The step sizes (tokens a step computes) an engine has its kernels compiled for: the
    `capacity` most recently run distinct sizes (vLLM-CPU's oneDNN matmul primitives, created per
    size and kept in bounded caches; measured, `calibration.profiler.KERNEL_PASSES`). An engine
    that warmed its kernels (`Engine.warm_kernels`, largest size first) starts with sizes 1 to
    `warmed`, the smallest most recent. `run(size)`: whether a step of that size compiles (a
    miss), recording it as the most recent. With capacity 0 nothing is tracked and nothing misses."""

    __slots__ = ("_recent", "capacity")

    def __init__(self, capacity: int, warmed: int = 0) -> None:
        self.capacity = capacity
        start = min(warmed, capacity)
        self._recent: dict[int, None] = dict.fromkeys(range(start, 0, -1)) if capacity else {}

    def cached(self, size: int) -> bool:
        return not self.capacity or size in self._recent

    def run(self, size: int) -> bool:
        """Record a step of `size` tokens; True when its kernels were not compiled."""
        if not self.capacity:
            return False
        recent = self._recent
        if size in recent:
            if next(reversed(recent)) != size:
                del recent[size]
                recent[size] = None
            return False
        recent[size] = None
        if len(recent) > self.capacity:
            del recent[next(iter(recent))]
        return True


class LatencyModel:
    """A profile's latency models, bound; also the policies' `SearchCostModel`."""

    def __init__(self, profile: Profile) -> None:
        self.profile = profile
        self.list_sizes: list[int] = ivf_list_sizes(profile).tolist()  # vectors per IVF list
        m = profile.cpu_search
        self.text_tokens: Callable[[str], int] = _embedder_tokens(profile) if m.prices_text else _unpriced
        self.embed_call_tokens = m.embed_call_tokens  # where search calls cut the embedding (SearchBatch)
        self._search = (m.call_s, m.query_s, m.new_query_s, m.embed_call_s, m.embed_token_s, m.embed_text_token_s,
                        m.thread_bytes_per_s, m.memory_bytes_per_s, profile.hardware.cpu_threads,
                        profile.index.bytes_per_vector)
        self._cold = (m.cold_s, m.cold_tau_s)
        self.engine_cold = profile.gen_step.cold_s  # > 0: a step after an idle spell costs more (engine_cold_s)
        self._engine_tau = profile.gen_step.cold_tau_s
        g = profile.gen_step
        self.refill = g.refill_s  # > 0: the steps after a prefill cost more (refill_s)
        self._refill = (g.refill_tokens, g.refill_decay)
        self.kernel_s = g.kernel_s if g.kernel_sizes else 0.0  # what a step of a size not compiled adds

    def kernel_sizes(self) -> KernelSizes:
        """A fresh engine's compiled step sizes (`KernelSizes`), as the profile's engine starts."""
        engine = self.profile.engine
        return KernelSizes(self.profile.gen_step.kernel_sizes,
                           engine.max_num_batched_tokens if engine.warm_kernels else 0)

    def search_s(self, queries: int, new_queries: int, pairs: int, scanned_vectors: int,
                 embed_max_tokens: int = 0, embed_tokens: int = 0, idle_s: float = 0.0,
                 embed_calls: int | None = None, embed_padded_tokens: int | None = None) -> float:
        """One CPU search call: the `new_queries` that start in it are embedded in `embed_calls`
        model calls (`ragraph.work.embed_plan`, cut at `embed_call_tokens`; default one): a cost
        per model call, per query, per token of their texts (`embed_tokens` in all: tokenizing)
        and per padded token (a model call runs its texts padded to its longest:
        `embed_padded_tokens`, default every text padded to `embed_max_tokens`, as one call
        would); then the (query, list) pairs spread over the threads and scan at the per-thread
        rate times the threads in use, capped by the memory system's rate. A call that embeds
        after the lane sat idle `idle_s` seconds runs cold (the embedder's weights out of cache):
        + cold x (1 - exp(-idle / tau)). (The profile is unpacked once in __init__: policies
        price every candidate sub-stage.)"""
        (call, per_query, per_new, embed_call, per_token, per_text_token, thread_rate, memory_rate, threads,
         vec_bytes) = self._search
        rate = min(memory_rate, thread_rate * min(threads, max(pairs, 1)))
        if new_queries:
            padded = new_queries * embed_max_tokens if embed_padded_tokens is None else embed_padded_tokens
            embed = (embed_call * (1 if embed_calls is None else embed_calls) + new_queries * per_new
                     + per_token * padded + per_text_token * embed_tokens)
        else:
            embed = 0.0
        if new_queries and idle_s > 0 and self._cold[0]:
            embed += self._cold[0] * -math.expm1(-idle_s / self._cold[1])
        return call + per_query * queries + embed + scanned_vectors * vec_bytes / rate

    def search_call_s(self, args: Mapping[str, int], idle_s: float = 0.0) -> float:
        """A CPU search call priced from its features (`ragraph.work.SearchBatch.timeline_args`)."""
        return self.search_s(args["queries"], args["new_queries"], args["clusters"], args["vectors"],
                             args["embed_max_tokens"], args["embed_tokens"], idle_s, args.get("embed_calls"),
                             args.get("embed_padded_tokens"))

    def engine_cold_s(self, idle_s: float) -> float:
        """What an engine step adds after the engine sat idle `idle_s` seconds (its caches
        cooled): cold x (1 - exp(-idle / tau)); 0 back to back."""
        return self.engine_cold * -math.expm1(-idle_s / self._engine_tau) if idle_s > 0 and self.engine_cold else 0.0

    def refill_s(self, prefill_tokens: int, steps_after: int) -> float:
        """What the `steps_after`-th step after a step that computed `prefill_tokens` prompt tokens
        adds, where it computes none itself (`AfterPrefill`): the prefill pushed the weights out
        of the caches and the steps after it bring them back, refill x (1 - exp(-prefill /
        refill_tokens)) x decay^(steps_after - 1); 0.0 for (0, 0)."""
        if not (steps_after and self.refill):
            return 0.0
        return self.refill * refill_share(prefill_tokens, steps_after, *self._refill)

    def kernels_s(self, kernels: KernelSizes, computed_tokens: int) -> float:
        """What a step of `computed_tokens` adds on an engine whose compiled sizes are `kernels`:
        `kernel_s` where that size is not compiled, 0.0 where it is (the step is recorded)."""
        return self.kernel_s if self.kernel_s and kernels.run(computed_tokens) else 0.0

    def engine_step_s(self, args: Mapping[str, int]) -> float:
        """An engine step priced from what it did (`ragraph.work.GenStepResult.timeline_args`),
        its refill not included (`refill_s`)."""
        return self.gen_step_s(args["prefill_tokens"], args["running"], args["context_tokens"], args["admitted"],
                               args["admitted_tokens"], args["prefill_attention"])

    def gen_step_s(self, prefill_tokens: int, seqs: int, context_tokens: int, admitted: int = 0,
                   admitted_tokens: int = 0, prefill_attention: int = 0) -> float:
        return gen_step_s(self.profile, prefill_tokens, seqs, context_tokens, admitted, admitted_tokens,
                          prefill_attention)

    def decode_step_terms(self, seqs: int) -> tuple[float, float]:
        return decode_step_terms(self.profile, seqs)

    def peak_decode_tokens_s(self, context_tokens: int = PEAK_CONTEXT_TOKENS) -> float:
        """The engine's peak decode throughput (tokens/s): `max_num_seqs` sequences decoding
        together, each reading `context_tokens` of context. Speculation's T_max."""
        n = self.profile.engine.max_num_seqs
        return n / self.gen_step_s(0, n, n * context_tokens)

    # --- what the GPU index cache's sizing asks (ragraph.costs.GpuCacheCosts) ------------------

    @property
    def has_gpu_cache(self) -> bool:
        """Whether the profile describes a GPU index cache (a GPU, its scans and the pcie link)."""
        p = self.profile
        return p.hardware.gpu is not None and p.gpu_search is not None and p.pcie is not None

    @property
    def bytes_per_vector(self) -> int:
        return self.profile.index.bytes_per_vector

    @property
    def kv_bytes_per_token(self) -> int:
        return self.profile.model.kv_bytes_per_token

    @property
    def kv_block_bytes(self) -> int:
        return self.profile.model.kv_bytes_per_token * self.profile.engine.block_size

    @property
    def max_num_seqs(self) -> int:
        return self.profile.engine.max_num_seqs

    @property
    def max_model_len(self) -> int:
        return self.profile.engine.max_model_len

    def kv_pool_bytes(self) -> int:
        """GPU memory the KV cache and the index cache share (the engine's KV capacity)."""
        return self.profile.kv_capacity_blocks() * self.kv_block_bytes

    def scan_s(self, vectors: int) -> float:
        """Seconds the CPU lane spends scanning `vectors` (all threads busy), call costs aside."""
        (*_, thread_rate, memory_rate, threads, vec_bytes) = self._search
        return vectors * vec_bytes / min(memory_rate, thread_rate * threads)

    def pcie_s(self, nbytes: int) -> float:
        return transfer_s(*self._transfer("pcie"), nbytes)

    def gpu_search_s(self, nbytes: int) -> float:
        return transfer_s(*self._transfer("gpu_search"), nbytes)

    def _transfer(self, name: str) -> tuple[float, float]:
        model = getattr(self.profile, name)
        if model is None:
            raise ValueError(f"profile {self.profile.name} has no {name} model (a rig without a GPU index):"
                             " a policy that uses the GPU cache needs a profile of a GPU machine")
        return model.latency_s, model.bytes_per_s
