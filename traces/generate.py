"""Synthetic trace generation: arrivals, workflow mixes, token lengths and probe lists.

Arrivals are Poisson (exponential gaps, as the HedraRAG artifact drives its runs) or
gamma-distributed gaps with a coefficient of variation `cv` (cv > 1: bursty). Token
lengths and iteration counts follow `traces.datasets`; probe lists follow
`traces.probes`; each retrieval's truth (its results and their lists) is drawn by
`traces.truth_model`, which also picks the previous lists a follow-up keeps. Independent
random streams (arrivals, lengths, probes, truth) are spawned from one seed, so the same
seed and options give the same trace, byte for byte.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ragraph.graph import Op
from ragraph.synthesis import NUM_CHUNKS, RERANK_SCORE_TOKENS
from ragraph.workflows import FAN_OUT, Step, WorkflowRegistry, WorkflowSpec
from traces import metis
from traces.datasets import (
    ANSWER_ROLE,
    DATASETS,
    ITERATIONS,
    OUTPUT_CAP,
    OUTPUT_SIGMA,
    PASSAGE_TOKENS,
    ROLES,
    TOKENS_PER_WORD,
)
from traces.probes import ProbeModel
from traces.truth_model import DrawnTruth, TruthModel, TruthParams

MAX_REQUESTS = 5_000_000  # one trace file; beyond it, generate several
TRUTH_STREAM = 5  # child of SeedSequence(seed) feeding the truth model (0-3 here, 4 real_trace)
METIS_STREAM = 6  # child feeding METIS-like datasets, profiles and quality tables (traces.metis)


@dataclass(frozen=True)
class TraceConfig:
    workflows: tuple[str, ...]  # mixed in equal shares
    rate: float  # mean arrivals per second
    duration_s: float  # arrivals in [0, duration_s)
    seed: int = 0
    arrival: str = "poisson"  # poisson | gamma
    cv: float = 1.0  # coefficient of variation of gaps (gamma)
    nprobe: int = 256
    k: int = 1
    nlist: int = 4096
    zipf: float = 0.8  # popularity exponent of IVF lists
    overlap: float = 0.5  # fraction of a retrieval's lists its successor keeps
    iterations: int | None = None  # fixed iteration count (default: per workflow)
    truth: bool = True  # draw each retrieval's truth from the fitted model (traces.truth_model)
    # agent workflows (KVFlow's): each agent's prompt is a fixed part, declared as prefix blocks
    # shared by every request of its workflow set, then a dynamic part; its output is short
    agent_tokens: tuple[int, int, int] = (8192, 32, 32)  # fixed / dynamic / output tokens
    agent_sets: int = 1  # distinct agent workflows (sets of agent prompts), requests spread evenly
    agent_system: int = 0  # leading tokens of every fixed prompt shared by all agents of a set
    agent_count: int = 0  # distinct agents of a workflow, called in turn (0: one per step, none called twice)

    def __post_init__(self) -> None:
        for name in ("rate", "duration_s", "cv", "zipf", "overlap"):
            if not math.isfinite(getattr(self, name)):
                raise ValueError(f"{name} must be a finite number")
        if self.rate * self.duration_s > MAX_REQUESTS:
            raise ValueError(f"rate x duration asks for over {MAX_REQUESTS:,} requests; split the trace")
        if not self.workflows:
            raise ValueError("no workflow named")
        if self.rate <= 0 or self.duration_s <= 0:
            raise ValueError("rate and duration must be positive")
        if self.arrival not in ("poisson", "gamma") or self.cv <= 0:
            raise ValueError("arrival must be poisson or gamma, with cv > 0")
        if not 1 <= self.nprobe <= self.nlist or self.k < 1:
            raise ValueError(f"need 1 <= nprobe <= nlist ({self.nlist}) and k >= 1")
        fixed, dynamic, output = self.agent_tokens
        if min(fixed, output) < 1 or dynamic < 0 or self.agent_sets < 1 or not 0 <= self.agent_system <= fixed \
                or self.agent_count < 0:
            raise ValueError("agent tokens: fixed and output >= 1, dynamic >= 0, 0 <= system <= fixed;"
                             " agent sets >= 1")


def arrival_times(cfg: TraceConfig, rng: np.random.Generator) -> np.ndarray:
    """Arrival instants in [0, duration): cumulative sums of random gaps."""
    n = int(cfg.rate * cfg.duration_s * 1.5) + 16
    out: list[np.ndarray] = []
    t = 0.0
    while t < cfg.duration_s:
        if cfg.arrival == "poisson":
            gaps = rng.exponential(1.0 / cfg.rate, n)
        else:
            shape = 1.0 / cfg.cv**2
            gaps = rng.gamma(shape, 1.0 / (cfg.rate * shape), n)
        times = t + np.cumsum(gaps)
        out.append(times)
        t = float(times[-1])
    times = np.concatenate(out)
    return times[times < cfg.duration_s]


class _Lengths:
    def __init__(self, rng: np.random.Generator) -> None:
        self.rng = rng

    def question(self, dataset: str) -> int:
        words = DATASETS[dataset].question_words if dataset in DATASETS else 12.0
        return max(3, round(self.rng.lognormal(np.log(words), 0.3) * TOKENS_PER_WORD))

    def output(self, median: int) -> int:
        return int(np.clip(round(self.rng.lognormal(np.log(median), OUTPUT_SIGMA)), 1, OUTPUT_CAP))


def agent_block_tokens(fixed: int, system: int) -> int:
    """Tokens per declared block of agent prompts: the largest power of two up to 512 that
    divides the fixed (and system) part, at least 16."""
    bt = 512
    while bt > 16 and (fixed % bt or system % bt):
        bt //= 2
    return bt


def agent_ids(cfg: TraceConfig, workflow_set: int, agent: int) -> tuple[list[int], int]:
    """(hash ids, block tokens) of agent `agent`'s fixed prompt in workflow set `workflow_set`:
    the set's system blocks (shared by its agents), then the agent's own."""
    fixed, system = cfg.agent_tokens[0], cfg.agent_system
    bt = agent_block_tokens(fixed, system)
    head = (workflow_set + 1) << 40
    ids = [head | j for j in range(system // bt)]
    ids += [head | (agent + 1) << 20 | j for j in range(system // bt, fixed // bt)]
    return ids, bt


def _agent_request(spec: WorkflowSpec, rid: str, arrival: float, cfg: TraceConfig, iters: int,
                   workflow_set: int) -> dict:
    fixed, dynamic, output = cfg.agent_tokens
    stages = []
    for i, _step in enumerate(spec.unroll(iters)):
        ids, bt = agent_ids(cfg, workflow_set, i % cfg.agent_count if cfg.agent_count else i)
        stages.append({"op": "generate", "role": "agent", "prompt_tokens": fixed + dynamic,
                       "output_tokens": output, "hash_ids": ids, "block_tokens": bt})
    return {"id": rid, "arrival_s": round(arrival, 6), "workflow": spec.name, "iterations": iters,
            "stages": stages}


def _fan_out(step: Step, question: int, k: int, lengths: _Lengths) -> list[dict]:
    """The stages of a map_reduce / map_rerank step over k chunks: a map per chunk (prompt:
    template, question, one passage; a map_reduce summary is `intermediate_length` words), then
    map_reduce's reduce over the summaries."""
    template, median = ROLES["answer"]
    prefix = f"{step.synthesis}/{step.role}"
    if step.synthesis == "map_rerank":
        return [{"op": "generate", "role": "rerank", "prompt_tokens": template + question + PASSAGE_TOKENS,
                 "output_tokens": lengths.output(median) + RERANK_SCORE_TOKENS, "prefix_tokens": template,
                 "prefix": prefix} for _ in range(k)]
    summary = max(1, math.ceil(step.intermediate_length * TOKENS_PER_WORD))
    maps = [{"op": "generate", "role": "map", "prompt_tokens": template + question + PASSAGE_TOKENS,
             "output_tokens": summary, "prefix_tokens": template, "prefix": prefix} for _ in range(k)]
    return [*maps, {"op": "generate", "role": "reduce", "prompt_tokens": template + question + k * summary,
                    "output_tokens": lengths.output(median), "prefix_tokens": template, "prefix": f"{prefix}/reduce"}]


