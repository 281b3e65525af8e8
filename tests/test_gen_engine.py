"""The simulated engine schedules as vLLM V1 does (`vllm/v1/core/sched/scheduler.py`)."""

from __future__ import annotations

import math
from collections import deque

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hwmodel.latency import LatencyModel, gen_step_s
from hwmodel.profile import GIB, Profile, load_profile
from ragraph.work import GenStep, GenStepResult, GenTask
from sim.gen_engine import GenEngineModel

PROFILE = load_profile()
KV_BYTES_PER_TOKEN = PROFILE.model.kv_bytes_per_token


def profile_with(**engine: object) -> Profile:
    """The default profile with engine settings replaced, validated as a profile file would be."""
    return Profile.model_validate({**PROFILE.model_dump(), "engine": {**PROFILE.engine.model_dump(), **engine}})


def engine(blocks: int | None = None, block_size: int = 16, **settings_: object) -> GenEngineModel:
    """An engine model; `blocks`: a KV cache of exactly that many blocks (through kv_cache_gib)."""
    if blocks is not None:
        settings_["kv_cache_gib"] = blocks * block_size * KV_BYTES_PER_TOKEN / GIB
    e = GenEngineModel(LatencyModel(profile_with(block_size=block_size, **settings_)))
    assert blocks is None or e.total_blocks == blocks
    return e


def task(rid: str, prompt: int, out: int, prefix: str = "", prefix_tokens: int = 0) -> GenTask:
    return GenTask((rid, 0), prompt, out, prefix, prefix_tokens)


def checked_step(e: GenEngineModel) -> tuple[float, GenStepResult]:
    seconds, res = e.step()
    assert e.kv_used_blocks == e.audit_blocks() == res.kv_used_blocks
    assert 0 <= res.kv_used_blocks <= e.total_blocks
    assert res.kv_block_tokens == e.block  # free KV memory in tokens: the scheduler's view
    return seconds, res


def run_to_end(e: GenEngineModel, limit: int = 10_000) -> list[GenStepResult]:
    steps = []
    for _ in range(limit):
        _, res = checked_step(e)
        assert not res.rejected
        if not res.running:
            assert not e.seqs and e.kv_used_blocks == 0
            return steps
        steps.append(res)
    raise AssertionError("engine did not drain")


# --- the step ---------------------------------------------------------------------------------

def test_chunked_prefill_then_exact_decode_count():
    e = engine(max_num_batched_tokens=8192, max_model_len=16_384)
    e.apply(GenStep(admit=(task("a", 10_000, 5),)))
    steps = run_to_end(e)
    assert [r.prefill_tokens for r in steps] == [8192, 1808, 0, 0, 0, 0]
    assert [r.decode_tokens for r in steps] == [0, 1, 1, 1, 1, 1]  # the prefill's last step samples token 1
    assert [r.context_tokens for r in steps] == [0, 8192, 10_000, 10_001, 10_002, 10_003]
    assert [r.finished for r in steps] == [()] * 5 + [(("a", 0),)]


def test_step_time_reads_the_context_of_the_scheduled_sequences():
    e = engine()
    e.apply(GenStep(admit=(task("a", 100, 3), task("b", 50, 3))))
    first, second = checked_step(e), checked_step(e)
    assert first[0] == pytest.approx(gen_step_s(PROFILE, 150, 2, 0))
    assert second[1].context_tokens == 150  # prompts computed; the sampled first tokens are computed now
    assert second[0] == pytest.approx(gen_step_s(PROFILE, 0, 2, 150))


def test_running_sequences_come_first_and_share_the_token_budget():
    e = engine(max_num_batched_tokens=100, max_num_seqs=8)
    e.apply(GenStep(admit=(task("a", 10, 50),)))
    checked_step(e)
    e.apply(GenStep(admit=(task("b", 500, 2),)))
    _, r = checked_step(e)
    assert (r.decode_tokens, r.prefill_tokens, r.context_tokens) == (1, 99, 10)


def test_max_num_seqs_caps_the_running_batch():
    e = engine(max_num_seqs=4)
    e.apply(GenStep(admit=tuple(task(f"r{i}", 20, 10) for i in range(6))))
    _, r = checked_step(e)
    assert r.running == 4 and r.waiting == 2


