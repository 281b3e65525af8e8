"""Engine steps advanced together (`Simulation.fold_steps`) give exactly the step-by-step run."""

from __future__ import annotations

import pytest

from hwmodel.latency import LatencyModel
from hwmodel.profile import load_profile
from ragraph.core import Scheduler
from ragraph.graph import Generate, chain
from ragraph.kvpolicy import KVPolicy
from ragraph.policies import make_policy
from ragraph.policies.base import Policy
from ragraph.runtime import SchedulerError
from ragraph.work import GenStepResult, Lane, QuietRun
from ragraph.workflows import WorkflowRegistry
from sim.executor import Simulation
from traces.generate import TraceConfig, generate_trace
from traces.schema import TraceRequest, to_request

PROFILE = load_profile()
LATENCY = LatencyModel(PROFILE)


def requests(workflow: str, rate: float, duration: float = 8.0, seed: int = 3, nprobe: int = 256):
    registry = WorkflowRegistry()
    cfg = TraceConfig((workflow,), rate, duration, seed=seed, nlist=PROFILE.index.nlist, nprobe=nprobe)
    return [to_request(TraceRequest.model_validate(row), registry) for row in generate_trace(cfg, registry)]


# a profile whose steps also pay for the context beyond the caches, for the refill after a prefill and for
# the kernels of a step size not run lately (few sizes kept, so decode batch sizes miss too), and whose core
# takes longer after a step of more sequences
SPILLING = LatencyModel(PROFILE.model_copy(update={"gen_step": PROFILE.gen_step.model_copy(update={
    "context_spill_token_s": 2e-8, "context_cached_tokens": 3000, "refill_s": 1e-3, "refill_decay": 0.5,
    "kernel_s": 2e-3, "kernel_sizes": 6}), "dispatch": PROFILE.dispatch.model_copy(update={
    "gpu_gen_s": 1.5e-5, "gpu_gen_seq_s": 2e-6})}))


def simulate(reqs, policy: str, fold: bool, kv: str = "lru", latency: LatencyModel = LATENCY):
    sim = Simulation(reqs, make_policy(policy, latency), latency, kv_policy=KVPolicy(kv))
    sim.fold_steps = fold
    result = sim.run()
    steps = sim.sched._gen_steps
    return result, steps, sim.sched.gen_step_s, sim.sched.decode_tokens_s


@pytest.mark.parametrize(("workflow", "rate", "policy", "kv"), [
    ("gen-only", 0.5, "flashrag", "lru"),  # requests mostly alone: long runs of decode steps
    ("gen-only", 20.0, "langchain", "lru"),
    ("one-shot", 8.0, "hedra", "lru"),
    ("irg", 6.0, "hedra", "lru"),
    ("hyde", 10.0, "hedra:no-gpu-cache", "lru"),  # speculation watches generations
    ("multistep", 4.0, "flashrag", "lru"),
    ("agent-chain", 2.0, "hedra", "kvflow"),
    ("one-shot/512", 8.0, "hedra", "lru"),  # a wake-up starts a step and a GPU scan at one instant
    ("metis", 4.0, "ragserve", "lru"),  # syntheses configured at run time
])
def test_folded_steps_give_the_step_by_step_run(workflow, rate, policy, kv):
    name, _, nprobe = workflow.partition("/")
    reqs = requests(name, rate, 12.0, 1, int(nprobe)) if nprobe else requests(workflow, rate)
    folded, steps, ema, tokens_s = simulate(reqs, policy, True, kv)
    plain, steps0, ema0, tokens_s0 = simulate(reqs, policy, False, kv)
    assert folded.records == plain.records  # every time bit for bit, not only within a tolerance
    assert folded.timeline == plain.timeline  # one slice per engine step, in the same order
    assert (folded.sim_s, folded.lane_busy_s, folded.kv_peak_blocks, folded.techniques, folded.kv_cache) == \
        (plain.sim_s, plain.lane_busy_s, plain.kv_peak_blocks, plain.techniques, plain.kv_cache)
    assert (steps, ema, tokens_s) == (steps0, ema0, tokens_s0)  # the core saw every step


@pytest.mark.parametrize(("workflow", "rate", "policy"), [
    ("gen-only", 0.5, "flashrag"), ("one-shot", 8.0, "hedra"), ("irg", 6.0, "hedra")])
def test_folded_steps_pay_the_spill_refill_kernels_and_dispatch_as_steps_one_by_one(workflow, rate, policy):
    reqs = requests(workflow, rate)
    folded, plain = (simulate(reqs, policy, fold, latency=SPILLING)[0] for fold in (True, False))
    assert folded.records == plain.records and folded.timeline == plain.timeline
    assert folded.records != simulate(reqs, policy, True)[0].records  # (the terms change the run)


