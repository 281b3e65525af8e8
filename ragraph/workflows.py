"""Workflows: declarative shapes of RAG requests, and their unrolling into graphs.

A workflow is a `head` of steps, a `loop` body repeated `iterations + extra_iterations`
times, and a `tail`; every step depends on the one before it (all five workflows of the
HedraRAG evaluation are such chains). A one-step loop may run `branches` copies of its step
side by side in an iteration (widths cycling through `branches`): each copy depends on every
node of the level before it, and the next level on all of them (an AND join), as KVFlow's
branching agent workflows do. A generate step may instead *fan out* over the chunks
of the retrieval before it (RAGServe's synthesis methods, `ragraph.synthesis`):
`synthesis = "map_reduce"` is one map node per chunk (the retrieval's `k`) and a reduce node
that joins them, `"map_rerank"` one node per chunk (the next step waits for all of them),
`"stuff"` one node as a plain step; `"auto"` (the last step only) leaves the method and the
number of chunks to the policy at run time. The trace pins `iterations` per request, so a
dynamic workflow is unrolled iteration by iteration into a fixed graph that the
simulated and the real body both execute.

Users add workflows without touching the core: a TOML or JSON table with the same fields
(see docs/workflows.md, e.g. FLARE's "draft, retrieve if unsure, rewrite" loop).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from ragraph.graph import NodeSpec, Op, Request, Retrieve, chain, levels
from ragraph.synthesis import INTERMEDIATE_LENGTH, Synthesis

FAN_OUT = ("map_reduce", "map_rerank")  # synthesis methods with one node per chunk


class WorkflowError(ValueError):
    """Unknown workflow, or stages that do not fit a workflow's shape."""


class Step(BaseModel):
    """One node template: what it does and its role (its prompt template, for generation)."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    op: Op
    role: str = Field(default="", description="e.g. answer, hypothesis, compress, reason, retrieve")
    synthesis: Literal["stuff", "map_reduce", "map_rerank", "auto"] | None = Field(
        default=None, description="a generate step over the previous retrieval's chunks (ragraph.synthesis)")
    intermediate_length: int = Field(default=0, ge=0, le=INTERMEDIATE_LENGTH[1],
                                     description="words per map summary (map_reduce)")

    @model_validator(mode="after")
    def _default_role(self) -> Step:
        if not self.role:
            object.__setattr__(self, "role", "retrieve" if self.op is Op.RETRIEVE else "answer")
        if self.synthesis is not None and self.op is not Op.GENERATE:
            raise ValueError("only a generate step synthesises chunks")
        if self.synthesis == "map_reduce" and not self.intermediate_length:
            lo, hi = INTERMEDIATE_LENGTH
            raise ValueError(f"map_reduce needs intermediate_length ({lo}-{hi})")
        return self


class WorkflowSpec(BaseModel):
    """A workflow's shape: head, then loop x (iterations + extra_iterations), then tail."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    name: str
    description: str = ""
    dataset: str = ""  # the dataset the HedraRAG paper pairs it with (token-length source)
    head: tuple[Step, ...] = ()
    loop: tuple[Step, ...] = ()
    tail: tuple[Step, ...] = ()
    extra_iterations: int = Field(default=0, ge=0)
    default_iterations: int = Field(default=0, ge=0)
    max_iterations: int = Field(default=0, ge=0)  # largest iteration count a trace may ask for
    branches: tuple[int, ...] = ()  # a one-step loop's width per iteration, cycling (() = 1 each)

    @model_validator(mode="after")
    def _has_steps(self) -> WorkflowSpec:
        if not self.head and not self.tail and not (self.loop and self.default_iterations + self.extra_iterations):
            raise ValueError("a workflow needs steps at its default iterations (head, tail, or a loop that runs)")
        if self.branches and (len(self.loop) != 1 or min(self.branches) < 1):
            raise ValueError("branches needs a loop of one step and widths >= 1")
        steps = [*self.head, *self.loop, *self.tail]
        for i, step in enumerate(steps):
            if step.synthesis in (*FAN_OUT, "auto") and not any(s.op is Op.RETRIEVE for s in steps[:i]):
                raise ValueError(f"step {i} ({step.synthesis}) fans out over the chunks of no retrieval:"
                                 " a retrieve step must come before it")
            if step.synthesis == "auto" and (i != len(steps) - 1 or step in self.loop):
                raise ValueError('synthesis = "auto" must be the workflow\'s last step, outside the loop')
        if self.branches and self.fans_out:
            raise ValueError("branches and fan-out synthesis steps cannot be combined in one workflow")
        return self

    def widths(self, iterations: int) -> list[int]:
        """Nodes per level of the unrolled graph (1 per step, a loop iteration `branches` wide)."""
        reps = iterations + self.extra_iterations if self.loop else 0
        loop = [self.branches[i % len(self.branches)] if self.branches else 1
                for i in range(reps) for _ in self.loop]
        return [1] * len(self.head) + loop + [1] * len(self.tail)

    @property
    def fans_out(self) -> bool:
        """Whether some step fans out or is configured at run time (else the workflow is a chain)."""
        return any(s.synthesis in (*FAN_OUT, "auto") for s in (*self.head, *self.loop, *self.tail))

    @property
    def configured_at_run_time(self) -> bool:
        """Whether its last step's synthesis is chosen by the policy (`synthesis = "auto"`)."""
        steps = (*self.head, *self.loop, *self.tail)
        return bool(steps) and steps[-1].synthesis == "auto"

    def unroll(self, iterations: int) -> list[Step]:
        """The chain of steps for a request with `iterations` loop iterations."""
        too_many = bool(self.max_iterations) and iterations > self.max_iterations
        empty = not self.head and not self.tail and iterations + self.extra_iterations == 0
        if iterations < 0 or (iterations and not self.loop) or too_many or empty:
            raise WorkflowError(f"workflow {self.name!r}: {iterations} iterations not allowed"
                                f" (max {self.max_iterations if self.loop else 0})")
        reps = iterations + self.extra_iterations if self.loop else 0
        width = self.branches or (1,)
        return [*self.head, *(s for i in range(reps) for s in self.loop for _ in range(width[i % len(width)])),
                *self.tail]