# --- KV pressure: preemption (recompute) ------------------------------------------------------

HAND = dict(block_size=4, max_num_batched_tokens=16, max_num_seqs=4)
# Derived by hand from vLLM's rules; blocks of 4 tokens, 4 blocks, A(7+4), B(5+4), C(2+1) before step 3.
# 1: A, B admitted (2 + 2 blocks), both prefills sample their first token.
# 2: both decode (A 7->8, B 5->6 tokens): no block needed.
# 3: A needs a 3rd block, none free: the LAST running sequence, B, is preempted (2 blocks freed,
#    generated 2); A decodes. C would fit now but nothing is admitted in a step that preempted.
# 4: A decodes and ends (its 3 blocks free after the step). B heads the queue: its 5 + 2 tokens
#    need 2 blocks, 1 is free: B waits and C waits behind it (first come, first served).
# 5: B (7 tokens to recompute, cache off) and C (2) are admitted; C's prefill samples its only token.
# 6: B decodes its 4th token and ends.
HAND_STEPS = [  # prefill, sampled, context, scheduled, preempted, waiting, kv used, finished
    (12, 2, 0, 2, 0, 0, 4, set()),
    (0, 2, 12, 2, 0, 0, 4, set()),
    (0, 1, 8, 1, 1, 2, 3, set()),
    (0, 1, 9, 1, 0, 2, 0, {"A"}),
    (9, 2, 0, 2, 0, 0, 2, {"C"}),
    (0, 1, 7, 1, 0, 0, 0, {"B"}),
]


@pytest.mark.parametrize("caching", [False, True])
def test_hand_computed_preemption_scenario(caching):
    e = engine(blocks=4, enable_prefix_caching=caching, **HAND)
    e.apply(GenStep(admit=(task("A", 7, 4), task("B", 5, 4))))
    expected = [list(s) for s in HAND_STEPS]
    if caching:  # B's first block (tokens 0-3) stayed cached after the preemption: 3 tokens to recompute
        expected[4][0], expected[4][2] = 3 + 2, 4
    for i, (prefill, sampled, context, running, preempted, waiting, kv, finished) in enumerate(expected):
        if i == 2:
            e.apply(GenStep(admit=(task("C", 2, 1),)))
        seconds, r = checked_step(e)
        got = (r.prefill_tokens, r.decode_tokens, r.context_tokens, r.running, r.preempted, r.waiting,
               r.kv_used_blocks, {k[0] for k in r.finished})
        assert got == (prefill, sampled, context, running, preempted, waiting, kv, finished), f"step {i + 1}"
        assert seconds == pytest.approx(gen_step_s(e.latency.profile, prefill, running, context))
        assert r.cached_prompt_tokens == 0
    assert not e.seqs and e.step()[1].running == 0


def test_kv_full_preempts_and_every_sequence_still_ends_with_its_tokens():
    e = engine(blocks=40, enable_prefix_caching=False)
    tasks = [task(f"r{i}", 16 * 6 - 4, 60) for i in range(8)]  # 6 blocks of prompt, 10 when done
    e.apply(GenStep(admit=tuple(tasks)))
    steps = run_to_end(e)
    assert sum(r.preempted for r in steps) > 0
    assert any(r.waiting for r in steps)
    assert sorted(k for r in steps for k in r.finished) == sorted(t.key for t in tasks)  # each ends once
    assert sum(r.decode_tokens for r in steps) == sum(t.output_tokens for t in tasks)  # exactly its tokens
    recomputed = sum(r.prefill_tokens for r in steps) - sum(t.prompt_tokens for t in tasks)
    assert recomputed > 0  # prompts and generated tokens computed again after preemptions
    assert max(r.kv_used_blocks for r in steps) == 40