def _request(spec: WorkflowSpec, rid: str, arrival: float, cfg: TraceConfig, iters: int,
             lengths: _Lengths, probes: ProbeModel, truths: TruthModel | None,
             metis_rng: np.random.Generator | None = None) -> dict:
    dataset = spec.dataset
    if spec.configured_at_run_time:  # a METIS-like question: its dataset, then its length
        assert metis_rng is not None
        ds = metis.pick_dataset(metis_rng)
        dataset, question = ds.name, metis.question_tokens(ds, metis_rng)
    else:
        question = lengths.question(spec.dataset)
    k = NUM_CHUNKS[1] if spec.configured_at_run_time else cfg.k  # the chunks a run-time synthesis may use
    synthesis = None
    stages: list[dict] = []
    carried = 0  # generated tokens the next prompt carries
    passages = 0  # retrieved-passage tokens the next prompt carries
    previous: list[int] | None = None
    drawn: DrawnTruth | None = None
    iterative = bool(spec.loop)
    for step in spec.unroll(iters):
        if step.synthesis == "auto":
            assert metis_rng is not None
            synthesis = metis.draw_synthesis(metis_rng, question, k, dataset)
            break
        if step.synthesis in FAN_OUT:
            stages += _fan_out(step, question, k, lengths)
            carried, passages = stages[-1]["output_tokens"], 0
            continue
        if step.op is Op.RETRIEVE:
            if truths is None or spec.configured_at_run_time:  # (the truth model draws 20 ranks, k is 35)
                previous = probes.probe(cfg.nprobe, previous)
                stages.append({"op": "retrieve", "role": step.role, "nprobe": cfg.nprobe, "k": k,
                               "clusters": previous})
            else:
                plan, keep = truths.plan(drawn)
                previous = probes.probe(cfg.nprobe, previous, keep)
                drawn = truths.draw(previous, drawn, plan)
                after_gen = bool(stages) and stages[-1]["op"] == "generate"
                stages.append({"op": "retrieve", "role": step.role, "nprobe": cfg.nprobe, "k": cfg.k,
                               "clusters": previous,
                               "truth": drawn.record(cfg.k, truths.prefix_same(cfg.k) if after_gen else [])})
            passages = cfg.k * PASSAGE_TOKENS
            if not iterative:
                carried = 0
            continue
        role = ANSWER_ROLE.get(spec.name, step.role) if step.role == "answer" else step.role
        template, median = ROLES.get(role, ROLES["answer"])
        out = lengths.output(median)
        stages.append({"op": "generate", "role": step.role, "prompt_tokens": template + question + passages + carried,
                       "output_tokens": out, "prefix_tokens": template, "prefix": f"{spec.name}/{step.role}"})
        carried = carried + out if iterative else out
        passages = 0
    out = {"id": rid, "arrival_s": round(arrival, 6), "workflow": spec.name, "iterations": iters,
           "dataset": dataset, "stages": stages}
    if synthesis is not None:
        out["synthesis"] = synthesis
    return out


