"""The scheduler core driven by hand: submit / next_work / complete with built results."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from ragraph.core import LaneBusy, Scheduler, SchedulerError
from ragraph.graph import Generate, Retrieve, chain
from ragraph.policies import PolicyError, make_policy, parse_policy
from ragraph.policies.base import Policy
from ragraph.policies.flashrag import FlashRAGPolicy
from ragraph.policies.hedra import HedraOptions, HedraPolicy
from ragraph.state import IllegalTransition, NodeEvent, NodeState, advance
from ragraph.work import CacheLoad, GenStep, GenStepResult, Lane, ScanTask, SearchBatch, SearchResult, embed_plan

ROOT = Path(__file__).resolve().parents[1]
BANNED = {"simpy", "vllm", "faiss", "torch", "threading", "time", "asyncio", "socket", "multiprocessing",
          "subprocess", "sentence_transformers", "sim", "backends", "calibration", "hwmodel", "traces", "experiments"}


class FlatCosts:
    """Every list holds 1000 vectors; a call costs 1 ms + 1 us per vector."""

    list_sizes = [1000] * 64
    embed_call_tokens = 35.0  # an embedding-model call costs as much as 35 padded tokens

    def search_s(self, queries: int, new_queries: int, pairs: int, scanned_vectors: int,
                 embed_max_tokens: int = 0, embed_tokens: int = 0, *, embed_calls: int | None = None,
                 embed_padded_tokens: int | None = None) -> float:
        return 1e-3 + 1e-6 * scanned_vectors

    def peak_decode_tokens_s(self) -> float:
        return 1e4


def hedra(costs, **options) -> HedraPolicy:
    """hedra with only the techniques a test names (reordering and speculation off)."""
    return HedraPolicy(HedraOptions(**{"reorder": False, "spec_gen": False, **options}), costs)


def one_shot(rid: str, t: float = 0.0, clusters: tuple[int, ...] = tuple(range(8))):
    return chain(rid, t, "one-shot", [Retrieve(len(clusters), 1, clusters), Generate(100, 5)])


def test_ragraph_imports_no_io_or_bodies():
    for path in (ROOT / "ragraph").rglob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module or ""] if isinstance(node, ast.ImportFrom) and node.level == 0 else [])
            for name in names:
                assert name.split(".")[0] not in BANNED, f"{path.name} imports {name}"
    out = subprocess.run([sys.executable, "-c", "import sys, ragraph.core, ragraph.policies, ragraph.workflows;"
                          "print(','.join(m for m in ('simpy','vllm','faiss','torch','numpy') if m in sys.modules))"],
                         capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.strip() == ""


def test_state_table_refuses_illegal_transitions():
    assert advance(NodeState.BLOCKED, NodeEvent.DEPS_DONE) is NodeState.READY
    with pytest.raises(IllegalTransition):
        advance(NodeState.DONE, NodeEvent.DISPATCH)
    with pytest.raises(IllegalTransition):
        advance(NodeState.READY, NodeEvent.CONFIRM)


def test_one_request_runs_retrieve_then_generate():
    s = Scheduler(FlashRAGPolicy())
    s.submit(one_shot("a"), 0.0)
    assert s.next_work(Lane.GPU_GEN, 0.0) is None  # nothing to generate before the retrieval
    batch = s.next_work(Lane.CPU_RETRIEVAL, 0.0)
    assert isinstance(batch, SearchBatch) and batch.tasks[0].clusters == tuple(range(8))
    assert batch.tasks[0].first and batch.tasks[0].last
    with pytest.raises(LaneBusy):
        s.next_work(Lane.CPU_RETRIEVAL, 0.0)
    s.complete(batch, SearchResult(), 0.01)
    step = s.next_work(Lane.GPU_GEN, 0.01)
    assert isinstance(step, GenStep) and [t.key for t in step.admit] == [("a", 1)]
    s.complete(step, GenStepResult(finished=(("a", 1),), running=1), 0.02)
    (rec,) = s.finished()
    assert rec.status == "completed" and rec.latency_s == pytest.approx(0.02)
    assert rec.clusters_searched == 8 and rec.substages == 1
    assert s.active == 0 and s.next_work(Lane.GPU_GEN, 0.03) is None


def test_complete_refuses_an_item_the_lane_does_not_hold():
    s = Scheduler(FlashRAGPolicy())
    s.submit(one_shot("a"), 0.0)
    with pytest.raises(SchedulerError):
        s.complete(GenStep(), GenStepResult(), 0.0)
    with pytest.raises(SchedulerError):
        s.submit(one_shot("a"), 0.0)


def test_hedra_splits_a_retrieval_into_substages_that_cover_its_clusters():
    policy = hedra(FlatCosts(), chunk=2, max_budget_ms=5.0)  # 1 ms + 4 lists x 1 ms fit
    s = Scheduler(policy)
    s.submit(one_shot("a", clusters=tuple(range(16))), 0.0)
    seen: list[int] = []
    t = 0.0
    while s.active and (batch := s.next_work(Lane.CPU_RETRIEVAL, t)) is not None:
        assert len(batch.tasks) == 1
        seen += batch.tasks[0].clusters
        t += 0.003
        s.complete(batch, SearchResult(), t)
    assert seen == list(range(16))
    node = s.requests["a"].nodes[0]
    assert node.substages == 4 and node.state is NodeState.DONE


def test_wavefront_lets_a_late_query_join_the_next_substage():
    for wavefront, joins in ((True, True), (False, False)):
        s = Scheduler(hedra(FlatCosts(), chunk=2, max_budget_ms=5.0, wavefront=wavefront, fill="round_robin"))
        s.submit(one_shot("a", clusters=tuple(range(16))), 0.0)
        first = s.next_work(Lane.CPU_RETRIEVAL, 0.0)
        s.submit(one_shot("b", clusters=tuple(range(16, 32))), 0.001)
        s.complete(first, SearchResult(), 0.004)
        second = s.next_work(Lane.CPU_RETRIEVAL, 0.004)
        assert any(t.key[0] == "b" for t in second.tasks) is joins


def test_fifo_fill_finishes_the_oldest_query_first():
    s = Scheduler(hedra(FlatCosts(), chunk=2, max_budget_ms=9.5, join_new=False))  # 8 lists a call
    s.submit(one_shot("a", clusters=tuple(range(12))), 0.0)
    s.submit(one_shot("b", clusters=tuple(range(12, 24))), 0.0)
    first = s.next_work(Lane.CPU_RETRIEVAL, 0.0)
    assert [(t.key[0], len(t.clusters)) for t in first.tasks] == [("a", 8)]
    s.complete(first, SearchResult(), 0.009)
    second = s.next_work(Lane.CPU_RETRIEVAL, 0.009)
    assert [(t.key[0], len(t.clusters), t.last) for t in second.tasks] == [("a", 4, True), ("b", 4, False)]


def test_waiting_new_queries_join_the_substage_up_to_max_queries():
    s = Scheduler(hedra(FlatCosts(), chunk=2, max_budget_ms=9.5, max_queries=3))  # 8 lists a call
    for i, name in enumerate("abcd"):
        s.submit(one_shot(name, clusters=tuple(range(12 * i, 12 * i + 12))), 0.0)
    first = s.next_work(Lane.CPU_RETRIEVAL, 0.0)
    assert [(t.key[0], len(t.clusters), t.first) for t in first.tasks] == [("a", 8, True), ("b", 1, True),
                                                                           ("c", 1, True)]
    s.complete(first, SearchResult(), 0.012)
    second = s.next_work(Lane.CPU_RETRIEVAL, 0.012)  # d starts now; b and c continue, the oldest first
    assert [(t.key[0], t.first) for t in second.tasks][-1] == ("d", True)
    assert [t.key[0] for t in second.tasks][:2] == ["a", "b"]


class SpeculateAfterFirstSubstage(HedraPolicy):
    """Test policy: start the Generate after the first sub-stage; keep it iff `keep`."""

    def __init__(self, keep: bool) -> None:
        super().__init__(HedraOptions(chunk=4, max_budget_ms=5.0, reorder=False, spec_gen=False), FlatCosts())
        self.keep = keep

    def on_search_progress(self, s, node, now):
        child = s.requests[node.key[0]].nodes[node.key[1] + 1]
        if child.state is NodeState.BLOCKED:
            s.speculate(child, now)

    def keep_speculation(self, s, node, now):
        return self.keep


@pytest.mark.parametrize("keep", [True, False])
def test_speculative_generation_is_confirmed_or_aborted(keep: bool):
    s = Scheduler(SpeculateAfterFirstSubstage(keep))
    s.submit(one_shot("a"), 0.0)
    b1 = s.next_work(Lane.CPU_RETRIEVAL, 0.0)
    assert not b1.tasks[0].last
    s.complete(b1, SearchResult(topk={("a", 0): (7,)}), 0.005)
    step = s.next_work(Lane.GPU_GEN, 0.005)
    assert step.admit[0].speculative and step.admit[0].key == ("a", 1)
    b2 = s.next_work(Lane.CPU_RETRIEVAL, 0.005)
    s.complete(step, GenStepResult(running=1), 0.006)
    s.complete(b2, SearchResult(topk={("a", 0): (7,)}), 0.01)  # retrieval done: resolve
    step2 = s.next_work(Lane.GPU_GEN, 0.01)
    if keep:
        assert step2.admit == () and step2.abort == ()
        s.complete(step2, GenStepResult(finished=(("a", 1),), running=1), 0.02)
        (rec,) = s.finished()
        assert rec.spec_started == 1 and rec.spec_aborted == 0
    else:
        assert step2.abort == (("a", 1),) and [t.key for t in step2.admit] == [("a", 1)]
        assert not step2.admit[0].speculative
        s.complete(step2, GenStepResult(finished=(("a", 1),), running=1), 0.02)
        (rec,) = s.finished()
        assert rec.spec_started == 1 and rec.spec_aborted == 1
    assert rec.status == "completed"


def test_engine_rejection_fails_the_request_with_its_reason():
    s = Scheduler(FlashRAGPolicy())
    s.submit(chain("a", 0.0, "x", [Generate(10, 5), Generate(10, 5)]), 0.0)
    step = s.next_work(Lane.GPU_GEN, 0.0)
    s.complete(step, GenStepResult(rejected=((("a", 0), "needs 9 KV blocks"),)), 0.0)
    (rec,) = s.finished()
    assert rec.status == "failed" and "KV" in rec.reason


def test_fail_item_fails_every_request_it_touched():
    s = Scheduler(FlashRAGPolicy())
    s.submit(one_shot("a"), 0.0)
    s.submit(one_shot("b"), 0.0)
    batch = s.next_work(Lane.CPU_RETRIEVAL, 0.0)
    s.fail_item(batch, "faiss raised", 0.1)
    assert {r.id: r.reason for r in s.finished()} == {"a": "faiss raised", "b": "faiss raised"}
    assert not s.busy(Lane.CPU_RETRIEVAL)


def test_policy_specs():
    choice = parse_policy("hedra:no-wavefront,substages=fixed,chunk=4,no-spec-gen")
    assert choice.name == "hedra"
    assert choice.options == HedraOptions(wavefront=False, substages="fixed", chunk=4, spec_gen=False)
    assert parse_policy("hedra:no-substages").resolved()["substages"] == "off"
    for bad in ("nosuch", "hedra:no-nosuch", "flashrag:no-wavefront", "hedra:substages=weird", "hedra:bogus=1"):
        with pytest.raises(PolicyError):
            make_policy(bad, FlatCosts())
    assert isinstance(make_policy("langchain", FlatCosts()), Policy)


def test_speculation_that_finished_first_completes_the_request_once():
    s = Scheduler(SpeculateAfterFirstSubstage(keep=True))
    s.submit(one_shot("a"), 0.0)
    b1 = s.next_work(Lane.CPU_RETRIEVAL, 0.0)
    s.complete(b1, SearchResult(), 0.005)
    step = s.next_work(Lane.GPU_GEN, 0.005)
    s.complete(step, GenStepResult(finished=(("a", 1),), running=1), 0.006)  # done before its input
    assert s.requests["a"].nodes[1].state is NodeState.SPEC_DONE
    b2 = s.next_work(Lane.CPU_RETRIEVAL, 0.006)
    s.complete(b2, SearchResult(), 0.01)  # the retrieval ends: the speculation is kept
    (rec,) = s.finished()
    assert rec.status == "completed" and rec.finish_s == 0.01 and s.active == 0


@pytest.mark.parametrize("spec", ["hedra:fill=round_robin,chunk=1.5", "hedra:wavefront=maybe", "flashrag:chunk=0",
                                  "flashrag:chunk=2.5", "hedra:budget_factor=inf", "hedra:max_queries=0",
                                  "hedra:min_budget_ms=50,max_budget_ms=10", "langchain:chunk=3"])
def test_policy_options_are_validated(spec):
    with pytest.raises(PolicyError, match=r"policy '\w+'"):
        make_policy(spec, FlatCosts())


def test_hedra_reprices_a_query_after_its_clusters_are_reordered():
    costs = FlatCosts()
    costs.list_sizes = [1000] * 8 + [9000] * 8  # lists 8..15 are nine times larger
    policy = hedra(costs, max_budget_ms=5.0)  # 1 ms + 4000 vectors
    s = Scheduler(policy)
    s.submit(one_shot("a", clusters=tuple(range(16))), 0.0)
    node = s.requests["a"].nodes[0]
    assert policy.substages.cumulative(node)[4] == 4000
    s.reorder(node, list(range(8, 16)) + list(range(8)))
    first = s.next_work(Lane.CPU_RETRIEVAL, 0.0)
    assert first.tasks[0].clusters == (8,)  # one big list fits the budget, not four small ones


def test_sort_remaining_is_a_stable_sort_of_the_undispatched_clusters():
    s = Scheduler(FlashRAGPolicy())
    s.submit(one_shot("a", clusters=(7, 3, 5, 0, 6, 2, 4, 1)), 0.0)
    node = s.requests["a"].nodes[0]
    s.sort_remaining(node, {0, 2, 5}.__contains__, reverse=True, seed=(9,))  # members first, each group in order
    assert node.order == (5, 0, 2, 7, 3, 6, 4, 1) and node.seed == (9,)
    s.take_clusters(node, 2)
    before = node.order
    s.sort_remaining(node, {2, 4}.__contains__)  # the members last; the dispatched (5, 0) stay
    assert node.order == (5, 0, 7, 3, 6, 1, 2, 4)
    s.sort_remaining(node, {2, 4}.__contains__)  # nothing moves: the order is not replaced
    assert node.order == (5, 0, 7, 3, 6, 1, 2, 4) and before is not node.order
    same = node.order
    s.sort_remaining(node, {2, 4}.__contains__)
    assert node.order is same
    with pytest.raises(SchedulerError, match="seed"):
        s.sort_remaining(node, abs, seed=(1,))  # a seed only before the first scan


def test_partition_remaining_is_sort_remaining_by_first_group():
    import random

    rng = random.Random(0)
    for trial in range(300):
        clusters = tuple(rng.sample(range(40), rng.randint(1, 30)))
        groups = [frozenset(rng.sample(range(40), rng.randint(0, 20))) for _ in range(rng.randint(0, 3))]
        taken = rng.randint(0, len(clusters) - 1)
        nodes = []
        for _ in range(2):
            s = Scheduler(FlashRAGPolicy())
            s.submit(one_shot("a", clusters=clusters), 0.0)
            node = s.requests["a"].nodes[0]
            if taken:
                s.take_clusters(node, taken)
            nodes.append((s, node, node.order))
        (s1, n1, o1), (s2, n2, o2) = nodes
        s1.partition_remaining(n1, groups)
        s2.sort_remaining(n2, lambda c, gs=groups: next((i for i, g in enumerate(gs) if c in g), len(gs)))
        assert n1.order == n2.order and (n1.order is o1) == (n2.order is o2), trial
    s = Scheduler(FlashRAGPolicy())
    s.submit(one_shot("a", clusters=(7, 3, 5, 0, 6, 2, 4, 1)), 0.0)
    node = s.requests["a"].nodes[0]
    s.partition_remaining(node, ({4, 9}, {4, 0, 1, 5}), seed=(9,))  # 4; then 5, 0, 1; then the rest in order
    assert node.order == (4, 5, 0, 1, 7, 3, 6, 2) and node.seed == (9,)
    s.take_clusters(node, 1)
    with pytest.raises(SchedulerError, match="seed"):
        s.partition_remaining(node, ({1},), seed=(1,))  # a seed only before the first scan


@pytest.mark.parametrize(("query", "question"), [("who wrote Hamlet", "ignored"), ("", "what is the Nile?"), ("", "")])
def test_embed_tokens_count_the_embedded_text_on_the_first_substage_only(query, question):
    from backends.retrieval import RetrievalService

    req = chain("a", 0.0, "one-shot", [Retrieve(16, 1, tuple(range(16)), query=query), Generate(100, 5)], question)
    s = Scheduler(hedra(FlatCosts(), chunk=2, max_budget_ms=5.0), text_tokens=lambda text: 100 + len(text))
    # 4 lists a call
    s.submit(req, 0.0)
    tasks: list[ScanTask] = []
    t = 0.0
    while s.active and (batch := s.next_work(Lane.CPU_RETRIEVAL, t)) is not None:
        tasks += batch.tasks
        t += 0.003
        s.complete(batch, SearchResult(), t)
    text = RetrievalService(None, None, [req])._text(("a", 0))  # type: ignore[arg-type]  # what the real body embeds
    assert text == (query or question)
    assert [t.embed_tokens for t in tasks] == [100 + len(text) if text else 0, 0, 0, 0]


def test_search_and_cache_items_count_their_timeline_args():
    sizes = [10, 20, 30]
    batch = SearchBatch((ScanTask(("a", 0), (0, 1), 1, True, False, 7), ScanTask(("b", 0), (2,), 1, False, True),
                         ScanTask(("c", 0), (1,), 1, True, True, 12)))
    assert batch.timeline_args(sizes) == {"queries": 3, "new_queries": 2, "clusters": 4, "vectors": 80,
                                          "embed_tokens": 19, "embed_max_tokens": 12, "speculative": 0,
                                          "embed_calls": 1, "embed_padded_tokens": 24}  # 7 and 12: one call
    assert CacheLoad((0, 2)).timeline_args(sizes) == {"clusters": 2, "vectors": 40}


def test_hedra_prices_a_substage_by_the_model_calls_the_bodies_embed_in():
    class RecordingCosts(FlatCosts):
        def __init__(self) -> None:
            self.priced: list[tuple[int, int | None, int | None]] = []

        def search_s(self, queries, new_queries, pairs, scanned_vectors, embed_max_tokens=0, embed_tokens=0,
                     *, embed_calls=None, embed_padded_tokens=None):
            self.priced.append((new_queries, embed_calls, embed_padded_tokens))
            return super().search_s(queries, new_queries, pairs, scanned_vectors)

    costs = RecordingCosts()
    s = Scheduler(hedra(costs, max_budget_ms=50.0, join_new=False), text_tokens=len)
    for name, text in (("a", "x" * 5), ("b", "y" * 400)):  # lengths apart: two model calls
        s.submit(chain(name, 0.0, "one-shot", [Retrieve(4, 1, (0, 1, 2, 3), query=text), Generate(100, 5)]), 0.0)
    batch = s.next_work(Lane.CPU_RETRIEVAL, 0.0)
    assert [t.embed_tokens for t in batch.tasks] == [5, 400]
    both = {(calls, padded) for new, calls, padded in costs.priced if new == 2}
    assert both == {embed_plan([5, 400], costs.embed_call_tokens)} == {(2, 405)}
    assert batch.features(costs.list_sizes)[-2:] == (2, 405)  # what the simulator then prices