def test_sequences_larger_than_the_cache_or_max_model_len_are_rejected():
    e = engine(blocks=70, max_model_len=2048)
    e.apply(GenStep(admit=(task("huge", 16 * 71, 10), task("long", 1900, 149), task("ok", 1000, 100))))
    _, r = checked_step(e)
    reasons = dict(r.rejected)
    assert set(reasons) == {("huge", 0), ("long", 0)} and r.running == 1
    assert "needs 72 KV blocks" in reasons[("huge", 0)]
    assert "2049 tokens > max_model_len 2048" in reasons[("long", 0)]


def test_a_sequence_is_admitted_only_when_its_whole_length_fits():
    e = engine(blocks=10, max_num_batched_tokens=128, max_num_seqs=4)
    e.apply(GenStep(admit=(task("a", 16 * 6, 8), task("b", 16 * 5, 8))))  # b's 32-token chunk would fit, b not
    _, r = checked_step(e)
    assert (r.running, r.waiting, r.prefill_tokens) == (1, 1, 96)


# --- prefix caching ---------------------------------------------------------------------------

def test_shared_prefix_is_computed_once_and_kept_after_use():
    e = engine()
    e.apply(GenStep(admit=(task("a", 200, 2, "wf/answer", 64),)))
    run_to_end(e)
    assert e.kv_used_blocks == 0  # cached blocks nobody holds count as free, as in vLLM
    e.apply(GenStep(admit=(task("b", 200, 2, "wf/answer", 64),)))
    _, r = checked_step(e)
    assert (r.cached_prompt_tokens, r.prefill_tokens, r.context_tokens) == (64, 136, 64)


def test_sequences_admitted_together_share_the_prefix_computed_in_that_step():
    e = engine()
    e.apply(GenStep(admit=(task("a", 100, 2, "wf", 64), task("b", 100, 2, "wf", 64))))
    _, r = checked_step(e)
    assert (r.prefill_tokens, r.cached_prompt_tokens) == (100 + 36, 64)
    assert r.kv_used_blocks == 4 + 2 * 3  # 4 shared prefix blocks, 3 own blocks each


def test_prefix_caching_off_gives_no_cached_tokens():
    e = engine(enable_prefix_caching=False)
    for rid in ("a", "b"):
        e.apply(GenStep(admit=(task(rid, 200, 2, "wf/answer", 64),)))
        steps = run_to_end(e)
        assert sum(r.cached_prompt_tokens for r in steps) == 0 and steps[0].prefill_tokens == 200
        assert e.pool.cached_free == 0 and e.pool.anon == e.total_blocks


def test_blocks_are_shared_by_content_across_prefix_lengths():
    e = engine()
    e.apply(GenStep(admit=(task("a", 200, 2, "p", 160),)))
    run_to_end(e)
    e.apply(GenStep(admit=(task("b", 300, 2, "p", 16), task("c", 300, 2, "p", 40))))
    _, r = checked_step(e)
    assert r.cached_prompt_tokens == 16 + 32  # the prefix's full blocks: 1 for b, 2 for c


def test_a_reused_prefix_is_taken_before_blocks_are_evicted():
    e = engine(blocks=63)
    e.apply(GenStep(admit=(task("a", 64, 1, "wf/p", 64),)))  # P: least recently used
    run_to_end(e)
    e.apply(GenStep(admit=(task("d", 64, 1, "wf/q", 64),)))
    run_to_end(e)
    assert e.pool.cached_free == 8  # two idle prefixes, 4 blocks each
    e.apply(GenStep(admit=(task("b", 16 * 60, 16, "wf/p", 64),)))  # needs one block more than the uncached ones
    _, r = checked_step(e)
    assert r.cached_prompt_tokens == 64
    assert e.pool.chains["wf/p"].cached == 4 and e.pool.chains["wf/q"].cached == 3  # Q's last block evicted, not P


def test_abort_frees_the_sequence():
    e = engine()
    e.apply(GenStep(admit=(task("a", 100, 50), task("b", 100, 6))))
    for _ in range(3):
        checked_step(e)
    e.apply(GenStep(abort=(("a", 0), ("nobody", 0))))
    rest = run_to_end(e)
    assert [r.running for r in rest] == [1, 1, 1] and rest[-1].finished == (("b", 0),)
    assert all(("a", 0) not in r.finished for r in rest)


