"""`flashrag`: stage-level batching, the HedraRAG paper's "vLLM + FAISS" baseline.

Generation uses the engine's continuous batching inside a stage; each retrieval stage
searches all waiting queries with their full nprobe in batched calls (32 queries a call,
as the HedraRAG artifact's sequential executor does); stages alternate without overlap
(see `ragraph.policies.staged`). Source: FlashRAG (Jin et al., 2024) as configured in the
HedraRAG artifact (SOSP 2025).
"""

from __future__ import annotations

from ragraph.policies.staged import StagedPolicy


class FlashRAGPolicy(StagedPolicy):
    name = "flashrag"

    def __init__(self, chunk: int = 32) -> None:
        super().__init__()
        self.chunk = chunk
