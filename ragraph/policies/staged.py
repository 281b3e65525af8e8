"""Stage-level batching without CPU-GPU overlap: the shared core of both baselines.

This is how the HedraRAG artifact runs its "FlashRAG" (vLLM + FAISS) baseline and,
around LangChain's batch calls, its LangChain baseline: a *generation stage* hands every
eligible Generate node to the engine and steps it until all of them finish (new
generations wait for the next stage); then a *retrieval stage* searches every eligible
query that was waiting when it began, in calls of at most `chunk` queries, each over the
query's full nprobe. Stages alternate, so the GPU and the CPU never work at once.
"""

from __future__ import annotations

import math
from collections import deque
from typing import TYPE_CHECKING

from ragraph.policies.base import Policy
from ragraph.work import Lane, SearchBatch

if TYPE_CHECKING:
    from ragraph.runtime import NodeRun
    from ragraph.view import SchedulerView


class StagedPolicy(Policy):
    """Alternating generation and retrieval stages over the eligible nodes."""

    chunk: int  # most queries in one search call

    def __init__(self, embed_call_tokens: float = math.inf) -> None:
        self.embed_call_tokens = embed_call_tokens  # where its search calls cut the embedding (SearchBatch)
        self._last_stage = "retrieve"  # so that the first stage may be either
        self._stage_queries: deque[NodeRun] = deque()  # queries left in the retrieval stage

    def eligible(self, s: SchedulerView, node: NodeRun) -> bool:
        """Whether `node` may join the next stage (subclasses narrow this)."""
        return True

    def holds_generations(self, s: SchedulerView) -> bool:
        return bool(s.gen_in_engine)  # a generation stage runs: new ones wait for the next

    def admit_generations(self, s: SchedulerView, now: float) -> list[NodeRun]:
        if s.gen_in_engine or s.busy(Lane.CPU_RETRIEVAL) or self._stage_left(s):
            return []
        if self._last_stage == "generate" and self._waiting_queries(s):
            return []
        admit = [n for n in s.gen_ready.values() if self.eligible(s, n)]
        if admit:
            self._last_stage = "generate"
        return admit

    def plan_search(self, s: SchedulerView, lane: Lane, now: float) -> SearchBatch | None:
        if lane is not Lane.CPU_RETRIEVAL or s.gen_in_engine or s.busy(Lane.GPU_GEN):
            return None
        if not self._stage_left(s):
            if self._last_stage == "retrieve" and any(self.eligible(s, n) for n in s.gen_ready.values()):
                return None
            self._stage_queries.extend(self._waiting_queries(s))
            if not self._stage_queries:
                return None
            self._last_stage = "retrieve"
        tasks = []
        while self._stage_left(s) and len(tasks) < self.chunk:
            node = self._stage_queries.popleft()
            tasks.append(s.take_clusters(node, node.remaining))
        return SearchBatch(tuple(tasks), embed_call_tokens=self.embed_call_tokens)

    def _stage_left(self, s: SchedulerView) -> bool:
        """Whether the retrieval stage still has queries (dropping those whose request failed)."""
        queue = self._stage_queries
        while queue and queue[0].key not in s.retr_waiting:
            queue.popleft()
        return bool(queue)

    def _waiting_queries(self, s: SchedulerView) -> list[NodeRun]:
        return [n for n in s.retr_waiting.values() if self.eligible(s, n)]
