"""Workflows: the unrolled shape of each built-in, request graphs, user-defined workflows."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from ragraph.graph import Generate, Op, Request, Retrieve
from ragraph.workflows import (
    AGENT_WORKFLOWS,
    BUILTIN_WORKFLOWS,
    RAG_WORKFLOWS,
    WorkflowError,
    WorkflowRegistry,
    WorkflowSpec,
    build_request,
)
from traces.generate import TraceConfig, generate_trace, write_jsonl
from traces.schema import TraceError, load_trace

G, R = Op.GENERATE, Op.RETRIEVE

EXPECTED = {
    ("one-shot", 0): [(R, "retrieve"), (G, "answer")],
    ("hyde", 0): [(G, "hypothesis"), (R, "retrieve"), (G, "answer")],
    ("recomp", 0): [(R, "retrieve"), (G, "compress"), (G, "answer")],
    ("multistep", 0): [(G, "reason")],
    ("multistep", 1): [(G, "reason"), (R, "retrieve"), (G, "answer"), (G, "reason")],
    ("multistep", 2): [(G, "reason"), (R, "retrieve"), (G, "answer"), (G, "reason"),
                       (R, "retrieve"), (G, "answer"), (G, "reason")],
    ("irg", 0): [(R, "retrieve"), (G, "answer")],
    ("irg", 1): [(R, "retrieve"), (G, "answer")] * 2,
    ("irg", 2): [(R, "retrieve"), (G, "answer")] * 3,
}

FLARE = {
    "name": "flare",
    "description": "[G(draft) -> R -> G(rewrite)] x n",
    "dataset": "2wikimultihopqa",
    "loop": [{"op": "generate", "role": "draft"}, {"op": "retrieve"}, {"op": "generate", "role": "rewrite"}],
    "default_iterations": 3,
    "max_iterations": 8,
}
SELF_RAG = {
    "name": "self-rag",
    "description": "G(decide) -> R -> G(critique) -> G(answer)",
    "dataset": "hotpotqa",
    "head": [{"op": "generate", "role": "decide"}, {"op": "retrieve"},
             {"op": "generate", "role": "critique"}, {"op": "generate", "role": "answer"}],
}


def stages_for(spec: WorkflowSpec, iterations: int) -> list:
    """Node specs that fit the workflow's unrolled shape."""
    out = []
    for i, step in enumerate(spec.unroll(iterations)):
        if step.op is Op.RETRIEVE:
            out.append(Retrieve(4, 1, (i, i + 10, i + 20, i + 30), step.role))
        else:
            out.append(Generate(100 + i, 5, 10, f"{spec.name}/{step.role}", step.role))
    return out


def test_builtins_are_the_five_paper_workflows_then_kvflows_agents():
    assert set(RAG_WORKFLOWS) == {"one-shot", "hyde", "recomp", "multistep", "irg"}
    assert set(AGENT_WORKFLOWS) == {"agent-chain", "agent-branch"}
    assert WorkflowRegistry().names() == [*BUILTIN_WORKFLOWS, "metis"]  # RAGServe's, configured at run time
    assert WorkflowRegistry().names()[:5] == list(RAG_WORKFLOWS)


def test_agent_branch_levels_join_all_of_the_level_before():
    spec = AGENT_WORKFLOWS["agent-branch"]
    assert spec.widths(4) == [1, 2, 1, 2]
    req = build_request(spec, "q", 0.0, 4, [Generate(100, 5, role="agent") for _ in range(6)])
    assert req.deps == ((), (0,), (0,), (1, 2), (3,), (3,))
    chain_ = build_request(AGENT_WORKFLOWS["agent-chain"], "q", 0.0, 3, [Generate(100, 5) for _ in range(3)])
    assert chain_.deps == ((), (0,), (1,))


@pytest.mark.parametrize(("name", "iterations"), list(EXPECTED))
def test_unrolled_sequence(name, iterations):
    steps = WorkflowRegistry().get(name).unroll(iterations)
    assert [(s.op, s.role) for s in steps] == EXPECTED[(name, iterations)]


def test_irg_two_iterations_is_three_rounds():
    ops = "".join("R" if s.op is R else "G" for s in BUILTIN_WORKFLOWS["irg"].unroll(2))
    assert ops == "RGRGRG"


@pytest.mark.parametrize(("name", "iterations"), list(EXPECTED))
def test_build_request_makes_a_chain(name, iterations):
    spec = WorkflowRegistry().get(name)
    stages = stages_for(spec, iterations)
    req = build_request(spec, "q1", 1.5, iterations, stages, question="why?")
    assert isinstance(req, Request)
    assert (req.id, req.arrival_s, req.workflow, req.question) == ("q1", 1.5, name, "why?")
    assert req.nodes == tuple(stages)
    assert req.deps == tuple(() if i == 0 else (i - 1,) for i in range(len(stages)))
    assert [n.op for n in req.nodes] == [op for op, _ in EXPECTED[(name, iterations)]]


@pytest.mark.parametrize("name", list(BUILTIN_WORKFLOWS))
@pytest.mark.parametrize("delta", [-1, 1])
def test_wrong_number_of_stages_raises(name, delta):
    spec = BUILTIN_WORKFLOWS[name]
    iterations = spec.default_iterations
    stages = stages_for(spec, iterations)
    stages = stages[:-1] if delta < 0 else [*stages, Generate(10, 1)]
    with pytest.raises(WorkflowError, match="stages"):
        build_request(spec, "q", 0.0, iterations, stages)