def test_a_key_already_in_the_engine_cannot_be_admitted_again():
    e = engine()
    e.apply(GenStep(admit=(task("a", 10, 5),)))
    with pytest.raises(ValueError, match="already in the engine"):
        e.apply(GenStep(admit=(task("a", 10, 5),)))
    e.apply(GenStep(abort=(("a", 0),), admit=(task("a", 12, 5),)))  # an aborted speculation runs again
    assert [k for r in run_to_end(e) for k in r.finished] == [("a", 0)]


# --- the engine configuration -----------------------------------------------------------------

def test_kv_capacity_from_an_explicit_size_or_from_gpu_memory():
    block_bytes = KV_BYTES_PER_TOKEN * PROFILE.engine.block_size
    assert profile_with(kv_cache_gib=1.0).kv_capacity_blocks() == GIB // block_bytes
    e = PROFILE.engine
    free = PROFILE.hardware.gpu_memory_gib * e.gpu_memory_utilization - PROFILE.model.weights_gib \
        - e.activation_reserve_gib - e.index_cache_gib
    assert PROFILE.kv_capacity_blocks() == int(free * GIB // block_bytes)


@pytest.mark.parametrize(("settings_", "message"), [
    ({"max_num_batched_tokens": 100, "max_num_seqs": 256}, "max_num_batched_tokens must be >= max_num_seqs"),
    ({"kv_cache_gib": 0.001}, "smaller than one KV block"),
    ({"max_model_len": 0}, "greater than 0"),
])
def test_engine_settings_vllm_would_refuse_are_refused(settings_, message):
    with pytest.raises(ValueError, match=message):
        profile_with(**settings_)


# --- against a plain reimplementation of vLLM's rules, on random workloads ----------------------

class Reference:
    """vLLM's schedule(), cache off, written plainly: per-sequence block counts, lists, no tricks."""

    def __init__(self, block: int, budget: int, max_seqs: int, blocks: int) -> None:
        self.block, self.budget, self.max_seqs, self.free = block, budget, max_seqs, blocks
        self.seqs: dict[str, list[int]] = {}  # key -> [prompt, output, computed, generated, held blocks]
        self.running: list[str] = []
        self.waiting: deque[str] = deque()

    def apply(self, admit: list[GenTask], abort: list[str]) -> None:
        for key in abort:
            if key in self.seqs:
                self.free += self.seqs.pop(key)[4]
                (self.running if key in self.running else self.waiting).remove(key)
        for t in admit:
            self.seqs[t.key[0]] = [t.prompt_tokens, t.output_tokens, 0, 0, 0]
            self.waiting.append(t.key[0])

    def step(self) -> tuple:
        budget, preempted, chunks, i = self.budget, 0, [], 0
        while i < len(self.running) and budget > 0:
            s = self.seqs[self.running[i]]
            n = min(s[0] + s[3] - s[2], budget)
            need = math.ceil((s[2] + n) / self.block) - s[4]
            while need > self.free and i < len(self.running):
                victim = self.seqs[self.running[-1]]
                self.free, victim[2], victim[4] = self.free + victim[4], 0, 0
                self.waiting.appendleft(self.running.pop())
                preempted += 1
            if i == len(self.running):
                break
            s[4], self.free, budget = s[4] + need, self.free - need, budget - n
            chunks.append((self.running[i], s[2], n))
            i += 1
        while not preempted and budget > 0 and self.waiting and len(self.running) < self.max_seqs:
            s = self.seqs[self.waiting[0]]
            if math.ceil((s[0] + s[3]) / self.block) > self.free:
                break
            n = min(s[0] + s[3], budget)
            s[4] = math.ceil(n / self.block)
            self.free, budget = self.free - s[4], budget - n
            self.running.append(self.waiting.popleft())
            chunks.append((self.running[-1], 0, n))
        return self._advance(chunks, preempted)

    def _advance(self, chunks: list, preempted: int) -> tuple:
        prefill = sampled = context = 0
        finished = set()
        for key, c, n in chunks:
            s = self.seqs[key]
            length = s[0] + s[3]
            prefill += 0 if s[3] and c == length - 1 else n
            context += c
            s[2] = c + n
            if s[2] == length:
                sampled += 1
                s[3] += 1
                if s[3] == s[1]:
                    finished.add(key)
                    self.running.remove(key)
                    self.free += self.seqs.pop(key)[4]
        used = sum(s[4] for s in self.seqs.values())
        return prefill, sampled, context, len(chunks), preempted, len(self.waiting), used, finished


class GeneralPathOnly(GenEngineModel):
    """The engine model with its decode-only fast path switched off."""

    fast_path = False


workloads = st.fixed_dictionaries({
    "block": st.sampled_from([1, 2, 4, 16]),
    "budget": st.integers(4, 48),
    "seqs": st.integers(1, 8),
    "spare": st.integers(0, 40),
    "tasks": st.lists(st.tuples(st.integers(0, 30), st.integers(1, 60), st.integers(1, 30),
                                st.sampled_from(["", "p", "q"]), st.integers(0, 40)), min_size=1, max_size=12),
    "aborts": st.lists(st.tuples(st.integers(0, 40), st.integers(0, 11)), max_size=3),
})


def build(w: dict, caching: bool, cls: type[GenEngineModel] = GenEngineModel) -> GenEngineModel:
    need = max(math.ceil((p + o) / w["block"]) for _, p, o, _, _ in w["tasks"])
    blocks = need + w["spare"]
    gib = blocks * w["block"] * KV_BYTES_PER_TOKEN / GIB
    profile = profile_with(block_size=w["block"], max_num_batched_tokens=w["budget"],
                           max_num_seqs=min(w["seqs"], w["budget"]), kv_cache_gib=gib,
                           enable_prefix_caching=caching)
    return cls(LatencyModel(profile))


def drive(e: GenEngineModel | Reference, w: dict) -> list[tuple]:
    """Step through a workload: task i joins before step `arrival`, aborts as listed."""
    out = []
    for step_no in range(2000):
        admit = [GenTask((f"t{i}", 0), p, o, prefix, pt) for i, (at, p, o, prefix, pt) in enumerate(w["tasks"])
                 if at == step_no]
        abort = [f"t{i}" for at, i in w["aborts"] if at == step_no]
        if isinstance(e, Reference):
            e.apply(admit, abort)
            res = e.step()
        else:
            e.apply(GenStep(tuple(admit), tuple((k, 0) for k in abort)))
            before = {s.task.key for s in e.running}
            seconds, r = checked_step(e)
            admitted = ({s.task.key for s in e.running} | set(r.finished)) - before
            assert not (r.preempted and admitted), "a step that preempted admitted a sequence"
            res = (r.prefill_tokens, r.decode_tokens, r.context_tokens, r.running, r.preempted, r.waiting,
                   r.kv_used_blocks, {k[0] for k in r.finished}, seconds, r.cached_prompt_tokens)
        out.append(res)
        if step_no > max(at for at, *_ in w["tasks"]) + 40 and not res[3] and not e.seqs:
            return out
    raise AssertionError("did not drain")


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(w=workloads)
def test_matches_a_plain_reference_step_by_step_with_caching_off(w):
    expected = drive(Reference(w["block"], w["budget"], min(w["seqs"], w["budget"]), build(w, False).total_blocks), w)
    got = drive(build(w, False), w)
    assert [g[:8] for g in got] == expected


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(w=workloads)
def test_the_decode_fast_path_changes_nothing_and_tokens_add_up(w):
    got = drive(build(w, True), w)
    assert got == drive(build(w, True, GeneralPathOnly), w)
    aborted = {f"t{i}" for _, i in w["aborts"] if i < len(w["tasks"])}
    done = [k for r in got for k in r[7]]
    assert len(done) == len(set(done))  # each ends once
    assert {f"t{i}" for i in range(len(w["tasks"]))} - set(done) <= aborted  # the others all end
    if not aborted:
        assert sum(r[1] for r in got) == sum(o for _, _, o, _, _ in w["tasks"])  # exactly their tokens
        if not any(r[4] for r in got):  # no preemption: each prompt computed once, partly from the cache
            assert sum(r[0] + r[9] for r in got) == sum(p for _, p, _, _, _ in w["tasks"])
