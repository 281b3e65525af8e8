"""Prefixes as trees of block ids (Mooncake's `hash_ids`) in the simulated engine's block pool."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ragraph.work import GenStep, GenTask
from sim.gen_engine import GenEngineModel
from tests.test_gen_engine import GeneralPathOnly, build, checked_step, engine, run_to_end, workloads


def ids_task(rid: str, prompt: int, out: int, ids: tuple[int, ...], block_tokens: int) -> GenTask:
    return GenTask((rid, 0), prompt, out, "", 0, False, ids, block_tokens)


def as_ids(w: dict) -> dict:
    """The same workload, each template prefix declared as a chain of ids of one engine block each."""
    b, tasks = w["block"], []
    for at, p, o, prefix, pt in w["tasks"]:
        n = min(pt, p) // b if prefix else 0
        base = {"p": 1000, "q": 2000}.get(prefix, 0)
        tasks.append((at, p, o, tuple(base + j for j in range(n)), b))
    return {**w, "tasks": tasks}


def drive_ids(e: GenEngineModel, w: dict) -> list[tuple]:
    out = []
    for step_no in range(2000):
        admit = []
        for i, (at, p, o, *pre) in enumerate(w["tasks"]):
            if at == step_no:
                admit.append(ids_task(f"t{i}", p, o, *pre) if isinstance(pre[0], tuple)
                             else GenTask((f"t{i}", 0), p, o, pre[0], pre[1]))
        abort = tuple((f"t{i}", 0) for at, i in w["aborts"] if at == step_no)
        e.apply(GenStep(tuple(admit), abort))
        seconds, r = checked_step(e)
        e.pool.audit()
        out.append((r.prefill_tokens, r.decode_tokens, r.context_tokens, r.running, r.preempted, r.waiting,
                    r.kv_used_blocks, r.finished, seconds, r.cached_prompt_tokens))
        if step_no > max(t[0] for t in w["tasks"]) + 40 and not r.running and not e.seqs:
            return out
    raise AssertionError("did not drain")


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(w=workloads)
def test_a_template_prefix_and_the_same_blocks_as_ids_run_identically(w):
    """One id per engine block, the ids of a template's blocks: every step the same (the tree
    walks one node per block where the template has one node)."""
    assert drive_ids(build(w, True), w) == drive_ids(build(w, True), as_ids(w))
    assert drive_ids(build(w, True, GeneralPathOnly), as_ids(w)) == drive_ids(build(w, True), as_ids(w))


def test_prompts_share_their_common_leading_ids_only():
    e = engine()  # block 16
    e.apply(GenStep(admit=(ids_task("a", 200, 2, (1, 2, 3), 32),)))
    run_to_end(e)
    e.apply(GenStep(admit=(ids_task("b", 200, 2, (1, 2, 9), 32),)))
    _, r = checked_step(e)
    assert r.cached_prompt_tokens == 64  # ids 1, 2: 2 x 32 tokens
    run_to_end(e)
    e.apply(GenStep(admit=(ids_task("c", 200, 2, (5, 2, 3), 32),)))  # same later ids under another first id
    _, r = checked_step(e)
    assert r.cached_prompt_tokens == 0


def test_an_engine_block_across_two_ids_belongs_to_the_later_one():
    e = engine()  # block 16; ids of 24 tokens: engine block 1 (tokens 16-31) ends in id 2's tokens
    e.apply(GenStep(admit=(ids_task("a", 100, 2, (1, 2, 3), 24),)))
    run_to_end(e)
    e.apply(GenStep(admit=(ids_task("b", 100, 2, (1, 7, 3), 24),)))
    _, r = checked_step(e)
    assert r.cached_prompt_tokens == 16
    run_to_end(e)
    e.apply(GenStep(admit=(ids_task("c", 100, 2, (1, 2, 8), 24),)))  # ids 1, 2 = tokens 0-47: blocks 0-2
    _, r = checked_step(e)
    assert r.cached_prompt_tokens == 48


def test_lru_evicts_a_branch_before_the_stem_it_shares():
    e = engine(blocks=14)  # block 16; ids of 32 tokens = 2 engine blocks
    e.apply(GenStep(admit=(ids_task("a", 96, 1, (1, 2, 3), 32),)))  # stem 1, branch 2 -> 3
    run_to_end(e)
    e.apply(GenStep(admit=(ids_task("b", 96, 1, (1, 4, 5), 32),)))  # stem 1, branch 4 -> 5
    run_to_end(e)
    pool = e.pool
    assert pool.cached_free == 10  # stem 2 blocks + 2 branches x 4 (the last id's last block is partial: 95 tokens)
    e.apply(GenStep(admit=(ids_task("c", 16 * 6, 1, (9,), 32),)))  # 6 blocks: 4 uncached, 2 evicted
    run_to_end(e)
    stem = pool.find((1,), 32)
    assert stem is not None and stem.cached == stem.end  # the shared stem stays
    assert pool.find((1, 2, 3), 32) is None  # the least recently used branch's tail went first, and was dropped
    assert pool.find((1, 2), 32) is not None and pool.find((1, 4, 5), 32).cached == 6


tree_tasks = st.lists(st.tuples(
    st.integers(0, 30),  # arrival step
    st.integers(1, 120),  # prompt tokens
    st.integers(1, 20),  # output tokens
    st.lists(st.integers(0, 2), min_size=0, max_size=6).map(tuple),  # ids from a 3-way tree
), min_size=1, max_size=14)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(tasks=tree_tasks, bt=st.sampled_from([8, 16, 24, 40]), block=st.sampled_from([4, 16]),
       spare=st.integers(0, 30), aborts=st.lists(st.tuples(st.integers(0, 40), st.integers(0, 13)), max_size=3))
def test_kv_use_stays_within_capacity_and_no_held_block_is_evicted(tasks, bt, block, spare, aborts):
    """Random prompts from a tree of ids under memory pressure: after every step KV use is
    within capacity, equals a recount from the sequences, and the tree's invariants hold
    (held <= cached within a node: a held block is never evicted; a node caches only below a
    wholly cached parent)."""
    rows = [(at, p, o, ids[: -(-p // bt)], bt) for at, p, o, ids in tasks]
    w = {"block": block, "budget": 32, "seqs": 4, "spare": spare,
         "tasks": [(at, p, o, "", 0) for at, p, o, *_ in rows], "aborts": aborts}
    e = build(w, True)
    w["tasks"] = rows
    got = drive_ids(e, w)
    done = {k for r in got for k in r[7]}
    aborted = {(f"t{i}", 0) for _, i in aborts}
    assert {(f"t{i}", 0) for i in range(len(rows))} - done <= aborted
    assert e.kv_used_blocks == 0 and e.pool.audit() == 0


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(tasks=tree_tasks, bt=st.sampled_from([8, 16, 24, 40]))
def test_one_at_a_time_with_room_each_prompt_hits_its_longest_common_prefix(tasks, bt):
    """vLLM's hashing: with nothing evicted, a prompt's hit is the engine blocks inside the
    longest run of leading ids it shares with an earlier prompt (capped by both prompts' full
    declared blocks, and by its own length - 1)."""
    e = engine(block_size=16)
    seen: list[tuple[tuple[int, ...], int]] = []
    for i, (_, p, o, ids) in enumerate(tasks):
        ids = ids[: -(-p // bt)]
        kp = min(len(ids) * bt, p) // 16
        want = 0
        for other, okp in seen:
            m = 0
            while m < min(len(ids), len(other)) and ids[m] == other[m]:
                m += 1
            want = max(want, min(m * bt // 16, kp, okp, (p - 1) // 16))
        e.apply(GenStep(admit=(ids_task(f"t{i}", p, o, ids, bt),)))
        steps = run_to_end(e)
        e.pool.audit()
        assert sum(r.cached_prompt_tokens for r in steps) == want * 16
        seen.append((ids, kp))
