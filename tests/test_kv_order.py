"""kvflow's eviction order in real vLLM (`backends.kv_order`): a hand-built looping agent chain
on the tiny model with a KV cache small enough to evict, under lru and kvflow; the prompt
tokens vLLM serves from its prefix cache, request by request, against the simulator's engine
model replaying the same steps.

One engine for the module (tens of seconds to load); skipped without vLLM.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from ragraph.work import GenStep, GenTask

BLOCK = 128
BLOCKS = 14  # asked for; vLLM keeps one as its null block: 13 usable
MAX_MODEL_LEN = 1024  # vLLM refuses a max_model_len the cache cannot hold once
AGENTS = 3
PREFIX, PROMPT = 512, 640  # each agent: a 4-block fixed prompt + one block of its own, 2 output tokens


def agent_task(rid: str, k: int) -> GenTask:
    return GenTask((rid, 0), PROMPT, 2, "", 0, False, (100 + k,), PREFIX)


def steps_when(k: int) -> tuple[tuple[tuple[int, ...], int], ...]:
    """The core's kv_steps while agent k runs in a loop over the agents: k now, k+1 next, ..."""
    return tuple(((PREFIX, 100 + j), (j - k) % AGENTS) for j in range(AGENTS))


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    for mod in ("vllm", "torch", "transformers", "tokenizers"):
        pytest.importorskip(mod, reason=f"{mod} is not installed (pip install -e '.[real]'): real-engine tests skipped")
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from backends.tiny_model import make_tiny_model
    from backends.vllm_engine import VLLMEngine

    model = make_tiny_model(tmp_path_factory.mktemp("tiny") / "model")
    kv_bytes = BLOCKS * BLOCK * 2 * 2 * 4 * 64 * 2  # blocks x tokens x (K, V) x layers x kv heads x head dim x bf16
    e = VLLMEngine(model, device="cpu", kv_cache_gib=kv_bytes / (1 << 30), max_model_len=MAX_MODEL_LEN,
                   max_num_batched_tokens=2048, max_num_seqs=8)
    assert e.block_size == BLOCK and e.total_blocks == BLOCKS - 1
    yield e
    e.close()


def replay_real(e, kv_policy: str, calls: int) -> tuple[list[int], dict[str, int]]:
    """The looping chain on vLLM, one agent call at a time: prompt tokens from cache per call."""
    from ragraph.kvpolicy import parse_kv_policy

    assert e.reset_prefix_cache()
    e.set_kv_policy(parse_kv_policy(kv_policy))
    hits = []
    for i in range(calls):
        k = i % AGENTS
        e.apply(GenStep(admit=(agent_task(f"{kv_policy}{i}", k),), kv_steps=steps_when(k)))
        n = 0
        while e.has_unfinished():
            n += e.step().cached_prompt_tokens
        hits.append(n)
    return hits, e.kv_report()


def replay_sim(kv_policy: str, calls: int, blocks: int) -> list[int]:
    """The same calls on the simulator's engine model with `blocks` KV blocks."""
    from hwmodel.latency import LatencyModel
    from hwmodel.profile import load_profile
    from sim.gen_engine import GenEngineModel

    base = load_profile()
    per_block = base.model.kv_bytes_per_token * BLOCK
    engine = {**base.engine.model_dump(), "block_size": BLOCK, "max_model_len": MAX_MODEL_LEN,
              "max_num_seqs": 8, "kv_cache_gib": blocks * per_block / (1 << 30)}
    prof = type(base).model_validate({**base.model_dump(), "engine": engine})
    assert prof.kv_capacity_blocks() == blocks
    model = GenEngineModel(LatencyModel(prof), kv_policy.partition(":")[0])  # (no host tier: no prefetch)
    hits = []
    for i in range(calls):
        k = i % AGENTS
        model.apply(GenStep(admit=(agent_task(f"{kv_policy}{i}", k),), kv_steps=steps_when(k)))
        n = 0
        while model.seqs:
            n += model.step()[1].cached_prompt_tokens
        hits.append(n)
    return hits


CALLS = 9  # three rounds over the three agents
EVICT = "kvflow:no-prefetch"  # kvflow's eviction order alone


def test_kvflow_keeps_the_next_agents_prompt_where_lru_evicts_it(engine):
    lru, lru_kv = replay_real(engine, "lru", CALLS)
    kvflow, kvflow_kv = replay_real(engine, EVICT, CALLS)
    # three 4-block prompts plus a call's own 2 blocks exceed the 13 blocks: something is evicted each call
    assert lru[:AGENTS] == kvflow[:AGENTS] == [0] * AGENTS
    assert lru_kv["evicted_blocks"] > 0 and lru_kv["reordered_blocks"] == 0
    # LRU's queue evicts the least recently used prompt, which a loop calls next; kvflow evicts the
    # agent called last (largest steps to execution) and keeps the next one's prompt
    assert all(h < PREFIX for h in lru[AGENTS:])
    assert all(h >= PREFIX - BLOCK for h in kvflow[AGENTS:]) and sum(kvflow) > sum(lru)
    assert kvflow_kv["evicted_blocks"] < lru_kv["evicted_blocks"] and kvflow_kv["reordered_blocks"] > 0


def test_hit_tokens_per_request_agree_with_the_simulator(engine):
    for kv_policy in ("lru", EVICT):
        real, _ = replay_real(engine, kv_policy, CALLS)
        assert real == replay_sim(kv_policy, CALLS, engine.total_blocks), kv_policy


def test_the_free_queue_after_a_reorder_is_in_kvflows_order(engine):
    replay_real(engine, EVICT, AGENTS + 1)  # agent 0 ran last: agent 1 is next (1), agent 2 after (2)
    engine.apply(GenStep(kv_steps=steps_when(1)))
    engine._kv.reorder()
    ranks = [r for _, r in engine.kv_order()]
    seen = [r for r in ranks if r is not None]
    assert seen == sorted(seen, reverse=True) and seen[-1] == 0  # the largest steps evicted first
    first_ranked = next(i for i, r in enumerate(ranks) if r is not None)
    assert all(r is None for r in ranks[:first_ranked]) and all(r is not None for r in ranks[first_ranked:])


def test_lru_leaves_vllms_order_alone(engine):
    replay_real(engine, "lru", AGENTS + 1)
    before = [b for b, _ in engine.kv_order()]
    engine.apply(GenStep(kv_steps=steps_when(1)))
    assert engine._kv.reorder() == 0 and [b for b, _ in engine.kv_order()] == before


def test_kvflow_prefetch_warms_the_next_agents_prompt_and_settles_every_prefetch(engine):
    hits, kv = replay_real(engine, "kvflow:load_ahead=1", CALLS)
    assert kv["prefetches"] > 0 and kv["prefetch_tokens"] == kv["prefetches"] * PREFIX
    assert kv["prefetches_used"] + kv["prefetches_wasted"] == kv["prefetches"]
    assert kv["prefetches_used"] > 0
    assert hits[1] == PREFIX  # agent 1's prompt was warmed while agent 0 ran: its first call hits
    assert not engine.has_unfinished()  # no warm-up left behind


def test_modules_import_without_vllm():
    import subprocess
    import sys

    code = "import sys, backends.kv_order; sys.exit(1 if 'vllm' in sys.modules or 'torch' in sys.modules else 0)"
    root = Path(__file__).resolve().parents[1]
    assert subprocess.run([sys.executable, "-c", code], cwd=root, timeout=60).returncode == 0
