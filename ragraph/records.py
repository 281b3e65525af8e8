"""Per-request records: what metrics and output files are made of."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from ragraph.runtime import RequestRun

TimelineEvent = tuple[str, str, float, float, dict[str, int]]
"""One slice of a run's timeline: (lane, item name, start s, duration s, args)."""


@dataclass(frozen=True, slots=True)
class RequestRecord:
    """One finished request, completed or failed."""

    id: str
    workflow: str
    policy: str
    status: str  # "completed" or "failed"
    reason: str  # why it failed; "" when completed
    arrival_s: float  # arrival time (trace clock)
    finish_s: float  # completion or failure time
    latency_s: float  # finish_s - arrival_s
    generate_nodes: int
    retrieve_nodes: int
    prompt_tokens: int  # summed over its Generate nodes
    output_tokens: int
    generation_s: float  # summed ready->done time of its Generate nodes
    retrieval_s: float  # summed ready->done time of its Retrieve nodes
    retrieval_wait_s: float  # summed ready->first-dispatch time of its Retrieve nodes
    clusters_searched: int  # IVF lists scanned over all its retrievals
    substages: int  # retrieval sub-stages over all its retrievals
    spec_started: int  # Generate nodes started speculatively
    spec_aborted: int  # speculative runs thrown away
    gpu_cluster_hits: int  # clusters served from the GPU index cache
    # answer quality (real body with a model that answers, `backends.answers`): the final generation's
    # text, and its token F1 / exact match against the trace's gold answers (`ragraph.quality`);
    # None where there is nothing to score (no gold answers, a failed request, the simulator)
    answer: str = ""
    f1: float | None = None
    em: float | None = None
    # its synthesis configuration where the policy chose one at run time ("" / 0 otherwise)
    synthesis: str = ""  # stuff, map_reduce or map_rerank
    num_chunks: int = 0
    intermediate_length: int = 0
    # F1 of that configuration for this question, from the trace's quality table (NaN: no table)
    config_f1: float = float("nan")

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


StopReason = Literal["", "interrupted", "stalled", "internal error"]
"""Why a run ended: "" ran to the end; "interrupted" (Ctrl-C or `stop()`), "stalled" (requests
left but no lane had work for them) or "internal error" (a bug in the core or an executor)."""


@dataclass(frozen=True, slots=True)
class RunResult:
    """Everything one run produced, simulated or real; both executors return it.

    Frozen in its fields; the list and dicts it holds are the executor's and are not
    copied, so a caller treats them as read-only."""

    records: list[RequestRecord]  # one per request, in the order they ended
    sim_s: float  # trace-clock seconds from time 0 to the last request's end
    wall_s: float  # wall-clock seconds the run took
    lane_busy_s: dict[str, float]  # busy seconds per lane (every lane, 0.0 where unused)
    # one slice per lane item (empty if not kept); the simulator's reads as a list (sim.timeline.Timeline)
    timeline: Sequence[TimelineEvent] = field(default_factory=list)
    kv_peak_blocks: int = 0  # most KV-cache blocks in use after any engine step
    kv_total_blocks: int = 0  # KV-cache capacity in blocks (0 if the engine never stepped)
    stopped: StopReason = ""  # why the run ended early ("" when it ran to the end)
    techniques: dict[str, object] = field(default_factory=dict)  # what the policy's techniques did (Policy.report)
    kv_cache: dict[str, object] = field(default_factory=dict)  # what the KV cache did (the engine's counts)


def record_of(run: RequestRun, policy: str) -> RequestRecord:
    """Summarise a request that has just completed or failed."""
    req = run.request
    assert run.finish_s is not None
    gen_s = ret_s = wait_s = 0.0
    gens = rets = prompt = out = clusters = substages = spec = aborted = hits = 0
    for n in run.nodes:
        span = (n.end_s - n.ready_s) if (n.end_s is not None and n.ready_s is not None) else 0.0
        if n.is_retrieve:
            rets += 1
            ret_s += span
            if n.start_s is not None and n.ready_s is not None:
                wait_s += n.start_s - n.ready_s
            clusters += n.next_pos
            substages += n.substages
            hits += n.gpu_clusters
        else:
            gens += 1
            gen_s += span
            prompt += n.spec.prompt_tokens  # type: ignore[union-attr]
            out += n.spec.output_tokens  # type: ignore[union-attr]
            spec += int(n.speculated)
            aborted += n.aborted
    return RequestRecord(
        id=req.id, workflow=req.workflow, policy=policy, status=run.state.value, reason=run.reason,
        arrival_s=req.arrival_s, finish_s=run.finish_s, latency_s=run.finish_s - req.arrival_s,
        generate_nodes=gens, retrieve_nodes=rets, prompt_tokens=prompt, output_tokens=out,
        generation_s=gen_s, retrieval_s=ret_s, retrieval_wait_s=wait_s, clusters_searched=clusters,
        substages=substages, spec_started=spec, spec_aborted=aborted, gpu_cluster_hits=hits,
        **_configuration(run),
    )


def _configuration(run: RequestRun) -> dict[str, Any]:
    """The record's synthesis fields: the chosen configuration and its F1 in the quality table."""
    config, syn = run.config, run.request.synthesis
    if config is None or syn is None:
        return {}
    f1 = syn.f1(config)
    return {"synthesis": config.method.value, "num_chunks": config.num_chunks,
            "intermediate_length": config.intermediate_length, "config_f1": float("nan") if f1 is None else f1}
