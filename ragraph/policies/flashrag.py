"""`flashrag`: stage-level batching, the HedraRAG paper's "vLLM + FAISS" baseline.

Generation uses the engine's continuous batching inside a stage; each retrieval stage
searches all waiting queries with their full nprobe in batched calls (32 queries a call,
as the HedraRAG artifact's sequential executor does); stages alternate without overlap
(see `ragraph.policies.staged`). Source: FlashRAG (Jin et al., 2024) as configured in the
HedraRAG artifact (SOSP 2025).
"""

from __future__ import annotations

import math

from pydantic import BaseModel, ConfigDict, Field

from ragraph.costs import SearchCostModel
from ragraph.policies.spec import PolicyType
from ragraph.policies.staged import StagedPolicy


class FlashRAGOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)
    chunk: int = Field(default=32, ge=1, description="most queries in one search call")


class FlashRAGPolicy(StagedPolicy):
    name = "flashrag"

    def __init__(self, options: FlashRAGOptions | None = None, embed_call_tokens: float = math.inf) -> None:
        super().__init__(embed_call_tokens)
        self.options = options or FlashRAGOptions()
        self.chunk = self.options.chunk


def build(options: FlashRAGOptions, costs: SearchCostModel) -> FlashRAGPolicy:
    return FlashRAGPolicy(options, costs.embed_call_tokens)


POLICY = PolicyType("flashrag", FlashRAGOptions, build,
                    "stage-level batching, no CPU-GPU overlap (the paper's vLLM + FAISS baseline)")
