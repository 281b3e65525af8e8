"""RAGServe / METIS: fan-out and join scheduling, run-time configuration, best fit and its
fallbacks, quality from trace to summary, and bad input."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from hwmodel.latency import LatencyModel
from hwmodel.profile import load_profile
from ragraph.core import Scheduler, SchedulerError
from ragraph.graph import Generate, Retrieve
from ragraph.policies import PolicyError, parse_policy
from ragraph.policies.base import Policy
from ragraph.policies.ragserve import MEMORY_MARGIN, RagServeOptions, RagServePolicy, prune
from ragraph.state import NodeState
from ragraph.synthesis import Method, QueryProfile, Synthesis, SynthesisConfig, demand_tokens, expand
from ragraph.work import GenStep, GenStepResult, Lane, SearchBatch, SearchResult
from ragraph.workflows import WorkflowError, WorkflowRegistry, WorkflowSpec, build_request
from runs.run import simulate as _simulate
from traces.generate import TraceConfig, generate_trace, write_jsonl
from traces.schema import TraceError, load_trace

ROOT = Path(__file__).resolve().parents[1]


def simulate(requests, spec: str, profile, **kw):
    return _simulate(requests, parse_policy(spec), profile, **kw)
PROFILE = load_profile()
MAP_REDUCE = WorkflowSpec.model_validate({
    "name": "mr", "dataset": "hotpotqa",
    "head": [{"op": "retrieve"}, {"op": "generate", "synthesis": "map_reduce", "intermediate_length": 20},
             {"op": "generate", "role": "polish"}]})
MAP_RERANK = WorkflowSpec.model_validate({
    "name": "rr", "dataset": "nq", "head": [{"op": "retrieve"}, {"op": "generate", "synthesis": "map_rerank"}]})


class FinishAll(Policy):
    """Admits everything, searches every waiting query whole; may speculate maps and drop them."""

    name = "finish-all"

    def __init__(self, speculate_maps: bool = False) -> None:
        self.speculate_maps = speculate_maps

    def plan_search(self, s, lane, now):
        if lane is not Lane.CPU_RETRIEVAL or not s.retr_waiting:
            return None
        size = 2 if self.speculate_maps else None  # two sub-stages: the maps may start after the first
        return SearchBatch(tuple(s.take_clusters(n, min(size or n.remaining, n.remaining))
                                 for n in list(s.retr_waiting.values())))

    def on_search_progress(self, s, node, now):
        if self.speculate_maps:
            run = s.requests[node.key[0]]
            for i in node.children:
                if run.nodes[i].state is NodeState.BLOCKED:
                    s.speculate(run.nodes[i], now)


def drive(sched: Scheduler, requests, *, max_items: int = 10_000) -> list[GenStep]:
    """Run the core by hand: each search returns at once; each engine step finishes every
    sequence it holds (a sequence admitted in a step finishes in the next)."""
    for r in requests:
        sched.submit(r, 0.0)
    steps, in_engine, t = [], [], 0.0
    for _ in range(max_items):
        if not sched.active:
            return steps
        t += 1.0
        searched = sched.next_work(Lane.CPU_RETRIEVAL, t)
        if searched is not None:
            sched.complete(searched, SearchResult(), t)
        step = sched.next_work(Lane.GPU_GEN, t)  # an engine step between two searches
        if step is None:
            assert searched is not None or not sched.active, "stalled"
            continue
        steps.append(step)
        done = tuple(k for k in in_engine if k not in step.abort)
        in_engine = [t_.key for t_ in step.admit]
        sched.complete(step, GenStepResult(finished=done, running=len(done) + len(in_engine)), t + 0.5)
    raise AssertionError("did not finish")


def stages_mr(k: int) -> list:
    return [Retrieve(4, k, (0, 1, 2, 3)), *[Generate(50, 20, role="map") for _ in range(k)],
            Generate(100, 10, role="reduce"), Generate(40, 5)]


def test_map_reduce_graph_fans_out_and_joins():
    req = build_request(MAP_REDUCE, "q", 0.0, 0, stages_mr(3))
    assert req.deps == ((), (0,), (0,), (0,), (1, 2, 3), (4,))
    rr = build_request(MAP_RERANK, "q", 0.0, 0, [Retrieve(4, 2, (0, 1, 2, 3)), Generate(9, 2), Generate(9, 2)])
    assert rr.deps == ((), (0,), (0,))


def test_every_map_reaches_the_join_and_no_request_is_lost():
    requests = [build_request(MAP_REDUCE, f"q{i}", 0.0, 0, stages_mr(4)) for i in range(5)]
    sched = Scheduler(FinishAll())
    steps = drive(sched, requests)
    records = sched.finished()
    assert sorted(r.id for r in records) == [f"q{i}" for i in range(5)]
    assert all(r.status == "completed" and r.generate_nodes == 6 for r in records)
    # the maps of all five requests were admitted in one engine step (they batch together)
    assert max(sum(t.prompt_tokens == 50 for t in s.admit) for s in steps) == 20
    # no reduce is admitted before all four maps of its request finished
    finished: set = set()
    for s in steps:
        for t in s.admit:
            if t.key[1] == 5:
                assert {(t.key[0], i) for i in range(1, 5)} <= finished
        finished |= {(t.key[0], t.key[1]) for t in s.admit}


def test_an_aborted_map_is_redone():
    requests = [build_request(MAP_REDUCE, "q", 0.0, 0, stages_mr(3))]
    sched = Scheduler(FinishAll(speculate_maps=True))
    steps = drive(sched, requests)  # FinishAll keeps no speculation: every map is aborted and redone
    (rec,) = sched.finished()
    assert rec.status == "completed" and rec.spec_started == 3 and rec.spec_aborted == 3
    admitted_maps = [t.key for s in steps for t in s.admit if 1 <= t.key[1] <= 3]
    assert len(admitted_maps) == 6  # started on the partial top-k, aborted, run again
    assert sum(len(s.abort) for s in steps) == 3


def synthesis(**kw) -> Synthesis:
    profile = QueryProfile(kw.pop("complexity", "high"), kw.pop("joint", True), kw.pop("pieces", 3),
                           (30, 70), kw.pop("confidence", 1.0), "test")
    return Synthesis(20, 180, 60, 12, 35, SynthesisConfig(Method.STUFF, 10), profile, **kw)


def view(free_tokens: int, queued: tuple = ()) -> SimpleNamespace:
    """A scheduler with `free_tokens` free KV tokens, 100 blocks in use, and `queued` Generate
    nodes waiting to be admitted."""
    ready = {("r", i): SimpleNamespace(spec=g) for i, g in enumerate(queued)}
    return SimpleNamespace(kv_block_tokens=16, kv_used_blocks=100, kv_free_tokens=free_tokens,
                           gen_ready=ready, gen_in_engine={})


def ragserve(**options) -> RagServePolicy:
    return RagServePolicy(RagServeOptions(**options), LatencyModel(PROFILE))


@pytest.mark.parametrize("free", [500, 3_000, 6_000, 12_000, 40_000, 10**7])
@pytest.mark.parametrize("joint,complexity", [(True, "high"), (True, "low"), (False, "low")])
def test_best_fit_never_picks_a_configuration_that_does_not_fit(free, joint, complexity):
    syn = synthesis(joint=joint, complexity=complexity)
    policy = ragserve(feedback=False)
    config = policy._choose(view(free), syn)
    candidates = prune(syn.profile).configs(35)
    fitting = [c for c in candidates if demand_tokens(syn, c) * MEMORY_MARGIN <= free]
    if fitting:
        assert config in candidates
        assert demand_tokens(syn, config) * MEMORY_MARGIN <= free
        assert demand_tokens(syn, config) == max(demand_tokens(syn, c) for c in fitting)
    else:  # fallback: as many chunks as fit, of stuff (joint) or map_rerank
        assert config.method is (Method.STUFF if joint else Method.MAP_RERANK)
        if config.num_chunks > 1:
            assert demand_tokens(syn, config) * MEMORY_MARGIN <= free


def test_fallbacks_when_nothing_fits():
    policy = ragserve(feedback=False)
    # the smallest pruned configuration, map_reduce over 5 chunks of 50-word summaries, needs
    # 5 x (80 + 180 + 65) = 1625 tokens; stuff over 7 chunks 80 + 7 x 180 + 12 = 1352 (x 1.02 fits 1500)
    joint = policy._choose(view(1_500), synthesis(joint=True, complexity="high", pieces=5))
    assert joint == SynthesisConfig(Method.STUFF, 7)
    solo = policy._choose(view(2_000), synthesis(joint=False, pieces=4))
    assert solo.method is Method.MAP_RERANK and solo.num_chunks >= 1
    # free memory promised to generations not yet admitted is not free
    full = policy._choose(view(10**6, queued=(Generate(10**6 - 200, 10),)), synthesis())
    assert full.method is Method.STUFF and full.num_chunks == 1
    no_fallback = ragserve(feedback=False, fallback=False)._choose(view(1_500), synthesis(pieces=5))
    assert no_fallback == SynthesisConfig(Method.MAP_REDUCE, 5, 50)  # the smallest pruned one


def test_low_confidence_uses_the_last_queries_ranges():
    policy = ragserve(feedback=False)
    for _ in range(3):
        policy._choose(view(10**7), synthesis(joint=False, pieces=2))  # map_rerank 2-6
    unsure = policy._choose(view(10**7), synthesis(joint=True, complexity="high", pieces=9, confidence=0.5))
    assert unsure == SynthesisConfig(Method.MAP_RERANK, 6)
    alone = ragserve(feedback=False, history=False)._choose(
        view(10**7), synthesis(joint=True, complexity="high", pieces=9, confidence=0.5))
    assert alone == SynthesisConfig(Method.MAP_REDUCE, 27, 50)


MEASURED_GRID = ("stuff:chunks=3", "stuff:chunks=10", "map_reduce:chunks=5,length=25")


def measured(*labels: str, **kw) -> Synthesis:
    """A request whose quality table was measured for `labels` only (as `hedra quality measure --configs`)."""
    return synthesis(quality=tuple((label, 0.1 * (i + 1)) for i, label in enumerate(labels)),
                     quality_source="measured:smollm2", **kw)


@pytest.mark.parametrize("options", [{}, {"best_fit": False}, {"profiler": False}, {"fallback": False},
                                     {"feedback_every": 2}])
@pytest.mark.parametrize("free", [300, 700, 1_500, 10**7])
def test_a_measured_table_restricts_the_choice_to_its_configurations(options, free):
    """ragserve on a partially measured table chooses only measured configurations, whatever its
    parts and free memory (a table's F1 is always known); a declared model's table is not narrowed."""
    policy = ragserve(**options)
    for pieces, joint, complexity in [(5, True, "high"), (2, True, "low"), (1, False, "low"), (9, True, "high")]:
        syn = measured(*MEASURED_GRID, pieces=pieces, joint=joint, complexity=complexity)
        assert [c.label for c in policy.choosable(syn)] == list(MEASURED_GRID)
        for _ in range(3):
            config = policy._choose(view(free), syn)
            assert config.label in MEASURED_GRID
            assert policy._feedback(syn, config).label in MEASURED_GRID  # the golden round's stand-in
    assert policy.measured["requests"] == 12 and policy.measured_labels == set(MEASURED_GRID)
    model = synthesis(quality=tuple((label, 0.5) for label in MEASURED_GRID), quality_source="model:x")
    assert not model.measured and len(list(policy.choosable(model))) == 210  # a model's table: the whole space


def test_a_measured_table_prunes_where_it_can_and_falls_back_where_not():
    policy = ragserve(feedback=False)
    # complex, joint, 5 pieces: map_reduce over 5-15 chunks of 30-70 words; none measured there:
    # the fallback's method (stuff, joint) among the measured, best fit
    syn = measured(*MEASURED_GRID, pieces=5)
    assert policy._choose(view(10**7), syn) == SynthesisConfig(Method.STUFF, 10)
    assert policy._choose(view(1_500), syn) == SynthesisConfig(Method.STUFF, 3)  # 10 chunks need 1,892 tokens
    assert policy.measured == {"requests": 2, "outside_ranges": 2}
    # a measured length between the enumerated ones (30 words) inside the profile's 30-70: pruned to it
    inside = measured(*MEASURED_GRID, "map_reduce:chunks=6,length=30", pieces=5)
    assert policy._choose(view(10**7), inside) == SynthesisConfig(Method.MAP_REDUCE, 6, 30)
    # nothing fits: the fallback's method over as many chunks as fit among the measured, else the smallest
    assert policy._choose(view(300), syn) == SynthesisConfig(Method.STUFF, 3)
    solo = measured(*MEASURED_GRID, "map_rerank:chunks=4", joint=False, pieces=2)
    assert policy._choose(view(10**7), solo) == SynthesisConfig(Method.MAP_RERANK, 4)  # in map_rerank 2-6
    assert policy._choose(view(10), solo) == SynthesisConfig(Method.STUFF, 3)  # the smallest measured
    report = policy.report(SimpleNamespace(aborted_tokens=0))["ragserve"]
    assert report["measured_space"] == {"requests": 6, "outside_ranges": 3, "sources": ["measured:smollm2"],
                                        "configurations": sorted({*MEASURED_GRID, "map_reduce:chunks=6,length=30",
                                                                  "map_rerank:chunks=4"})}
    assert "measured_space" not in ragserve().report(SimpleNamespace(aborted_tokens=0))["ragserve"]


def test_expand_builds_each_method():
    syn = synthesis()
    nodes, deps = expand(syn, SynthesisConfig(Method.MAP_REDUCE, 4, 10), 2, (1,), "w")
    assert [n.role for n in nodes] == ["map"] * 4 + ["reduce"] and deps[-1] == (2, 3, 4, 5)
    assert nodes[-1].prompt_tokens == 80 + 4 * 13
    nodes, deps = expand(syn, SynthesisConfig(Method.MAP_RERANK, 3), 2, (1,), "w")
    assert len(nodes) == 3 and deps == [(1,)] * 3
    nodes, _ = expand(syn, SynthesisConfig(Method.STUFF, 7), 2, (1,), "w")
    assert nodes[0].prompt_tokens == 80 + 7 * 180


def test_a_policy_configuring_out_of_range_is_refused():
    class Bad(FinishAll):
        def configure(self, s, run, now):
            return SynthesisConfig(Method.STUFF, 0)

    spec = WorkflowRegistry().get("metis")
    req = build_request(spec, "q", 0.0, 0, [Generate(300, 40), Retrieve(4, 35, (0, 1, 2, 3))], "", synthesis())
    with pytest.raises(SchedulerError, match="zero chunks"):
        drive(Scheduler(Bad()), [req])


@pytest.fixture(scope="module")
def metis_trace(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("metis") / "metis.jsonl"
    write_jsonl(generate_trace(TraceConfig(("metis",), rate=2.0, duration_s=20.0, seed=3)), path)
    return path


def test_quality_from_trace_to_summary(metis_trace):
    rows = [json.loads(line) for line in metis_trace.read_text().splitlines()]
    assert all(r["synthesis"]["profile"]["source"] == "model:metis-profile-v1" for r in rows)
    requests = load_trace(metis_trace)
    run = simulate(requests, "fixed:synthesis=map_reduce,chunks=6,length=25", PROFILE, timeline=False)
    q = run.summary["quality"]
    want = [r["synthesis"]["quality"]["f1"]["map_reduce:chunks=6,length=25"] for r in rows]
    assert q["answered"] == len(rows) == run.summary["completed"]
    assert q["f1_mean"] == pytest.approx(sum(want) / len(want))
    assert q["source"] == "model:metis-curves-v1"
    assert {r.num_chunks for r in run.result.records} == {6}


@pytest.mark.parametrize("policy", ["ragserve", "adaptive", "ragserve:no-best-fit,no-history", "hedra"])
def test_no_request_lost_and_choices_recorded(metis_trace, policy):
    requests = load_trace(metis_trace)
    run = simulate(requests, policy, PROFILE, timeline=False)
    records = run.result.records
    assert sorted(r.id for r in records) == sorted(r.id for r in requests)
    assert all(r.status == "completed" for r in records)
    assert all(r.synthesis and r.num_chunks >= 1 and not math.isnan(r.config_f1) for r in records)
    assert run.summary["quality"]["answered"] == len(records)


def test_chains_record_no_configuration():
    req = build_request(WorkflowRegistry().get("one-shot"), "q", 0.0, 0, [Retrieve(4, 1, (0, 1, 2, 3)), Generate(9, 2)])
    sched = Scheduler(FinishAll())
    drive(sched, [req])
    (rec,) = sched.finished()
    assert rec.synthesis == "" and rec.num_chunks == 0 and math.isnan(rec.config_f1)


# --- bad input ------------------------------------------------------------------------------

@pytest.mark.parametrize("spec", ["fixed:chunks=36", "fixed:chunks=0", "fixed:synthesis=map_reduce,chunks=5",
                                  "fixed:synthesis=stuff,chunks=5,length=20", "adaptive:high_length=101"])
def test_configuration_outside_the_ranges_is_refused(spec):
    with pytest.raises(PolicyError):
        parse_policy(spec)


def test_fan_out_over_zero_chunks_is_refused():
    with pytest.raises(ValueError, match="no retrieval"):
        WorkflowSpec.model_validate({"name": "x", "head": [{"op": "generate", "synthesis": "map_rerank"}]})
    with pytest.raises(WorkflowError, match="zero chunks"):
        build_request(MAP_RERANK, "q", 0.0, 0, [Retrieve(4, 0, (0, 1, 2, 3))])


def hedra_cli(*args: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "experiments.cli", *map(str, args)], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)


def one_error_line(proc: subprocess.CompletedProcess[str], out: Path) -> str:
    assert proc.returncode == 2, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("hedra: error:") and not out.exists()
    return lines[0]


def test_cli_bad_configurations_exit_2(tmp_path, metis_trace):
    out = tmp_path / "run"
    line = one_error_line(hedra_cli("sim", "--trace", metis_trace, "--policy", "fixed:chunks=40", "--out", out), out)
    assert "chunks" in line
    line = one_error_line(hedra_cli("sim", "--trace", metis_trace, "--policy",
                                    "fixed:synthesis=map_reduce,chunks=5,length=30", "--out", out), out)
    assert "lacks the configuration map_reduce:chunks=5,length=30" in line
    row = json.loads(metis_trace.read_text().splitlines()[0])
    row["stages"] = row["stages"][:1]  # no retrieval: the synthesis fans out over zero chunks
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(row) + "\n")
    line = one_error_line(hedra_cli("sim", "--trace", bad, "--policy", "ragserve", "--out", out), out)
    assert "zero chunks" in line and "bad.jsonl:1" in line


@pytest.mark.parametrize("policy", ["ragserve", "ragserve:no-profiler", "adaptive"])
def test_cli_a_quality_table_lacking_a_choosable_configuration_exits_2(tmp_path, metis_trace, policy):
    """A policy that chooses at run time is checked at the edge against every configuration it
    may choose: a table without one of them is refused before anything runs or is written."""
    rows = [json.loads(line) for line in metis_trace.read_text().splitlines()]
    complex_ = next(i for i, r in enumerate(rows) if r["synthesis"]["profile"]["complexity"] == "high")
    del rows[complex_]["synthesis"]["quality"]["f1"]["map_reduce:chunks=30,length=100"]  # adaptive's choice
    bad = tmp_path / "bad.jsonl"
    bad.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "run"
    line = one_error_line(hedra_cli("sim", "--trace", bad, "--policy", policy, "--out", out), out)
    assert f"{bad}: request {rows[complex_]['id']!r}" in line
    assert "lacks the configuration map_reduce:chunks=30,length=100" in line and policy.split(":")[0] in line
    assert hedra_cli("sim", "--trace", metis_trace, "--policy", policy, "--out", out).returncode == 0  # whole: runs


def test_ragserve_on_a_partially_measured_trace_chooses_only_measured_configurations(tmp_path, metis_trace):
    """`hedra quality measure --configs` over three configurations: ragserve runs over those three
    (said on its line and in summary.json), every request's choice has its measured F1; a fixed
    configuration the table lacks is still refused (exit 2, one line)."""
    rows = [json.loads(line) for line in metis_trace.read_text().splitlines()]
    for i, row in enumerate(rows):
        row["synthesis"]["quality"] = {"source": "measured:smollm2",
                                       "f1": {label: round(0.1 * (j + 1) + 0.01 * (i % 5), 3)
                                              for j, label in enumerate(MEASURED_GRID)}}
    part = tmp_path / "measured.jsonl"
    part.write_text("".join(json.dumps(r) + "\n" for r in rows))
    run = simulate(load_trace(part), "ragserve", PROFILE, timeline=False)
    records = run.result.records
    assert len(records) == len(rows) and all(r.status == "completed" for r in records)
    chosen = {SynthesisConfig(Method(r.synthesis), r.num_chunks, r.intermediate_length).label for r in records}
    assert chosen <= set(MEASURED_GRID) and not any(math.isnan(r.config_f1) for r in records)
    assert run.summary["quality"]["answered"] == len(rows) and run.summary["quality"]["source"] == "measured:smollm2"
    out = tmp_path / "run"
    proc = hedra_cli("sim", "--trace", part, "--policy", "ragserve", "--out", out)
    assert proc.returncode == 0, proc.stderr
    assert "ragserve chose among the 3 measured configurations (measured:smollm2" in proc.stdout
    space = json.loads((out / "summary.json").read_text())["ragserve"]["measured_space"]
    assert space["requests"] == len(rows) and space["configurations"] == sorted(MEASURED_GRID)
    line = one_error_line(hedra_cli("sim", "--trace", part, "--policy", "fixed:synthesis=stuff,chunks=5",
                                    "--out", tmp_path / "fixed"), tmp_path / "fixed")
    assert f"{part}: request {rows[0]['id']!r}" in line
    assert "(measured:smollm2) lacks the configuration stuff:chunks=5" in line
    assert hedra_cli("sim", "--trace", part, "--policy", "fixed:synthesis=stuff,chunks=10", "--out",
                     tmp_path / "ok").returncode == 0  # a measured one runs
    few = SimpleNamespace(id="q", synthesis=Synthesis(20, 180, 60, 12, 5, SynthesisConfig(Method.STUFF, 5),
                                                      quality=(("stuff:chunks=10", 0.2),), quality_source="measured"))
    assert "holds no configuration over at most 5 chunks" in ragserve().accepts([few])


def test_cli_bad_synthesis_in_a_trace_or_a_workflow_file_exits_2(tmp_path, metis_trace):
    """Out-of-range configurations and fan-outs over zero chunks in the user's files: one line
    naming the file (and line or field), exit 2, nothing written."""
    out = tmp_path / "run"
    row = json.loads(metis_trace.read_text().splitlines()[0])
    row["synthesis"]["default"] = {"method": "map_reduce", "num_chunks": 5, "intermediate_length": 150}
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(row) + "\n")
    line = one_error_line(hedra_cli("sim", "--trace", bad, "--policy", "ragserve", "--out", out), out)
    assert "bad.jsonl:1" in line and "intermediate_length" in line
    flows = tmp_path / "flows.toml"
    flows.write_text('[[workflow]]\nname = "fan"\nhead = [{op = "generate", synthesis = "map_reduce",'
                     ' intermediate_length = 20}]\n')
    line = one_error_line(hedra_cli("sim", "--trace", metis_trace, "--workflows", flows, "--policy", "hedra",
                                    "--out", out), out)
    assert "flows.toml" in line and "no retrieval" in line


def test_trace_synthesis_checked(tmp_path, metis_trace):
    row = json.loads(metis_trace.read_text().splitlines()[0])
    row["synthesis"]["default"]["num_chunks"] = 99
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(row) + "\n")
    with pytest.raises(TraceError, match=r"synthesis\.default"):
        load_trace(bad)


def test_figure_metis_quick_writes_its_points(tmp_path):
    out = tmp_path / "fig"
    proc = hedra_cli("figure", "metis", "--quick", "--out", out)
    assert proc.returncode == 0, proc.stderr
    lines = (out / "points.csv").read_text().splitlines()
    assert lines[0].startswith("policy,p50_s,mean_s,f1")
    assert {ln.split(",")[0] for ln in lines[1:]} >= {"ragserve", "adaptive"} and len(lines) == 9
    assert (out / "metis.png").is_file() and "model:metis-curves-v1" in proc.stdout
    bad = hedra_cli("figure", "metis2", "--out", tmp_path / "bad")
    assert bad.returncode == 2 and bad.stderr.startswith("hedra: error: figure metis2")


def test_trace_rows_validate_as_python_objects_too(metis_trace):
    """A row validated from Python objects (as real_trace hands them), not JSON text."""
    from traces.schema import TraceRequest, to_request

    row = json.loads(metis_trace.read_text().splitlines()[0])
    req = to_request(TraceRequest.model_validate(row), WorkflowRegistry())
    assert req.synthesis is not None
    assert req.synthesis.profile.summary_range == tuple(row["synthesis"]["profile"]["summary_range"])


def test_profile_from_a_decomposition():
    from traces.metis import profile_from_decomposition

    p = profile_from_decomposition(6)
    assert p["pieces"] == 6 and p["joint"] and p["complexity"] == "high" and p["source"] == "fanoutqa-decomposition"
    single = profile_from_decomposition(1)
    assert single["pieces"] == 1 and not single["joint"]
    assert prune(QueryProfile(**{**single, "summary_range": tuple(single["summary_range"])})).methods == \
        (Method.MAP_RERANK,)


def test_free_kv_memory_in_the_schedulers_view():
    sched = Scheduler(FinishAll())
    assert sched.view.kv_free_tokens == 0 and sched.view.kv_block_tokens == 0  # before the engine reports
    sched.submit(build_request(MAP_RERANK, "q", 0.0, 0, [Retrieve(4, 1, (0, 1, 2, 3)), Generate(9, 2)]), 0.0)
    sched.complete(sched.next_work(Lane.CPU_RETRIEVAL, 0.0), SearchResult(), 0.1)
    step = sched.next_work(Lane.GPU_GEN, 0.1)
    sched.complete(step, GenStepResult(kv_used_blocks=10, kv_total_blocks=100, kv_block_tokens=16, running=1), 0.2)
    assert sched.view.kv_free_tokens == 90 * 16


def test_branches_and_fan_out_are_not_combined():
    with pytest.raises(ValueError, match="cannot be combined"):
        WorkflowSpec.model_validate({"name": "x", "head": [{"op": "retrieve"}],
                                     "loop": [{"op": "generate", "synthesis": "map_rerank"}],
                                     "default_iterations": 2, "branches": [1, 2]})


@pytest.mark.parametrize("kv_policy", ["lru", "kvflow"])
def test_run_time_synthesis_under_each_kv_policy(metis_trace, kv_policy):
    """KVFlow's steps to execution cover the nodes a run-time synthesis appends."""
    from ragraph.kvpolicy import parse_kv_policy

    requests = load_trace(metis_trace)
    run = simulate(requests, "ragserve", PROFILE, timeline=False, kv_policy=parse_kv_policy(kv_policy))
    assert run.summary["completed"] == len(requests)


@pytest.mark.parametrize("spec, requests_at_once, calls_at_once", [
    ("ragserve", None, None), ("ragserve:no-batching", 1, None), ("ragserve:serial_fan_out=true", None, 1),
    ("ragserve:no-batching,serial_fan_out=true", 1, 1)])
def test_batching_switched_off_holds_fan_out_calls_back(metis_trace, spec, requests_at_once, calls_at_once):
    """Without `batching` one request's fan-out is in the engine at a time; with `serial_fan_out`
    one call of a request's fan-out at a time; every request completes either way, and holding
    calls back makes requests slower on average than batching them."""
    most = {"requests": 0, "calls": 0}

    class Watched(RagServePolicy):
        def admit_generations(self, s, now):
            admit = super().admit_generations(s, now)
            per_request: dict[str, int] = {}
            for n in [*s.gen_in_engine.values(), *admit]:
                if n.spec.role in ("map", "rerank"):
                    per_request[n.key[0]] = per_request.get(n.key[0], 0) + 1
            most["requests"] = max(most["requests"], len(per_request))
            most["calls"] = max(most["calls"], *per_request.values(), 0)
            return admit

    requests = load_trace(metis_trace)
    latency = LatencyModel(PROFILE)
    from sim.executor import Simulation

    def run(options: RagServeOptions) -> float:
        most.update(requests=0, calls=0)
        result = Simulation(requests, Watched(options, latency), latency, seed=0, timeline=False).run()
        assert all(r.status == "completed" for r in result.records) and len(result.records) == len(requests)
        return sum(r.latency_s for r in result.records) / len(result.records)

    options = RagServeOptions(**parse_policy(spec).resolved())
    mean = run(options)
    assert most["requests"] == requests_at_once if requests_at_once else most["requests"] > 1
    assert most["calls"] == calls_at_once if calls_at_once else most["calls"] > 1
    if spec != "ragserve":
        assert mean > run(RagServeOptions())


@pytest.mark.parametrize("spec", ["ragserve", "ragserve:no-profiler", "ragserve:no-best-fit", "ragserve:no-history"])
def test_ragserve_never_chooses_a_call_longer_than_the_engine_takes(metis_trace, spec):
    """On an engine of 4096 tokens per call (the CPU rig's), stuff over 35 chunks or a reduce
    over 30 summaries of 100 words cannot run: ragserve (best fit, fallbacks, golden round)
    never chooses them, and every request completes."""
    from ragraph.synthesis import longest_call, parse_config

    short = PROFILE.model_copy(update={"engine": PROFILE.engine.model_copy(update={"max_model_len": 4096})})
    requests = load_trace(metis_trace)
    run = simulate(requests, spec, short, timeline=False)
    by_id = {r.id: r.synthesis for r in requests}
    assert all(r.status == "completed" for r in run.result.records)
    def longest(rec) -> int:
        label = f"{rec.synthesis}:chunks={rec.num_chunks}" + (
            f",length={rec.intermediate_length}" if rec.synthesis == "map_reduce" else "")
        return longest_call(by_id[rec.id], parse_config(label))

    assert max(longest(r) for r in run.result.records) <= 4096
    if spec == "ragserve:no-profiler":  # the same trace on the 8192-token engine does choose longer calls
        assert max(longest(r) for r in simulate(requests, spec, PROFILE, timeline=False).result.records) > 4096