def generate_trace(cfg: TraceConfig, registry: WorkflowRegistry | None = None) -> list[dict]:
    """The trace as a list of JSON-ready request dicts (see traces.schema.TraceRequest)."""
    registry = registry or WorkflowRegistry()
    specs = [registry.get(w) for w in cfg.workflows]
    streams = np.random.SeedSequence(cfg.seed).spawn(METIS_STREAM + 1)  # child 4: backends.real_trace
    arrivals_rng, mix_rng, length_rng, probe_rng = (np.random.default_rng(s) for s in streams[:4])
    probes = ProbeModel(cfg.nlist, cfg.zipf, cfg.overlap, probe_rng)
    truths = TruthModel(TruthParams.load(), np.random.default_rng(streams[TRUTH_STREAM])) if cfg.truth else None
    lengths = _Lengths(length_rng)
    metis_rng = np.random.default_rng(streams[METIS_STREAM])
    out = []
    for i, t in enumerate(arrival_times(cfg, arrivals_rng)):
        spec = specs[int(mix_rng.integers(len(specs)))]
        if cfg.iterations is not None:
            iters = cfg.iterations if spec.loop else 0
        elif spec.name in ITERATIONS:
            iters = int(mix_rng.choice(len(ITERATIONS[spec.name]), p=ITERATIONS[spec.name]))
        else:
            iters = spec.default_iterations
        if all(st.role == "agent" for st in spec.unroll(iters)):
            out.append(_agent_request(spec, f"r{i:06d}", float(t), cfg, iters, i % cfg.agent_sets))
        else:
            out.append(_request(spec, f"r{i:06d}", float(t), cfg, iters, lengths, probes, truths, metis_rng))
    return out


def write_jsonl(rows: list[dict], path: str | Path) -> None:
    """Write rows as JSON Lines atomically (a reader never sees half a file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes it private; a trace is not
    try:
        with os.fdopen(fd, "w") as f:
            for row in rows:
                f.write(json.dumps(row, separators=(",", ":")))
                f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
