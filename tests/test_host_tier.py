"""The simulator's host-memory KV tier (sim.host_tier), kvflow's prefetch from it and ragcache's
PGDSF order (sim.block_pool), on hand-built cases and random workloads."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hwmodel.latency import LatencyModel
from hwmodel.profile import GIB, Profile, ProfileError, load_profile
from ragraph.kvpolicy import parse_kv_policy
from ragraph.work import GenStep, GenTask
from sim.gen_engine import GenEngineModel
from tests.test_prefix_tree import ids_task, tree_tasks

PROFILE = load_profile()
KV = PROFILE.model.kv_bytes_per_token
BLOCK_BYTES = KV * 16


def host_profile(blocks: int, host_blocks: int, block_size: int = 16, **engine: object) -> Profile:
    """The default profile with exactly `blocks` GPU KV blocks and `host_blocks` on the host."""
    d = PROFILE.model_dump()
    d["hardware"]["host_memory_gib"] = 1024.0
    d["engine"].update(block_size=block_size, kv_cache_gib=blocks * block_size * KV / GIB,
                       host_kv_gib=host_blocks * block_size * KV / GIB, **engine)
    return Profile.model_validate(d)


def host_engine(blocks: int, host_blocks: int, kv_policy: str = "lru", **engine: object) -> GenEngineModel:
    e = GenEngineModel(LatencyModel(host_profile(blocks, host_blocks, **engine)), parse_kv_policy(kv_policy))
    assert e.total_blocks == blocks and e.host is not None and e.host.capacity == host_blocks
    return e


def check(e: GenEngineModel) -> None:
    """KV use plus the host tier within capacity; the tree's invariants (a held block is cached:
    never evicted while in use); the host's count equals a recount from the nodes."""
    pool = e.pool
    assert e.kv_used_blocks == e.audit_blocks()
    assert pool.used + pool.anon + pool.cached_free + pool.lent == pool.total
    assert 0 <= pool.used <= pool.total and pool.anon >= 0 and pool.cached_free >= 0
    if pool.ordered:  # the prefix nodes' free blocks, counted apart from the free queue's
        assert pool.node_free == sum(r.hi - r.lo for n in pool.nodes() for r in n.free_runs)
    if e.host is not None:
        assert 0 <= e.host.used <= e.host.capacity
        assert e.host.used == sum(n.host_hi - n.host_lo for n in pool.nodes())


def step(e: GenEngineModel, admit: tuple[GenTask, ...] = (), kv_steps=None) -> tuple[float, object]:
    """One engine step at the engine's clock, which then advances by the step (or to the next load)."""
    e.apply(GenStep(admit=admit, kv_steps=kv_steps))
    seconds, res = e.step()
    check(e)
    e.now = e.now + seconds if seconds else max(e.now, e.loads_due())
    return seconds, res


def run_to_end(e: GenEngineModel) -> None:
    for _ in range(10_000):
        step(e)
        if not e.seqs:
            return
    raise AssertionError("did not drain")


def compute(e: GenEngineModel, rid: str, ids: tuple[int, ...], prompt: int = 65) -> None:
    """Run a prompt of `ids` (64 tokens each: 4 blocks) to its end."""
    step(e, (ids_task(rid, prompt, 1, ids, 64),))
    run_to_end(e)


def cached(e: GenEngineModel, ids: tuple[int, ...]) -> int:
    node = e.pool.find(ids, 64)
    return 0 if node is None else node.cached - node.start


def on_host(e: GenEngineModel, ids: tuple[int, ...]) -> int:
    node = e.pool.find(ids, 64)
    return 0 if node is None else node.host_hi - node.host_lo


# --- the profile ---------------------------------------------------------------------------------