def _steps(*ops: str) -> tuple[Step, ...]:
    out = []
    for text in ops:
        op, _, role = text.partition(":")
        retrieve = op == "R"
        default_role = "retrieve" if retrieve else "answer"
        out.append(Step(op=Op.RETRIEVE if retrieve else Op.GENERATE, role=role or default_role))
    return tuple(out)


RAG_WORKFLOWS: dict[str, WorkflowSpec] = {
    w.name: w
    for w in (
        WorkflowSpec(name="one-shot", description="R -> G (sequential RAG)", dataset="nq",
                     head=_steps("R", "G:answer")),
        WorkflowSpec(name="hyde", description="G(hypothetical doc) -> R(on it) -> G(answer)", dataset="hotpotqa",
                     head=_steps("G:hypothesis", "R", "G:answer")),
        WorkflowSpec(name="recomp", description="R -> G(compress) -> G(answer)", dataset="hotpotqa",
                     head=_steps("R", "G:compress", "G:answer")),
        WorkflowSpec(name="multistep", description="G(reason) -> [R -> G(answer) -> G(reason)] x n",
                     dataset="2wikimultihopqa", head=_steps("G:reason"), loop=_steps("R", "G:answer", "G:reason"),
                     default_iterations=2, max_iterations=8),
        WorkflowSpec(name="irg", description="[R -> G] x (n+1), each R on the last G's text",
                     dataset="2wikimultihopqa", loop=_steps("R", "G:answer"), extra_iterations=1,
                     default_iterations=2, max_iterations=8),
    )
}
"""The HedraRAG evaluation's five RAG workflows."""

AGENT_WORKFLOWS: dict[str, WorkflowSpec] = {
    w.name: w
    for w in (
        WorkflowSpec(name="agent-chain", description="G(agent 1) -> G(agent 2) -> ... x n (KVFlow's sequential"
                     " workflow: a fixed prompt per agent, a dynamic part, a short output)",
                     loop=_steps("G:agent"), default_iterations=10, max_iterations=64),
        WorkflowSpec(name="agent-branch", description="agents in levels 1, 2, 1, 2, ... wide, each level after"
                     " all of the one before (KVFlow's workflow with branches)",
                     loop=_steps("G:agent"), default_iterations=10, max_iterations=64, branches=(1, 2)),
    )
}
"""KVFlow's agent workflows (`hedra trace gen` gives each agent a fixed prompt shared as prefix blocks)."""

OTHER_WORKFLOWS: dict[str, WorkflowSpec] = {
    "gen-only": WorkflowSpec(name="gen-only", description="G only: one generation (e.g. an imported Mooncake"
                             " request)", head=_steps("G:answer")),
}

BUILTIN_WORKFLOWS: dict[str, WorkflowSpec] = {**RAG_WORKFLOWS, **AGENT_WORKFLOWS, **OTHER_WORKFLOWS}