def test_sparse_requests_take_few_timeouts():
    """Requests alone in the engine: their decode steps, between admission and end, run as one."""
    reqs = [chain(f"r{i}", i * 1000.0, "g", [Generate(100, 200)]) for i in range(5)]
    sim = Simulation(reqs, make_policy("flashrag", LATENCY), LATENCY)
    calls = []
    original = sim.sched.complete_quiet
    sim.sched.complete_quiet = lambda item, run: calls.append(len(run.ends)) or original(item, run)
    result = sim.run()
    assert len([e for e in result.timeline if e[0] == "gpu_gen"]) == 5 * 200  # one slice per step
    assert calls and max(calls) >= 190 and len(calls) <= 10


def test_a_timeline_with_decode_runs_reads_as_its_list_of_slices():
    """Decode runs kept compact (sim.timeline) read as the slices one per step: iteration,
    length, indexing, equality, pickling as a plain list, and timeline.json's bytes."""
    import pickle

    import orjson

    from runs.outputs import chrome_trace, chrome_trace_chunks
    from sim.timeline import Timeline

    reqs = [chain(f"r{i}", i * 1000.0, "g", [Generate(100, 200)]) for i in range(3)]
    folded, *_ = simulate(reqs, "flashrag", True)
    plain, *_ = simulate(reqs, "flashrag", False)
    timeline, slices = folded.timeline, list(plain.timeline)
    assert isinstance(timeline, Timeline) and len(timeline._items) < len(slices) // 10  # runs kept compact
    assert len(timeline) == len(slices) and list(timeline) == slices and timeline == slices
    assert timeline.lanes() == {e[0] for e in slices} and timeline != slices[:-1]
    restored = pickle.loads(pickle.dumps(timeline))
    assert type(restored) is list and restored == slices
    assert timeline[7] == slices[7] and timeline[-3:] == slices[-3:]
    expected = orjson.dumps(chrome_trace(slices, {"gpu_gen": "engine"}))
    for chunk in (1, 7, 8192):
        assert b"".join(chrome_trace_chunks(folded.timeline, {"gpu_gen": "engine"}, chunk)) == expected
        assert b"".join(chrome_trace_chunks(iter(slices), {"gpu_gen": "engine"}, chunk)) == expected
    assert b"".join(chrome_trace_chunks([])) == orjson.dumps(chrome_trace([]))


def test_decode_step_terms_price_a_decode_step_bit_for_bit():
    for seqs in (1, 3, 64, 255):
        fixed, per_token = LATENCY.decode_step_terms(seqs)
        for context in (0, 1, 517, 10**6 + 3):
            assert fixed + per_token * context == LATENCY.gen_step_s(0, seqs, context)


class Holding(Policy):
    """Admits nothing while a generation runs, but does not say so (`holds_generations` False)."""

    name = "holding"

    def admit_generations(self, s, now):
        return [] if s.gen_in_engine else list(s.gen_ready.values())

    def plan_search(self, s, lane, now):
        return None


def test_complete_quiet_is_the_step_by_step_calls():
    def run(quiet: bool):
        sched = Scheduler(make_policy("hedra", LATENCY))
        sched.submit(chain("a", 0.0, "g", [Generate(10, 5)]), 0.0)
        item = sched.next_work(Lane.GPU_GEN, 0.0)
        ends = [0.1, 0.13, 0.2, 0.21]
        if quiet:
            assert sched.quiet_gen_steps() >= len(ends)
            item = sched.complete_quiet(item, QuietRun(ends, [1, 2, 2, 2], 7, 9, 1, 3))
        else:
            for t, tokens in zip(ends, [1, 2, 2, 2], strict=True):
                sched.complete(item, GenStepResult(running=2, decode_tokens=tokens, kv_used_blocks=7, kv_total_blocks=9,
                                                   waiting=1, aborted_tokens=3 if t == 0.1 else 0), t)
                item = sched.next_work(Lane.GPU_GEN, t)
        state = (sched._gen_steps, sched.gen_step_s, sched.decode_tokens_s, sched.kv_used_blocks,
                 sched.kv_total_blocks, sched.engine_waiting, sched.aborted_tokens)
        sched.complete(item, GenStepResult(finished=(("a", 0),), running=1, decode_tokens=1), 0.3)
        return state, sched.finished()[0].finish_s, sched.gen_step_s

    assert run(True) == run(False)


def test_complete_quiet_refuses_more_steps_than_allowed():
    sched = Scheduler(Holding())
    for i in range(2):
        sched.submit(chain(f"r{i}", 0.0, "g", [Generate(10, 5)]), 0.0)
    item = sched.next_work(Lane.GPU_GEN, 0.0)
    sched.submit(chain("late", 0.0, "g", [Generate(10, 5)]), 0.0)
    with pytest.raises(SchedulerError, match="allowed"):
        sched.complete_quiet(item, QuietRun([0.1], [2], 1, 9, 0))


def test_a_policy_that_may_admit_stops_the_fold():
    sched = Scheduler(Holding())
    for i in range(2):
        sched.submit(chain(f"r{i}", 0.0, "g", [Generate(10, 5)]), 0.0)
    sched.next_work(Lane.GPU_GEN, 0.0)  # admits both
    assert sched.quiet_gen_steps() > 0
    sched.submit(chain("late", 0.0, "g", [Generate(10, 5)]), 0.0)
    assert sched.quiet_gen_steps() == 0  # it waits; the policy did not say it holds it
