"""What a policy may ask about the hardware: predicted durations, as a protocol.

Policies that size work by time (HedraRAG's dynamic sub-stage budget) need a latency
prediction. The core never loads a profile; a body passes in an object with these
methods (the simulator and the real backend both build it from a calibration profile).
"""

from __future__ import annotations

from typing import Protocol


class SearchCostModel(Protocol):
    """Predicts the duration of one retrieval search call."""

    def cluster_vectors(self, cluster: int) -> int:
        """Vectors stored in IVF list `cluster`."""
        ...

    def search_s(self, queries: int, new_queries: int, pairs: int, scanned_vectors: int) -> float:
        """Seconds for one search call over `queries` queries (`new_queries` of them need
        embedding and coarse assignment first) scanning `pairs` (query, list) pairs that
        hold `scanned_vectors` vectors in all."""
        ...
