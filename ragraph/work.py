"""Work items the scheduler hands to lanes, and the results lanes hand back.

Both bodies (the SimPy model and the real vLLM + FAISS backend) execute exactly these
items: `Scheduler.next_work(lane)` returns one, the body runs it, and
`Scheduler.complete(item, result)` takes the matching result. All are frozen: an item
is a decision that has been made, a result a fact that has happened.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum

from ragraph.graph import NodeKey, PrefixId


class Lane(StrEnum):
    """An executor that runs one work item at a time (DESIGN §3)."""

    GPU_GEN = "gpu_gen"  # LLM engine steps
    CPU_RETRIEVAL = "cpu_retrieval"  # IVF cluster scans on the host's cores
    GPU_RETRIEVAL = "gpu_retrieval"  # scans of GPU-resident clusters
    PCIE = "pcie"  # host-to-device copies of clusters into the GPU cache

    # hashed as the string it equals (Enum's own __hash__, hash of the name, is a Python call
    # on every dict lookup by lane, and disagrees with ==)
    __hash__ = str.__hash__


LANES: tuple[Lane, ...] = tuple(Lane)


# --- generation -------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class GenTask:
    """A Generate node handed to the LLM engine (the engine may queue it)."""

    key: NodeKey  # node identity
    prompt_tokens: int  # whole prompt
    output_tokens: int  # exact tokens to decode
    prefix: str  # shared-prefix identity ("" = none)
    prefix_tokens: int  # tokens of that shared prefix
    speculative: bool = False  # started before its inputs were final (may be aborted)
    hash_ids: tuple[int, ...] = ()  # the prompt's declared leading blocks (ragraph.graph.Generate.hash_ids)
    block_tokens: int = 0  # tokens per declared block


def never_runs(task: GenTask, *, max_model_len: int, block_size: int, total_blocks: int) -> str:
    """Why an engine with these limits can never run `task` ("" if it can): the one list of
    refusals both bodies give (the real vLLM driver and the simulator's engine model)."""
    if task.prompt_tokens < 1:
        return "empty prompt"
    if task.output_tokens < 1:
        return "no output tokens requested"
    length = task.prompt_tokens + task.output_tokens
    if length > max_model_len:
        return f"prompt + output = {length} tokens > max_model_len {max_model_len}"
    need = -(-length // block_size)
    if need > total_blocks:
        return f"needs {need} KV blocks, engine has {total_blocks}"
    return ""


@dataclass(frozen=True, slots=True)
class GenStep:
    """One engine step on `gpu_gen`: first drop `abort`, then add `admit`, then step once
    (a key may be in both: an aborted speculation that runs again)."""

    admit: tuple[GenTask, ...] = ()  # new sequences for the engine's waiting queue
    abort: tuple[NodeKey, ...] = ()  # sequences to drop (failed speculation)
    # for a KV policy that orders evictions by the workflows in flight (ragraph.kvpolicy): each
    # declared prefix's steps to execution, as of now; None: unchanged since the last step
    kv_steps: tuple[tuple[PrefixId, int], ...] | None = None
    lane: Lane = field(default=Lane.GPU_GEN, init=False)


@dataclass(frozen=True, slots=True)
class GenStepResult:
    """What one engine step did."""

    finished: tuple[NodeKey, ...] = ()  # sequences that produced their last token
    rejected: tuple[tuple[NodeKey, str], ...] = ()  # sequences the engine can never run, with why
    kv_used_blocks: int = 0  # KV-cache blocks in use after the step
    kv_total_blocks: int = 0  # KV-cache capacity in blocks
    kv_block_tokens: int = 0  # tokens one KV block holds (0: not reported)
    running: int = 0  # sequences scheduled in this step
    waiting: int = 0  # sequences queued in the engine after the step (KV cache full, preempted)
    prefill_tokens: int = 0  # prompt tokens computed in this step (and tokens recomputed after a preemption)
    # tokens the step computed: its prefill tokens and one per decoding sequence (the size its kernels run at)
    computed_tokens: int = 0
    decode_tokens: int = 0  # tokens sampled in this step: one per decoding sequence and per finished prefill
    # prefix-cache hits (tokens) of the sequences that sampled their first token in this step, as
    # found at their first admission
    cached_prompt_tokens: int = 0
    # tokens already in the KV cache of the sequences scheduled in this step, before it (the sum
    # of their computed tokens): the attention context the step reads, fed to gen_step_s
    context_tokens: int = 0
    preempted: int = 0  # sequences preempted in this step (their KV blocks freed, to be recomputed)
    admitted: int = 0  # tasks the step's item handed to the engine (each an add_request), rejected ones aside
    admitted_tokens: int = 0  # their prompt tokens (the engine hashes and copies each prompt when it is added)
    # attention work of the prefill chunks: sum over them of chunk x (tokens computed before + chunk / 2),
    # the query-key pairs a causal prefill computes (quadratic in a prompt's length, unlike decodes)
    prefill_attention: int = 0
    # output tokens the sequences dropped by this step's item (`GenStep.abort`) had decoded: the
    # decode work a failed speculation wasted
    aborted_tokens: int = 0
    # (key, generated text) of finished sequences that were prompted with text (a real body with a
    # model that answers, `backends.answers`); empty for synthetic prompts and in the simulator
    texts: tuple[tuple[NodeKey, str], ...] = ()
    # (key, text so far) of the text-prompted sequences still running that sampled a token in this
    # step: what a speculative retrieval on a partial generation searches on the real body
    partial_texts: tuple[tuple[NodeKey, str], ...] = ()

    def timeline_args(self) -> dict[str, int]:
        """What a timeline slice of this step shows (both bodies write the same)."""
        return {"running": self.running, "prefill_tokens": self.prefill_tokens, "decode_tokens": self.decode_tokens,
                "computed_tokens": self.computed_tokens,
                "kv_used_blocks": self.kv_used_blocks, "waiting": self.waiting,
                "context_tokens": self.context_tokens, "preempted": self.preempted, "admitted": self.admitted,
                "admitted_tokens": self.admitted_tokens, "prefill_attention": self.prefill_attention,
                "aborted_tokens": self.aborted_tokens}


@dataclass(frozen=True, slots=True)
class QuietRun:
    """Engine steps a body advanced together (`Scheduler.complete_quiet`): each ran sequences and
    finished and refused nothing, and after each the core had only to continue."""

    ends: list[float]  # each step's end time, in order
    decode_tokens: list[int]  # tokens each step sampled
    kv_used_blocks: int  # KV-cache blocks in use after the last step
    kv_total_blocks: int  # KV-cache capacity in blocks
    waiting: int  # sequences queued in the engine after the last step
    aborted_tokens: int = 0  # output tokens of the sequences the first step's item dropped


# --- retrieval --------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class ScanTask:
    """Scan some IVF clusters for one query, merging into its running top-k."""

    key: NodeKey  # the Retrieve node
    clusters: tuple[int, ...]  # cluster ids to scan in this sub-stage
    k: int  # neighbours kept
    first: bool  # first sub-stage of this query: the query must be embedded/assigned first
    last: bool  # the query's top-k is final after this sub-stage
    # tokens of query text embedded in this sub-stage (the embedder's tokens): the text's on the
    # first sub-stage, 0 on later ones and where the query has no text (then nothing is embedded)
    embed_tokens: int = 0
    # candidate ids merged into the query's top-k before its first scan (only with `first`): the
    # request's previous top-20 (HedraRAG's local cache). A body merges only those whose IVF list
    # is in the query's probe list (the Retrieve node's clusters), so the final top-k stays that
    # of a full search of the probe list; only the partial results of earlier sub-stages change.
    seed: tuple[int, ...] = ()
    # share of the query text's words embedded: 1.0 normally; < 1 for a speculative retrieval
    # started on a partial generation (`ragraph.graph.query_prefix`). Such a task is the whole
    # search (first and last): the body embeds the prefix and searches the prefix's own probe
    # list (its coarse assignment, nprobe = len(clusters)); `clusters` only prices the call.
    prefix: float = 1.0


@dataclass(frozen=True, slots=True)
class SearchBatch:
    """One retrieval sub-stage: a batch of scans run as one search call."""

    tasks: tuple[ScanTask, ...]
    lane: Lane = Lane.CPU_RETRIEVAL  # cpu_retrieval, or gpu_retrieval for cached clusters
    # where the body cuts the new queries' texts into embedding-model calls (`embed_groups`): a
    # model call's own cost in padded tokens, the planner's cost model's (`SearchCostModel.
    # embed_call_tokens`, from the profile); inf: one call (a model whose cost has no text terms)
    embed_call_tokens: float = math.inf

    def timeline_args(self, list_sizes: Sequence[int]) -> dict[str, int]:
        """What this call does, given the vectors per IVF list: what a timeline slice of it
        shows (both bodies write the same) and what the simulator prices it by.

        queries: scans in the call; new_queries: those in their first sub-stage; clusters:
        (query, list) pairs; vectors: vectors scanned; embed_tokens: query text embedded, in the
        embedder's tokens; embed_max_tokens: the longest of those texts; speculative: scans on a
        prefix of their query (speculative retrievals); embed_calls, embed_padded_tokens: the
        embedding model's calls for the new queries' texts (`embed_groups`; 1 where texts are not
        counted) and the tokens they run, each text padded to its call's longest."""
        return dict(zip(SEARCH_FEATURES, self.features(list_sizes), strict=True))

    def features(self, list_sizes: Sequence[int]) -> tuple[int, int, int, int, int, int, int, int, int]:
        """`timeline_args` as a tuple, in `SEARCH_FEATURES` order (the simulator prices every call)."""
        pairs = vectors = new = tokens = longest = speculative = 0
        size = list_sizes.__getitem__
        texts = []
        for t in self.tasks:
            pairs += len(t.clusters)
            vectors += sum(map(size, t.clusters))
            new += t.first
            n = t.embed_tokens
            if n:
                texts.append(n)
                tokens += n
                if n > longest:
                    longest = n
            speculative += t.prefix < 1
        calls, padded = embed_plan(texts, self.embed_call_tokens)
        return len(self.tasks), new, pairs, vectors, tokens, longest, speculative, calls if new else 0, padded


SEARCH_FEATURES = ("queries", "new_queries", "clusters", "vectors", "embed_tokens", "embed_max_tokens", "speculative",
                   "embed_calls", "embed_padded_tokens")


def embed_groups(tokens: Sequence[int], call_tokens: float) -> list[list[int]]:
    """The model calls that embed texts of `tokens` tokens cheapest: indices into `tokens`, longest
    first, cut so that sum over calls of (call_tokens + texts x longest) is least (an exact dynamic
    programme over the sorted lengths; both bodies embed a search call's new queries so).
    `call_tokens` is a model call's own cost in padded tokens: the embedder pads a call's texts to
    its longest, so a call of mixed lengths is cheapest split where the padding a group would add
    costs more than one more call (`SearchBatch.embed_call_tokens`); inf: one call."""
    order = sorted(range(len(tokens)), key=lambda i: -tokens[i])
    n = len(order)
    if n < 2 or math.isinf(call_tokens):
        return [order] if n else []
    best, cut = [0.0] + [float("inf")] * n, [0] * (n + 1)
    for end in range(1, n + 1):
        for start in range(end):
            cost = best[start] + call_tokens + (end - start) * tokens[order[start]]
            if cost < best[end]:
                best[end], cut[end] = cost, start
    groups, end = [], n
    while end:
        groups.append(order[cut[end]:end])
        end = cut[end]
    return groups[::-1]


def embed_plan(tokens: Sequence[int], call_tokens: float) -> tuple[int, int]:
    """(model calls, padded tokens) of embedding texts of `tokens` tokens as both bodies do
    (`embed_groups`): what a search call's embedding is priced by, in the simulator and in a
    policy's plan alike."""
    if len(tokens) < 2:
        return 1, max(tokens, default=0)
    return embed_cost(tokens, embed_groups(tokens, call_tokens))


def embed_cost(tokens: Sequence[int], groups: Sequence[Sequence[int]]) -> tuple[int, int]:
    """(model calls, padded tokens) of embedding texts of `tokens` tokens in `groups`."""
    return len(groups), sum(len(g) * max(tokens[i] for i in g) for g in groups)


@dataclass(frozen=True, slots=True)
class SearchResult:
    """What a search call found. `topk` may be empty where nobody needs the ids."""

    topk: dict[NodeKey, tuple[int, ...]] = field(default_factory=dict)  # running top-k ids per query


# --- GPU index cache ----------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class CacheLoad:
    """Copy clusters host-to-device on `pcie`; `evict` are dropped from the cache first."""

    load: tuple[int, ...]  # cluster ids to copy into the GPU cache
    evict: tuple[int, ...] = ()  # cluster ids to drop before loading
    lane: Lane = field(default=Lane.PCIE, init=False)

    def timeline_args(self, list_sizes: Sequence[int]) -> dict[str, int]:
        """What a timeline slice of this copy shows (both bodies write the same): clusters
        copied and the vectors they hold."""
        return {"clusters": len(self.load), "vectors": sum(map(list_sizes.__getitem__, self.load))}


@dataclass(frozen=True, slots=True)
class CacheLoadResult:
    """Clusters now resident on the GPU after the copy."""

    loaded: tuple[int, ...] = ()


WorkItem = GenStep | SearchBatch | CacheLoad
Result = GenStepResult | SearchResult | CacheLoadResult


def may_open_work(result: Result | None) -> bool:
    """Whether completing an item with `result` (None: it failed) may give other lanes new work,
    so a body wakes them: a search or copy always may; an engine step only when sequences
    finished or were refused (their nodes end), or when nothing ran (the engine emptied).
    Both executors use this rule; waking lanes after every decode step would only make them
    contend with the engine thread (on the real body, for the GIL)."""
    if isinstance(result, GenStepResult):
        return bool(result.finished or result.rejected) or not result.running
    return True
