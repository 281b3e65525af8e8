"""The simulated engine behaves like vLLM's continuous batching."""

from __future__ import annotations

import pytest

from hwmodel.latency import LatencyModel, gen_step_s
from hwmodel.profile import load_profile
from ragraph.work import GenStep, GenTask
from sim.gen_engine import GenEngineModel

PROFILE = load_profile()


def engine(**engine_overrides) -> GenEngineModel:
    profile = PROFILE.model_copy(update={"engine": PROFILE.engine.model_copy(update=engine_overrides)})
    return GenEngineModel(LatencyModel(profile))


def task(rid: str, prompt: int, out: int, prefix: str = "", prefix_tokens: int = 0) -> GenTask:
    return GenTask((rid, 0), prompt, out, prefix, prefix_tokens)


def assert_blocks_add_up(e: GenEngineModel) -> None:
    """Blocks in use = blocks of admitted sequences + blocks of cached prefixes."""
    admitted = [s for s in e.seqs.values() if s not in e.waiting]
    assert e.kv_used_blocks == sum(s.blocks for s in admitted) + sum(p.blocks for p in e.prefixes.values())
    assert 0 <= e.kv_used_blocks <= e.total_blocks


def run_to_end(e: GenEngineModel, limit: int = 10_000) -> list[tuple[float, object]]:
    steps = []
    for _ in range(limit):
        seconds, res = e.step()
        assert_blocks_add_up(e)
        if not res.running:
            return steps
        steps.append((seconds, res))
    raise AssertionError("engine did not drain")


def test_chunked_prefill_then_exact_decode_count():
    e = engine(max_num_batched_tokens=8192)
    e.apply(GenStep(admit=(task("a", 10_000, 5),)))
    steps = run_to_end(e)
    assert [r.prefill_tokens for _, r in steps] == [8192, 1808, 0, 0, 0, 0]
    assert [r.decode_tokens for _, r in steps] == [0, 1, 1, 1, 1, 1]  # the prefill's last step samples token 1
    assert steps[-1][1].finished == (("a", 0),)
    assert all(not r.finished for _, r in steps[:-1])
    assert e.kv_used_blocks == 0


def test_step_time_follows_the_profile_model():
    e = engine()
    e.apply(GenStep(admit=(task("a", 100, 3), task("b", 50, 3))))
    (s1, _), (s2, _), *_ = run_to_end(e)
    assert s1 == pytest.approx(gen_step_s(PROFILE, 150, 0, 0))
    assert s2 == pytest.approx(gen_step_s(PROFILE, 0, 2, 152))  # 2 decodes over prompts + first tokens


def test_decodes_go_first_and_share_the_token_budget():
    e = engine(max_num_batched_tokens=100)
    e.apply(GenStep(admit=(task("a", 10, 50),)))
    e.step()
    e.apply(GenStep(admit=(task("b", 500, 2),)))
    _, r = e.step()
    assert r.decode_tokens == 1 and r.prefill_tokens == 99


def test_max_num_seqs_caps_the_running_batch():
    e = engine(max_num_seqs=4)
    e.apply(GenStep(admit=tuple(task(f"r{i}", 20, 10) for i in range(6))))
    _, r = e.step()
    assert r.running == 4 and r.waiting == 2


def test_kv_full_queues_and_capacity_is_never_exceeded():
    e = engine(gpu_memory_utilization=0.1895, activation_reserve_gib=0.0)  # ~0.12 GiB: ~63 blocks
    cap = e.total_blocks
    assert 40 < cap < 80
    e.apply(GenStep(admit=tuple(task(f"r{i}", 16 * 20 - 8, 8) for i in range(6))))  # 20 blocks each
    _, r = e.step()
    assert r.running == cap // 20 and r.waiting == 6 - cap // 20
    for _, res in run_to_end(e):
        assert res.kv_used_blocks <= cap


def test_sequences_larger_than_the_cache_are_rejected():
    e = engine(gpu_memory_utilization=0.1895, activation_reserve_gib=0.0)
    e.apply(GenStep(admit=(task("huge", 16 * 500, 10), task("ok", 64, 4))))
    _, r = e.step()
    assert [k for k, _ in r.rejected] == [("huge", 0)] and r.running == 1


def test_shared_prefix_is_computed_once_and_kept_after_use():
    e = engine()
    e.apply(GenStep(admit=(task("a", 200, 2, "wf/answer", 64),)))
    run_to_end(e)
    held = e.kv_used_blocks
    assert held == 4  # the prefix's 4 full blocks stay cached
    e.apply(GenStep(admit=(task("b", 200, 2, "wf/answer", 64),)))
    _, r = e.step()
    assert r.cached_prompt_tokens == 64 and r.prefill_tokens == 136


def test_abort_frees_the_sequence_and_drops_its_tokens():
    e = engine()
    e.apply(GenStep(admit=(task("a", 100, 50), task("b", 100, 3))))
    for _ in range(3):
        e.step()
    e.apply(GenStep(abort=(("a", 0),)))
    rest = run_to_end(e)
    assert all(("a", 0) not in r.finished for _, r in rest)
    assert e.kv_used_blocks == 0 and e.context == 0


def test_a_reused_prefix_is_not_evicted_to_make_room_for_its_own_user():
    e = engine(gpu_memory_utilization=0.1895, activation_reserve_gib=0.0)
    cap = e.total_blocks
    e.apply(GenStep(admit=(task("a", 64, 1, "wf/p", 64),)))  # P: least recently used
    run_to_end(e)
    e.apply(GenStep(admit=(task("d", 64, 1, "wf/q", 64),)))
    run_to_end(e)
    assert e.kv_used_blocks == 8  # two idle prefixes
    e.apply(GenStep(admit=(task("b", 16 * (cap - 3), 16, "wf/p", 64),)))  # needs room: Q must go, not P
    _, res = e.step()
    assert_blocks_add_up(e)
    assert res.cached_prompt_tokens == 64 and ("wf/p", 4) in e.prefixes and ("wf/q", 4) not in e.prefixes


def test_one_prefix_id_with_different_lengths_is_cached_separately():
    e = engine()
    e.apply(GenStep(admit=(task("a", 200, 2, "p", 160),)))
    run_to_end(e)
    e.apply(GenStep(admit=(task("b", 300, 2, "p", 16),)))  # same id, 1 block instead of 10
    _, res = e.step()
    assert_blocks_add_up(e)
    assert res.cached_prompt_tokens == 0 and set(e.prefixes) == {("p", 10), ("p", 1)}
    run_to_end(e)
