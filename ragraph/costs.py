"""What a policy may ask about the hardware: predicted durations, as a protocol.

Policies that size work by time (HedraRAG's dynamic sub-stage budget) need a latency
prediction. The core never loads a profile; a body passes in an object with these
methods: both bodies pass `hwmodel.latency.LatencyModel`, built from the same profile, so
the policy's estimate and the simulated duration are one formula.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol


class SearchCostModel(Protocol):
    """Predicts the duration of one retrieval search call, and the engine's peak throughput."""

    @property
    def list_sizes(self) -> Sequence[int]:
        """Vectors stored in each IVF list, indexed by list id."""
        ...

    @property
    def embed_call_tokens(self) -> float:
        """An embedding-model call's own cost in padded tokens: where a search call's new texts
        are cut into model calls (`ragraph.work.embed_groups`); inf where texts are not priced."""
        ...

    def search_s(self, queries: int, new_queries: int, pairs: int, scanned_vectors: int,
                 embed_max_tokens: int = 0, embed_tokens: int = 0, *, embed_calls: int | None = None,
                 embed_padded_tokens: int | None = None) -> float:
        """Seconds for one search call over `queries` queries (`new_queries` of them start in
        it: their texts, `embed_tokens` tokens in all and the longest `embed_max_tokens`,
        are embedded first, in `embed_calls` model calls that run `embed_padded_tokens` tokens
        (`ragraph.work.embed_plan`; None: one call, every text padded to the longest)) scanning
        `pairs` (query, list) pairs that hold `scanned_vectors` vectors in all."""
        ...

    def peak_decode_tokens_s(self) -> float:
        """The engine's peak decode throughput in tokens per second (T_max for speculation)."""
        ...


class GpuCacheCosts(SearchCostModel, Protocol):
    """What sizing a GPU index cache asks of the hardware (HedraRAG Eq. 2)."""

    has_gpu_cache: bool  # the hardware has a GPU, GPU scans and a pcie link
    bytes_per_vector: int
    kv_bytes_per_token: int
    kv_block_bytes: int
    max_num_seqs: int
    max_model_len: int  # the longest prompt + output one engine call may hold

    def kv_pool_bytes(self) -> int:
        """GPU memory the KV cache and the index cache share."""
        ...

    def gen_step_s(self, prefill_tokens: int, seqs: int, context_tokens: int) -> float:
        """Seconds of one engine step."""
        ...

    def scan_s(self, vectors: int) -> float:
        """Seconds the CPU lane spends scanning `vectors`."""
        ...

    def gpu_search_s(self, nbytes: int) -> float:
        """Seconds the GPU spends scanning `nbytes` of cached vectors."""
        ...
