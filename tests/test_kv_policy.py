"""KV policies (ragraph.kvpolicy): steps to execution from the graphs in flight, and the block
pool's eviction order per policy (sim.block_pool)."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ragraph.core import Scheduler
from ragraph.graph import Generate, Request, chain, levels
from ragraph.kvpolicy import KVPolicyError, parse_kv_policy, prefix_steps, steps_to_execution
from ragraph.policies import make_policy
from ragraph.runtime import RequestRun
from ragraph.state import NodeState
from ragraph.work import GenStep, GenStepResult, Lane
from sim.block_pool import FAR
from sim.gen_engine import GenEngineModel
from tests.test_gen_engine import build, engine, run_to_end
from tests.test_prefix_tree import drive_ids, ids_task, tree_tasks


def agent(i: int, ids: tuple[int, ...] = ()) -> Generate:
    return Generate(100, 4, role="agent", hash_ids=ids or (i,), block_tokens=16)


def run_of(req: Request, states: list[NodeState]) -> RequestRun:
    run = RequestRun.start(req)
    for node, state in zip(run.nodes, states, strict=True):
        node.state = state
    return run


B, R, D = NodeState.BLOCKED, NodeState.RUNNING, NodeState.DONE


def test_steps_to_execution_in_a_chain_and_at_joins():
    req = chain("a", 0.0, "agent-chain", [agent(i) for i in range(4)])
    assert steps_to_execution(run_of(req, [D, R, B, B])) == [-1, 0, 1, 2]
    assert steps_to_execution(run_of(req, [B, B, B, B])) == [0, 1, 2, 3]  # a source node may run now
    # levels 1, 2, 1: node 3 waits for nodes 1 and 2 (AND: the later one; OR: the earlier one)
    req = levels("b", 0.0, "agent-branch", [agent(i) for i in range(4)], [1, 2, 1])
    states = [D, R, B, B]
    req2 = Request("c", 0.0, "x", req.nodes, ((), (0,), (1,), (1, 2)))  # node 2 after node 1, node 3 after both
    assert steps_to_execution(run_of(req, states)) == [-1, 0, 0, 1]  # node 2 is ready (its parent is done)
    assert steps_to_execution(run_of(req2, [D, R, B, B])) == [-1, 0, 1, 2]
    assert steps_to_execution(run_of(req2, [D, R, B, B]), frozenset({3})) == [-1, 0, 1, 1]


def test_prefix_steps_takes_the_nearest_use_of_each_prefix():
    shared = agent(9, (7, 8))
    a = run_of(chain("a", 0.0, "w", [agent(1), shared, agent(2)]), [R, B, B])
    b = run_of(chain("b", 0.0, "w", [agent(3), agent(4), shared]), [R, B, B])
    assert prefix_steps([a, b]) == (((16, 1), 0), ((16, 7, 8), 1), ((16, 2), 2), ((16, 3), 0), ((16, 4), 1))


def test_unknown_kv_policy_is_refused():
    assert parse_kv_policy("kvflow").wants_steps and not parse_kv_policy("lru").wants_steps
    with pytest.raises(KVPolicyError, match="unknown KV policy 'lfu'"):
        parse_kv_policy("lfu")


def test_the_core_sends_steps_only_when_the_graphs_changed():
    from hwmodel.latency import LatencyModel
    from hwmodel.profile import load_profile

    policy = make_policy("hedra", LatencyModel(load_profile()))
    sched = Scheduler(policy, parse_kv_policy("kvflow"))
    sched.submit(chain("a", 0.0, "agent-chain", [agent(1), agent(2)]), 0.0)
    step = sched.next_work(Lane.GPU_GEN, 0.0)
    assert isinstance(step, GenStep) and step.kv_steps == (((16, 1), 0), ((16, 2), 1))
    sched.complete(step, GenStepResult(running=1), 0.1)
    step = sched.next_work(Lane.GPU_GEN, 0.1)
    assert step.kv_steps is None  # nothing changed
    sched.complete(step, GenStepResult(finished=(("a", 0),)), 0.2)
    step = sched.next_work(Lane.GPU_GEN, 0.2)
    assert step.kv_steps == (((16, 2), 0),)  # agent 1 done, agent 2 ready
    lru = Scheduler(make_policy("hedra", LatencyModel(load_profile())))
    lru.submit(chain("a", 0.0, "agent-chain", [agent(1), agent(2)]), 0.0)
    assert lru.next_work(Lane.GPU_GEN, 0.0).kv_steps is None


# --- eviction order, hand-built ---------------------------------------------------------------

def kv_engine(blocks: int, kv_policy: str) -> GenEngineModel:
    return GenEngineModel(engine(blocks=blocks).latency, kv_policy)


def three_idle_prefixes(kv_policy: str):
    """An engine of 16 blocks holding three idle 4-block prefixes, freed in the order 1, 2, 3."""
    e = kv_engine(16, kv_policy)
    for i in (1, 2, 3):
        e.apply(GenStep(admit=(ids_task(f"p{i}", 65, 1, (i,), 64),)))  # 64 tokens declared: 4 blocks
        run_to_end(e)
    assert e.pool.cached_free == 12
    return e


def cached(e, i: int) -> int:
    node = e.pool.find((i,), 64)
    return 0 if node is None else node.cached - node.start


def test_lru_evicts_the_least_recently_freed_prefix_first():
    e = three_idle_prefixes("lru")
    e.apply(GenStep(admit=(ids_task("x", 16 * 6, 1, (), 16),)))  # 6 blocks: 4 uncached, 2 evicted
    e.step()
    assert [cached(e, i) for i in (1, 2, 3)] == [2, 4, 4]


def test_kvflow_evicts_the_farthest_prefix_first_then_the_largest_steps():
    e = three_idle_prefixes("kvflow")
    e.apply(GenStep(admit=(ids_task("x", 16 * 10, 1, (), 16),), kv_steps=(((64, 1), 0), ((64, 3), 2))))
    e.step()  # 10 blocks: 4 uncached, then prefix 2 (no use in flight), then 2 of prefix 3 (2 steps away)
    assert [cached(e, i) for i in (1, 2, 3)] == [4, 0, 2]
    assert e.pool.evicted == 6


def test_kvflow_evicts_unshared_suffixes_before_any_prefix():
    e = kv_engine(16, "kvflow")
    e.apply(GenStep(admit=(ids_task("p", 65, 1, (1,), 64),)))  # 4 prefix blocks + a partial one
    run_to_end(e)
    e.apply(GenStep(admit=(ids_task("q", 16 * 8, 1, (2,), 64),)))  # 4 prefix blocks + 4 own (unshared)
    run_to_end(e)  # free queue (LRU): prefix 1, then q's own blocks, then prefix 2
    e.apply(GenStep(admit=(ids_task("x", 16 * 8, 1, (), 16),)))  # 8 blocks: 4 uncached, 4 of q's own content
    e.step()
    assert [cached(e, i) for i in (1, 2)] == [4, 4] and e.pool.evicted == 0
    lru = kv_engine(16, "lru")
    lru.apply(GenStep(admit=(ids_task("p", 65, 1, (1,), 64),)))
    run_to_end(lru)
    lru.apply(GenStep(admit=(ids_task("q", 16 * 8, 1, (2,), 64),)))
    run_to_end(lru)
    lru.apply(GenStep(admit=(ids_task("x", 16 * 8, 1, (), 16),)))
    lru.step()
    assert [cached(lru, i) for i in (1, 2)] == [0, 4] and lru.pool.evicted == 4  # vLLM's order: the oldest freed


def test_kvflow_takes_a_branch_before_its_stem_and_a_stem_keeps_its_childs_steps():
    e = kv_engine(16, "kvflow")
    for rid, ids in (("a", (1, 2)), ("b", (1, 3))):  # stem 1 (4 blocks), branches 2 and 3 (4 blocks each)
        e.apply(GenStep(admit=(ids_task(rid, 129, 1, ids, 64),)))
        run_to_end(e)
    stem = e.pool.find((1,), 64)
    # branch 2 is due in 1 step, branch 3 in 5: the stem takes 1; branch 3 goes first, then branch 2
    e.apply(GenStep(admit=(ids_task("x", 16 * 10, 1, (), 16),), kv_steps=(((64, 1, 2), 1), ((64, 1, 3), 5))))
    assert stem.steps == 1
    e.step()  # 10 blocks: 4 uncached + 4 of branch 3 + 2 of branch 2; the stem stays
    assert stem.cached == stem.end and e.pool.find((1, 3), 64) is None
    assert e.pool.find((1, 2), 64).cached - 4 == 2
    e.apply(GenStep(kv_steps=()))
    assert stem.steps == FAR


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(tasks=tree_tasks, bt=st.sampled_from([8, 16, 24, 40]), block=st.sampled_from([4, 16]),
       spare=st.integers(0, 30), aborts=st.lists(st.tuples(st.integers(0, 40), st.integers(0, 13)), max_size=3),
       steps=st.lists(st.tuples(st.lists(st.integers(0, 2), min_size=1, max_size=4), st.integers(0, 5)),
                      max_size=6))
def test_kvflow_keeps_kv_use_within_capacity_and_never_evicts_a_held_block(tasks, bt, block, spare, aborts, steps):
    rows = [(at, p, o, ids[: -(-p // bt)], bt) for at, p, o, ids in tasks]
    w = {"block": block, "budget": 32, "seqs": 4, "spare": spare,
         "tasks": [(at, p, o, "", 0) for at, p, o, *_ in rows], "aborts": aborts}
    e = build(w, True)
    e = type(e)(e.latency, "kvflow")
    e.pool.set_steps(tuple(((bt, *ids), s) for ids, s in steps))
    w["tasks"] = rows
    drive_ids(e, w)  # audits the tree (held <= cached: no held block evicted) and KV use after every step
    assert e.kv_used_blocks == 0 and e.pool.audit() == 0


# --- agent workflows and the command line ----------------------------------------------------

def test_agent_traces_share_each_agents_fixed_prompt_across_requests():
    from traces.generate import TraceConfig, generate_trace

    cfg = TraceConfig(("agent-chain",), 4.0, 2.0, agent_tokens=(1024, 32, 16), agent_sets=2, agent_system=512,
                      iterations=6, agent_count=3)
    rows = generate_trace(cfg)
    first, second, third = rows[0]["stages"], rows[1]["stages"], rows[2]["stages"]
    assert [s["prompt_tokens"] for s in first] == [1056] * 6 and {s["output_tokens"] for s in first} == {16}
    assert first[0]["hash_ids"] == first[3]["hash_ids"] != first[1]["hash_ids"]  # 3 agents called in turn
    assert first[0]["hash_ids"][0] == first[1]["hash_ids"][0]  # the set's system prompt: one shared block
    assert first[0]["hash_ids"] == third[0]["hash_ids"] != second[0]["hash_ids"]  # sets taken in turn
    assert first[0]["block_tokens"] == 512 and len(first[0]["hash_ids"]) == 2


def test_sim_records_the_kv_policy_and_refuses_an_unknown_one(tmp_path):
    import json

    from tests.test_cli import assert_usage_error, hedra

    trace = tmp_path / "a.jsonl"
    assert hedra("trace", "gen", "--workflow", "agent-chain", "--rate", 2, "--duration", 5, "--out", trace,
                 "--agent-tokens", "1024/32/8", "--iterations", 3).returncode == 0
    out = tmp_path / "run"
    ok = hedra("sim", "--trace", trace, "--policy", "hedra", "--kv-policy", "kvflow", "--out", out)
    assert ok.returncode == 0, ok.stderr
    kv = json.loads((out / "summary.json").read_text())["kv_cache"]
    assert kv["kv_policy"] == "kvflow" and kv["prompt_tokens_computed"] > 0
    line = assert_usage_error(hedra("sim", "--trace", trace, "--policy", "hedra", "--kv-policy", "lfu",
                                    "--out", tmp_path / "bad"), tmp_path / "bad")
    assert "unknown KV policy 'lfu'" in line


def test_run_and_validate_refuse_an_unknown_kv_policy_before_loading_anything(tmp_path):
    from tests.test_cli import assert_usage_error, hedra

    trace = tmp_path / "a.jsonl"
    trace.write_text("")
    out = tmp_path / "run"
    line = assert_usage_error(hedra("run", "--trace", trace, "--policy", "hedra", "--kv-policy", "lfu", "--out", out),
                              out)
    assert "unknown KV policy 'lfu'" in line
    line = assert_usage_error(hedra("validate", "--trace", trace, "--kv-policy", "lru,lfu", "--out", out), out)
    assert "unknown KV policy 'lfu'" in line
    for command in (("run", "--policy", "hedra", "--kv-policy", "ragcache"),
                    ("validate", "--kv-policy", "lru,ragcache")):
        line = assert_usage_error(hedra(*command, "--trace", trace, "--out", out), out)  # the simulator's only
        assert "--kv-policy ragcache: the real body implements lru, kvflow only" in line


def test_kv_policy_specs_with_options_in_a_comma_separated_list():
    from ragraph.kvpolicy import split_kv_policies

    assert split_kv_policies("lru, kvflow:no-prefetch,load_ahead=3,kvflow") == [
        "lru", "kvflow:no-prefetch,load_ahead=3", "kvflow"]
    assert split_kv_policies("lru,lfu") == ["lru", "lfu"]
    assert parse_kv_policy("kvflow:load_ahead=3,no-prefetch").spec == "kvflow:no-prefetch,load_ahead=3"
    with pytest.raises(KVPolicyError, match="unknown option 'x'"):
        parse_kv_policy("kvflow:x")
    with pytest.raises(KVPolicyError, match="takes no option"):
        parse_kv_policy("lru:no-prefetch")


def test_a_kv_cache_smaller_than_a_block_is_refused_in_one_line():
    import typer

    from experiments.cli.common import UsageError
    from experiments.cli.real import with_kv_cache
    from hwmodel.profile import DEFAULT_CPU_PROFILE, load_profile

    prof = load_profile(DEFAULT_CPU_PROFILE)
    small = with_kv_cache(prof, 0.01)
    assert small.engine.kv_cache_gib == 0.01 and small.kv_capacity_blocks() == 40 and with_kv_cache(prof, None) is prof
    with pytest.raises((UsageError, typer.BadParameter), match="--kv-cache-gib 1e-06"):
        with_kv_cache(prof, 1e-6)
