"""`langchain`: request batches run to completion, one search call per query.

As in the HedraRAG artifact's LangChain baseline: the requests that have arrived form a
batch that runs through its workflow stage by stage (LangChain's `batch` over the vLLM
wrapper and the FAISS vector store) until every request of the batch has ended; requests
arriving meanwhile wait for the next batch. Each retrieval is its own search call over the
query's full nprobe, with no batching across queries. Source: LangChain, as configured in
the HedraRAG artifact (SOSP 2025).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict

from ragraph.costs import SearchCostModel
from ragraph.policies.spec import PolicyType
from ragraph.policies.staged import StagedPolicy

if TYPE_CHECKING:
    from ragraph.runtime import NodeRun, RequestRun
    from ragraph.view import SchedulerView


class LangChainOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)  # no options


class LangChainPolicy(StagedPolicy):
    name = "langchain"
    chunk = 1

    def __init__(self, embed_call_tokens: float = math.inf) -> None:
        super().__init__(embed_call_tokens)
        self._batch: set[str] = set()  # ids of the requests in the running batch

    def eligible(self, s: SchedulerView, node: NodeRun) -> bool:
        if not self._batch:
            self._batch = set(s.requests)
        return node.key[0] in self._batch

    def on_request_end(self, s: SchedulerView, run: RequestRun, now: float) -> None:
        self._batch.discard(run.request.id)


def build(options: LangChainOptions, costs: SearchCostModel) -> LangChainPolicy:
    return LangChainPolicy(costs.embed_call_tokens)


POLICY = PolicyType("langchain", LangChainOptions, build,
                    "request batches run to completion, one search call per query")