# RAGServe's workflow (METIS, arXiv 2412.10543): profile the query, retrieve up to 35 chunks, then
# the synthesis the policy chooses for this request (registered beside the five paper workflows)
METIS_WORKFLOW = WorkflowSpec(
    name="metis", description="G(profile) -> R -> synthesis chosen per request (RAGServe/METIS)",
    dataset="metis", head=(*_steps("G:profile", "R"), Step(op=Op.GENERATE, synthesis="auto")))


class WorkflowRegistry:
    """Built-in workflows plus any the user registers."""

    def __init__(self, extra: list[WorkflowSpec] | None = None) -> None:
        self._specs = {**BUILTIN_WORKFLOWS, METIS_WORKFLOW.name: METIS_WORKFLOW}
        for spec in extra or []:
            self.register(spec)

    def register(self, spec: WorkflowSpec) -> None:
        if spec.name in self._specs:
            raise WorkflowError(f"workflow {spec.name!r} is already defined")
        self._specs[spec.name] = spec

    def get(self, name: str) -> WorkflowSpec:
        try:
            return self._specs[name]
        except KeyError:
            raise WorkflowError(f"unknown workflow {name!r} (known: {', '.join(self._specs)})") from None

    def names(self) -> list[str]:
        return list(self._specs)


def build_request(spec: WorkflowSpec, request_id: str, arrival_s: float, iterations: int,
                  stages: list[NodeSpec], question: str = "", synthesis: Synthesis | None = None) -> Request:
    """The request graph for `stages`, checked against the workflow's unrolled shape.

    A chain where no step fans out; otherwise a DAG (`fan_out_deps`). `synthesis` is required
    by, and only allowed with, a workflow whose last step is chosen at run time."""
    if spec.configured_at_run_time != (synthesis is not None):
        raise WorkflowError(f"workflow {spec.name!r} " + ("chooses its synthesis at run time: the request needs"
                            " its synthesis shape" if synthesis is None else "has no synthesis chosen at run time"))
    if spec.fans_out:
        deps = fan_out_deps(spec, iterations, stages)
        return Request(request_id, arrival_s, spec.name, tuple(stages), deps, question, synthesis=synthesis)
    steps = spec.unroll(iterations)
    if len(steps) != len(stages):
        raise WorkflowError(f"workflow {spec.name!r} with {iterations} iterations has {len(steps)} stages,"
                            f" got {len(stages)}")
    for i, (step, stage) in enumerate(zip(steps, stages, strict=True)):
        if stage.op is not step.op:
            raise WorkflowError(f"stage {i} must be {step.op.value} ({step.role}), got {stage.op.value}")
    if spec.branches:
        return levels(request_id, arrival_s, spec.name, stages, spec.widths(iterations), question)
    return chain(request_id, arrival_s, spec.name, stages, question)


def fan_out_deps(spec: WorkflowSpec, iterations: int, stages: list[NodeSpec]) -> tuple[tuple[int, ...], ...]:
    """Each stage's dependencies for a workflow with fan-out steps: a map_reduce step is one
    map stage per chunk of the last retrieval (its `k`) then a reduce stage that waits for all
    of them; a map_rerank step is the map stages alone, and the next step waits for all of them;
    an `auto` step has no stages (the core appends them). Raises WorkflowError."""
    steps = spec.unroll(iterations)
    deps: list[tuple[int, ...]] = []
    frontier: tuple[int, ...] = ()
    chunks = 0
    for step in steps:
        if step.synthesis == "auto":
            break
        fan = step.synthesis in FAN_OUT
        if fan and chunks == 0:
            raise WorkflowError(f"workflow {spec.name!r}: a fan-out over zero chunks")
        count = (chunks if fan else 1) + (step.synthesis == "map_reduce")
        for j in range(count):
            i = len(deps)
            if i >= len(stages):
                raise WorkflowError(f"workflow {spec.name!r} needs more than {len(stages)} stages"
                                    f" (stage {i} is {step.op.value}, {step.role})")
            if stages[i].op is not step.op:
                raise WorkflowError(f"stage {i} must be {step.op.value} ({step.role}), got {stages[i].op.value}")
            is_reduce = step.synthesis == "map_reduce" and j == count - 1
            deps.append(tuple(range(i - chunks, i)) if is_reduce else frontier)
        last = len(deps) - 1
        frontier = tuple(range(last - count + 1, last + 1)) if step.synthesis == "map_rerank" else (last,)
        if isinstance(stages[last], Retrieve):
            chunks = stages[last].k
    if len(deps) != len(stages):
        raise WorkflowError(f"workflow {spec.name!r} with {iterations} iterations has {len(deps)} stages,"
                            f" got {len(stages)}")
    return tuple(deps)