def test_a_host_tier_larger_than_the_machine_is_refused(tmp_path):
    d = PROFILE.model_dump()
    d["hardware"]["host_memory_gib"] = 512.0
    d["engine"]["host_kv_gib"] = 600.0
    path = tmp_path / "big-host.json"
    path.write_text(json.dumps(d))
    with pytest.raises(ProfileError) as err:
        load_profile(path)
    msg = str(err.value)
    assert str(path) in msg and "engine.host_kv_gib" in msg and "\n" not in msg
    del d["hardware"]["host_memory_gib"]
    path.write_text(json.dumps(d))
    with pytest.raises(ProfileError, match=r"requires hardware\.host_memory_gib"):
        load_profile(path)
    d["hardware"]["host_memory_gib"] = 1024.0
    path.write_text(json.dumps(d))
    assert load_profile(path).host_kv_blocks() == int(600 * GIB // BLOCK_BYTES)
    assert PROFILE.host_kv_blocks() == 0  # off by default


def test_the_command_line_refuses_a_host_tier_larger_than_the_machine(tmp_path):
    from tests.test_cli import assert_usage_error, hedra

    d = PROFILE.model_dump()
    d["hardware"]["host_memory_gib"] = 64.0
    d["engine"]["host_kv_gib"] = 65.0
    prof = tmp_path / "p.json"
    prof.write_text(json.dumps(d))
    trace = tmp_path / "a.jsonl"
    assert hedra("trace", "gen", "--workflow", "agent-chain", "--rate", 2, "--duration", 2, "--out", trace,
                 "--agent-tokens", "512/32/8", "--iterations", 2).returncode == 0
    out = tmp_path / "run"
    line = assert_usage_error(hedra("sim", "--trace", trace, "--policy", "hedra", "--profile", prof, "--out", out), out)
    assert str(prof) in line and "engine.host_kv_gib" in line


# --- copies out and loads back -------------------------------------------------------------------

def test_an_evicted_prefix_is_copied_to_the_host_and_loaded_back_with_a_stall():
    e = host_engine(16, 64)
    compute(e, "a", (1,))
    assert cached(e, (1,)) == 4 and e.host.bytes_out == 0
    compute(e, "x", (), prompt=255)  # 16 blocks: prefix 1's 4 blocks evicted, copied out
    assert cached(e, (1,)) == 0 and on_host(e, (1,)) == 4 and e.host.bytes_out == 4 * BLOCK_BYTES
    load_s = e.latency.pcie_s(4 * BLOCK_BYTES)
    e.host.free_at = 0.0  # the link idle
    seconds, _ = step(e, (ids_task("b", 65, 1, (1,), 64),))
    assert e.hit_tokens == 64 and e.loaded_tokens == 64 and e.host.bytes_in == 4 * BLOCK_BYTES
    assert e.stalls == 1 and e.stall_s == pytest.approx(load_s) and seconds > load_s
    assert on_host(e, (1,)) == 4  # the host keeps its copy: evicted again, nothing is copied
    run_to_end(e)
    out = e.host.bytes_out
    compute(e, "y", (), prompt=255)
    assert e.host.bytes_out == out
    report = e.kv_cache_report()
    assert report["bytes_copied_in"] == 4 * BLOCK_BYTES and report["prompt_tokens_loaded"] == 64
    assert report["stalled_steps"] == 1 and report["prefetches"]["issued"] == 0


def test_without_a_host_tier_the_evicted_prefix_is_recomputed():
    from tests.test_kv_policy import kv_engine
    e = kv_engine(16, "lru")
    for admit in ((ids_task("a", 65, 1, (1,), 64),), (ids_task("x", 255, 1, (), 16),),
                  (ids_task("b", 65, 1, (1,), 64),)):
        e.apply(GenStep(admit=admit))
        while e.seqs or admit:
            admit = ()
            e.step()
    assert e.hit_tokens == 0 and e.host is None and "bytes_copied_out" not in e.kv_cache_report()


def test_a_full_host_drops_its_least_recently_used_content_first():
    e = host_engine(8, 6)  # the host holds one prefix and a half
    compute(e, "a", (1,))
    compute(e, "b", (2,))
    compute(e, "x", (), prompt=127)  # evicts both prefixes (lru: 1 first, then 2)
    assert on_host(e, (1,)) == 2 and on_host(e, (2,)) == 4 and e.host.used == 6
    step(e, (ids_task("c", 65, 1, (1,), 64),))  # prefix 1: 2 blocks from the host, 2 recomputed
    assert e.loaded_tokens == 32 and e.hit_tokens == 32


# --- eviction order per policy (the host's content follows the GPU's evictions) -------------------

def test_kvflow_prefetches_a_due_prefix_and_skips_its_request_while_it_loads():
    e = host_engine(16, 64, "kvflow")
    compute(e, "a", (1,))
    compute(e, "x", (), prompt=255)
    assert on_host(e, (1,)) == 4 and cached(e, (1,)) == 0
    e.host.free_at = 0.0
    step(e, kv_steps=(((64, 1), 1),))  # prefix 1 due in one step: prefetched into free blocks
    assert e.pool.prefetched == 1 and cached(e, (1,)) == 4 and e.host.bytes_in == 4 * BLOCK_BYTES
    e.now = 0.0  # its load has not finished: the request is skipped, not stalled
    seconds, res = step(e, (ids_task("b", 65, 1, (1,), 64),))
    assert seconds == 0.0 and e.skips == 1 and e.stalls == 0 and res.waiting == 1
    assert e.now == e.pool.find((1,), 64).ready_at > 0  # woken when the load ends
    run_to_end(e)
    assert e.hit_tokens == 64 and e.loaded_tokens == 0 and e.stall_s == 0.0
    assert e.kv_cache_report()["prefetches"] == {"issued": 1, "used": 1, "wasted": 0, "cancelled": 0}


def test_kvflow_no_prefetch_loads_on_demand_and_stalls():
    e = host_engine(16, 64, "kvflow:no-prefetch")
    compute(e, "a", (1,))
    compute(e, "x", (), prompt=255)
    step(e, kv_steps=(((64, 1), 1),))
    assert e.pool.prefetched == 0 and cached(e, (1,)) == 0
    step(e, (ids_task("b", 65, 1, (1,), 64),))
    assert e.loaded_tokens == 64 and e.stalls == 1 and e.kv_cache_report()["kv_policy"] == "kvflow:no-prefetch"


def test_a_prefetch_evicted_before_use_is_wasted_or_cancelled():
    e = host_engine(16, 64, "kvflow")
    compute(e, "a", (1,))
    compute(e, "x", (), prompt=255)
    e.host.free_at = 0.0
    step(e, kv_steps=(((64, 1), 1),))
    e.now = 0.0  # still loading when a large prompt needs every block: cancelled
    step(e, (ids_task("y", 255, 1, (), 16),), kv_steps=())
    run_to_end(e)
    assert cached(e, (1,)) == 0 and e.pool.prefetch_cancelled == 1
    step(e, kv_steps=(((64, 1), 2),))  # prefetched again, loaded, then evicted unused: wasted
    e.now += 1.0
    step(e, (ids_task("z", 255, 1, (), 16),), kv_steps=())
    run_to_end(e)
    assert e.kv_cache_report()["prefetches"] == {"issued": 2, "used": 0, "wasted": 1, "cancelled": 1}


def test_ragcache_evicts_the_lowest_priority_prefix_first():
    """PGDSF: equal sizes and costs, so the priority orders by access frequency: prefix 1 hit
    twice, prefix 3 once, prefix 2 never; 9 blocks wanted: prefix 2, then one of prefix 3. LRU
    takes prefix 1 first (the least recently freed)."""
    from tests.test_kv_policy import kv_engine
    e = kv_engine(16, "ragcache")

    def go(rid, ids, prompt=65):
        e.apply(GenStep(admit=(ids_task(rid, prompt, 1, ids, 64),)))
        while True:
            e.step()
            if not e.seqs:
                return
    for rid, ids in (("a", (1,)), ("d", (1,)), ("f", (1,)), ("c", (3,)), ("e", (3,)), ("b", (2,))):
        go(rid, ids)
    assert [e.pool.find((i,), 64).freq for i in (1, 2, 3)] == [3, 1, 2]
    e.apply(GenStep(admit=(ids_task("x", 16 * 9, 1, (), 16),)))  # 9 blocks: 4 with no content, 5 evicted
    e.step()
    assert [cached(e, (i,)) for i in (1, 2, 3)] == [4, 0, 3]
    assert e.pool.clock > 0  # the clock rose to the evicted prefix's priority
    lru = kv_engine(16, "lru")
    for rid, ids in (("a", (1,)), ("d", (1,)), ("f", (1,)), ("c", (3,)), ("e", (3,)), ("b", (2,))):
        lru.apply(GenStep(admit=(ids_task(rid, 65, 1, ids, 64),)))
        while True:
            lru.step()
            if not lru.seqs:
                break
    lru.apply(GenStep(admit=(ids_task("x", 16 * 9, 1, (), 16),)))
    lru.step()
    assert [cached(lru, (i,)) for i in (1, 2, 3)] == [0, 4, 3]


# --- random workloads ----------------------------------------------------------------------------

@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(tasks=tree_tasks, bt=st.sampled_from([8, 16, 24, 40]), spare=st.integers(0, 20),
       host=st.integers(0, 40), policy=st.sampled_from(["lru", "kvflow", "kvflow:no-prefetch", "ragcache"]),
       steps=st.lists(st.tuples(st.lists(st.integers(0, 2), min_size=1, max_size=4), st.integers(0, 4)),
                      max_size=6))
def test_kv_use_and_host_tier_within_capacity_after_every_step_and_every_prefetch_settled(
        tasks, bt, spare, host, policy, steps):
    """Random prompts from a tree of ids under memory pressure, with a host tier of random size:
    after every step the GPU pool and the host within capacity, the tree's invariants (no held
    block evicted); every request ends with its tokens; every prefetch used, wasted or cancelled."""
    block = 4
    rows = [(at, p, o, ids[: -(-p // bt)], bt) for at, p, o, ids in tasks]
    need = max(-(-(p + o) // block) for _, p, o, _, _ in rows)
    e = host_engine(need + spare, host + 1, policy, block_size=block, max_num_batched_tokens=32, max_num_seqs=4)
    kv_steps = tuple(((bt, *ids), s) for ids, s in steps)
    done: set = set()
    for n in range(3000):
        admit = tuple(ids_task(f"t{i}", p, o, ids, b) for i, (at, p, o, ids, b) in enumerate(rows) if at == n)
        _, res = step(e, admit, kv_steps if n % 5 == 0 else None)
        done.update(res.finished)
        assert not res.rejected
        if n > 31 and not e.seqs:
            break
    else:
        raise AssertionError("did not drain")
    assert done == {(f"t{i}", 0) for i in range(len(rows))}
    assert e.kv_used_blocks == 0 and e.pool.audit() == 0
    pf = e.kv_cache_report()["prefetches"]
    assert pf["issued"] == pf["used"] + pf["wasted"] + pf["cancelled"]
    if not policy.startswith("kvflow") or "no-prefetch" in policy:
        assert pf["issued"] == 0


# --- the simulator end to end ----------------------------------------------------------------------

def test_the_simulator_shows_copies_on_pcie_and_reports_them(tmp_path):
    from ragraph.policies import parse_policy
    from runs.run import simulate
    from traces.generate import TraceConfig, generate_trace, write_jsonl
    from traces.schema import load_trace

    d = PROFILE.model_dump()
    d["hardware"]["host_memory_gib"] = 1024.0
    d["engine"]["host_kv_gib"] = 64.0
    d["engine"]["kv_cache_gib"] = 4.0
    prof = Profile.model_validate(d)
    cfg = TraceConfig(("agent-chain",), 6.0, 1.0, 0, iterations=20, agent_tokens=(4096, 32, 16), agent_sets=6,
                      agent_count=5)  # 6 x 5 agents' fixed prompts: 123k tokens, the GPU holds 32k
    write_jsonl(generate_trace(cfg), tmp_path / "t.jsonl")
    reqs = load_trace(tmp_path / "t.jsonl")
    for kv in ("lru", "kvflow"):
        run = simulate(reqs, parse_policy("hedra"), prof, kv_policy=parse_kv_policy(kv))
        s, timeline = run.summary, run.result.timeline
        assert s["completed"] == s["requests"] == len(reqs)
        k = s["kv_cache"]
        assert k["bytes_copied_out"] > 0 and k["bytes_copied_in"] > 0 and k["host_blocks"] == prof.host_kv_blocks()
        names = {ev[1] for ev in timeline if ev[0] == "pcie"}
        assert "KVCopyOut" in names and names & {"KVLoad", "KVPrefetch"}
        copied = sum(ev[4]["bytes"] for ev in timeline if ev[0] == "pcie")
        assert copied == k["bytes_copied_out"] + k["bytes_copied_in"]
        pf = k["prefetches"]
        assert pf["issued"] == pf["used"] + pf["wasted"] + pf["cancelled"]
        if kv == "kvflow":
            assert pf["issued"] > 0


def test_engine_steps_folded_or_one_by_one_give_the_same_run_with_a_host_tier(tmp_path):
    from ragraph.policies import make_policy
    from sim.executor import Simulation
    from traces.generate import TraceConfig, generate_trace, write_jsonl
    from traces.schema import load_trace

    d = PROFILE.model_dump()
    d["hardware"]["host_memory_gib"] = 1024.0
    d["engine"].update(host_kv_gib=2.0, kv_cache_gib=2.0)  # 16k tokens each: the host full too
    latency = LatencyModel(Profile.model_validate(d))
    cfg = TraceConfig(("agent-branch",), 2.0, 4.0, 3, iterations=8, agent_tokens=(2048, 64, 48), agent_sets=5,
                      agent_count=4)
    write_jsonl(generate_trace(cfg), tmp_path / "t.jsonl")
    reqs = load_trace(tmp_path / "t.jsonl")
    for kv in ("lru", "kvflow", "ragcache"):
        runs = []
        for fold in (True, False):
            sim = Simulation(reqs, make_policy("hedra", latency), latency, kv_policy=parse_kv_policy(kv))
            sim.fold_steps = fold
            r = sim.run()
            runs.append(([(x.id, x.status, x.finish_s) for x in r.records], r.timeline, r.kv_cache))
        assert runs[0] == runs[1], kv
        assert runs[0][2]["host_evicted_blocks"] > 0 and runs[0][2]["bytes_copied_in"] > 0