@pytest.mark.parametrize("name", list(BUILTIN_WORKFLOWS))
def test_wrong_op_raises(name):
    spec = BUILTIN_WORKFLOWS[name]
    iterations = spec.default_iterations
    stages = stages_for(spec, iterations)
    for i, st in enumerate(stages):
        swapped = list(stages)
        swapped[i] = Generate(10, 1) if isinstance(st, Retrieve) else Retrieve(1, 1, (0,))
        with pytest.raises(WorkflowError, match=f"stage {i} must be"):
            build_request(spec, "q", 0.0, iterations, swapped)


def test_stages_for_other_iteration_count_raise():
    spec = BUILTIN_WORKFLOWS["irg"]
    with pytest.raises(WorkflowError):
        build_request(spec, "q", 0.0, 1, stages_for(spec, 2))


@pytest.mark.parametrize(("name", "iterations"), [("irg", 9), ("multistep", 9), ("irg", 100), ("irg", -1),
                                                  ("one-shot", 1), ("hyde", 1), ("recomp", 2)])
def test_too_many_iterations_raise(name, iterations):
    spec = BUILTIN_WORKFLOWS[name]
    with pytest.raises(WorkflowError, match="iterations not allowed"):
        spec.unroll(iterations)
    with pytest.raises(WorkflowError):
        build_request(spec, "q", 0.0, iterations, [Generate(10, 1)])


def test_max_iterations_is_allowed():
    assert len(BUILTIN_WORKFLOWS["irg"].unroll(8)) == 18
    assert len(BUILTIN_WORKFLOWS["multistep"].unroll(8)) == 25


def test_registry_unknown_and_empty_workflows():
    reg = WorkflowRegistry()
    with pytest.raises(WorkflowError, match="unknown workflow 'nosuch'"):
        reg.get("nosuch")
    for empty in ({"name": "empty"}, {"name": "idle-loop", "loop": [{"op": "retrieve"}]}):
        with pytest.raises(ValidationError, match="needs steps"):
            WorkflowSpec.model_validate(empty)
    assert "empty" not in reg.names()


def test_spec_refuses_unknown_fields_and_ops():
    with pytest.raises(ValueError):
        WorkflowSpec.model_validate({**FLARE, "bogus": 1})
    with pytest.raises(ValueError):
        WorkflowSpec.model_validate({"name": "x", "head": [{"op": "rerank"}]})


def test_user_workflows_unroll():
    flare = WorkflowSpec.model_validate(FLARE)
    self_rag = WorkflowSpec.model_validate(SELF_RAG)
    assert [(s.op, s.role) for s in flare.unroll(2)] == [(G, "draft"), (R, "retrieve"), (G, "rewrite")] * 2
    expected = [(G, "decide"), (R, "retrieve"), (G, "critique"), (G, "answer")]
    assert [(s.op, s.role) for s in self_rag.unroll(0)] == expected
    with pytest.raises(WorkflowError):
        flare.unroll(9)
    with pytest.raises(WorkflowError):
        self_rag.unroll(1)


@pytest.mark.parametrize("workflows", [("flare",), ("self-rag",), ("flare", "self-rag", "irg")])
def test_user_workflows_generate_and_load(tmp_path, workflows):
    registry = WorkflowRegistry([WorkflowSpec.model_validate(FLARE)])
    registry.register(WorkflowSpec.model_validate(SELF_RAG))
    assert {"flare", "self-rag"} <= set(registry.names())
    cfg = TraceConfig(workflows=workflows, rate=4.0, duration_s=5.0, seed=3, nprobe=8, nlist=256)
    rows = generate_trace(cfg, registry)
    assert rows
    assert {r["workflow"] for r in rows} <= set(workflows)
    for row in rows:
        spec = registry.get(row["workflow"])
        if row["workflow"] == "flare":
            assert row["iterations"] == 3  # default_iterations
        steps = spec.unroll(row["iterations"])
        assert [(s["op"], s["role"]) for s in row["stages"]] == [(st.op.value, st.role) for st in steps]
    path = tmp_path / "user.jsonl"
    write_jsonl(rows, path)
    requests = load_trace(path, registry, nlist=256)
    assert [r.id for r in requests] == [row["id"] for row in rows]
    for req, row in zip(requests, rows, strict=True):
        assert req.workflow == row["workflow"]
        assert len(req.nodes) == len(row["stages"])
        assert req.deps == tuple(() if i == 0 else (i - 1,) for i in range(len(req.nodes)))
        assert [getattr(n, "role", None) for n in req.nodes] == [s["role"] for s in row["stages"]]
    # without the user's registry the trace is refused, naming the workflow field
    with pytest.raises(TraceError, match="field workflow"):
        load_trace(path)


def test_user_workflow_with_fixed_iterations(tmp_path):
    registry = WorkflowRegistry([WorkflowSpec.model_validate(FLARE), WorkflowSpec.model_validate(SELF_RAG)])
    cfg = TraceConfig(workflows=("flare", "self-rag"), rate=4.0, duration_s=5.0, seed=1, nprobe=4, nlist=64,
                      iterations=1)
    rows = generate_trace(cfg, registry)
    for row in rows:
        expected = 3 if row["workflow"] == "flare" else 4
        assert row["iterations"] == (1 if row["workflow"] == "flare" else 0)
        assert len(row["stages"]) == expected
    write_jsonl(rows, tmp_path / "t.jsonl")
    assert len(load_trace(tmp_path / "t.jsonl", registry)) == len(rows)
