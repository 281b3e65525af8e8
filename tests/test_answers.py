"""Real text through a replay (backends/answers.py), without engines: prompts from the question
and the retrieved passages, follow-up queries from what the model generated, answers scored."""

from __future__ import annotations

import json

import pytest

from backends.answers import AnswerFlow
from backends.models import answers_text, check_model, resolve_model
from ragraph.graph import Generate, Retrieve, chain
from ragraph.records import RequestRecord
from ragraph.work import GenStep, GenStepResult, GenTask, ScanTask, SearchBatch


class _Node:
    def __init__(self, topk=()):
        self.topk = tuple(topk)


class _Run:
    def __init__(self, n, topks):
        self.nodes = [_Node(topks.get(i, ())) for i in range(n)]


class _Sched:
    def __init__(self, runs):
        self.requests = runs


def irg(rid="q1", answers=("Paris",)):
    nodes = [Retrieve(4, 5, (0, 1, 2, 3), query="trace query"), Generate(100, 32),
             Retrieve(4, 5, (0, 1, 2, 3), query="trace follow-up"), Generate(100, 32)]
    req = chain(rid, 0.0, "irg", nodes, question="What is the capital of France?")
    from dataclasses import replace

    return replace(req, answers=tuple(answers))


def passage(pid: int) -> str:
    return f'"Title {pid}"\npassage text {pid}'


def task(key, prompt=100, out=32):
    return GenTask(key, prompt, out, "", 0)


def test_prompts_carry_question_and_found_passages():
    req = irg()
    flow = AnswerFlow([req], passage, passages_per_prompt=2)
    sched = _Sched({"q1": _Run(4, {0: (7, 3, 9)})})
    prompts = flow.prompts(GenStep(admit=(task(("q1", 1)),)), sched)
    assert prompts is not None
    text = prompts[("q1", 1)][0]["content"]
    assert "What is the capital of France?" in text
    assert "passage text 7" in text and "passage text 3" in text and "passage text 9" not in text  # best 2
    assert "Notes so far" not in text  # no generation before it


def test_follow_up_query_and_prompt_use_the_generated_text():
    req = irg()
    flow = AnswerFlow([req], passage)
    first = SearchBatch((ScanTask(("q1", 0), (0,), 5, True, True),))
    assert flow.queries(first) is None  # no generation before it: the trace's query stands
    flow.record(GenStepResult(finished=(("q1", 1),), texts=((("q1", 1), "Paris is the capital"),)))
    follow = SearchBatch((ScanTask(("q1", 2), (0,), 5, True, False),))
    assert flow.queries(follow) == {("q1", 2): "What is the capital of France? Paris is the capital"}
    later = SearchBatch((ScanTask(("q1", 2), (1,), 5, False, True),))
    assert flow.queries(later) is None  # only a first sub-stage embeds
    sched = _Sched({"q1": _Run(4, {2: (4,)})})
    text = flow.prompts(GenStep(admit=(task(("q1", 3)),)), sched)[("q1", 3)][0]["content"]
    assert "Notes so far: Paris is the capital" in text and "passage text 4" in text


def test_requests_without_a_question_keep_synthetic_prompts():
    req = chain("s", 0.0, "one-shot", [Retrieve(4, 5, (0, 1, 2, 3)), Generate(10, 4)])
    flow = AnswerFlow([req], passage)
    assert flow.prompts(GenStep(admit=(task(("s", 1)),)), _Sched({"s": _Run(2, {})})) is None


def _record(rid, status="completed"):
    return RequestRecord(rid, "irg", "hedra", status, "", 0.0, 1.0, 1.0, 2, 2, 200, 64, 0.5, 0.5, 0.0,
                         8, 2, 0, 0, 0)


def test_scored_records_answer_f1_em_and_absent_without_gold():
    flow = AnswerFlow([irg("a"), irg("b", answers=()), irg("c")], passage)
    flow.record(GenStepResult(texts=((("a", 3), "Paris."), (("b", 3), "Paris"), (("c", 1), "Lyon"))))
    a, b, c, failed = flow.scored([_record("a"), _record("b"), _record("c"), _record("c", "failed")])
    assert (a.answer, a.f1, a.em) == ("Paris.", 1.0, 1.0)
    assert (b.answer, b.f1, b.em) == ("Paris", None, None)  # no gold answers: not scored, not zero
    assert (c.answer, c.f1, c.em) == ("", 0.0, 0.0)  # its final answer never came: scored as empty
    assert failed.f1 is None and failed.answer == ""


def test_model_names_and_folders(tmp_path):
    with pytest.raises(FileNotFoundError, match="--model nowhere: not a Hugging Face model folder"):
        check_model("nowhere")
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    assert resolve_model(str(folder)) == folder
    assert not answers_text(folder)
    (folder / "tokenizer_config.json").write_text(json.dumps({"chat_template": "{{ messages }}"}))
    assert answers_text(folder)


def test_speculative_retrieval_searches_the_partial_generation_then_the_final_one():
    req = irg()
    flow = AnswerFlow([req], passage)
    spec = SearchBatch((ScanTask(("q1", 2), (0,), 5, True, True, prefix=0.5),))
    assert flow.queries(spec) is None  # the generation has written nothing yet: the trace's prefix
    flow.record(GenStepResult(partial_texts=((("q1", 1), "Paris is"),)))
    assert flow.queries(spec) == {("q1", 2): "What is the capital of France? Paris is"}
    flow.record(GenStepResult(finished=(("q1", 1),), texts=((("q1", 1), "Paris is the capital"),)))
    redo = SearchBatch((ScanTask(("q1", 2), (0,), 5, True, True),))
    assert flow.queries(redo) == {("q1", 2): "What is the capital of France? Paris is the capital"}


# --- fan-out synthesis (RAGServe / METIS): prompts per node role ---------------------------


class _FanNode:
    def __init__(self, spec, topk=()):
        self.spec, self.topk = spec, tuple(topk)


class _FanRun:
    """A configured request's run as the core grows it: fixed nodes, then `expand`'s."""

    def __init__(self, request, config, topk):
        from ragraph.synthesis import expand

        first = len(request.nodes)
        specs, deps = expand(request.synthesis, config, first, (first - 1,), request.workflow)
        self.config = config
        self.nodes = [_FanNode(s, topk if i == 1 else ()) for i, s in enumerate([*request.nodes, *specs])]
        self.deps = [*request.deps, *deps]


def metis(rid="m1"):
    from ragraph.graph import Request
    from ragraph.synthesis import Method, Synthesis, SynthesisConfig

    syn = Synthesis(10, 50, 20, 8, 6, SynthesisConfig(Method.STUFF, 3))
    nodes = (Generate(300, 40, role="profile"), Retrieve(4, 6, (0, 1, 2, 3), query="q"))
    return Request(rid, 0.0, "metis", nodes, ((), (0,)), question="Who wrote Hamlet?",
                   answers=("William Shakespeare",), synthesis=syn)


def _admit(flow, run, rid, indices):
    step = GenStep(admit=tuple(task((rid, i)) for i in indices))
    return {k[1]: m[0]["content"] for k, m in flow.prompts(step, _Sched({rid: run})).items()}


def test_map_reduce_maps_read_one_chunk_each_and_the_reduce_reads_every_summary():
    from ragraph.synthesis import Method, SynthesisConfig

    req = metis()
    flow = AnswerFlow([req], passage)
    run = _FanRun(req, SynthesisConfig(Method.MAP_REDUCE, 3, 25), (11, 12, 13, 14, 15, 16))
    maps = _admit(flow, run, "m1", [2, 3, 4])
    for n, i in enumerate((2, 3, 4)):
        assert f"passage text {11 + n}" in maps[i] and "at most 25 words" in maps[i]
        assert sum(f"passage text {p}" in maps[i] for p in range(11, 17)) == 1  # its one chunk
    flow.record(GenStepResult(texts=tuple((("m1", i), f"summary {i}") for i in (2, 3, 4))))
    reduce = _admit(flow, run, "m1", [5])[5]
    assert all(f"summary {i}" in reduce for i in (2, 3, 4)) and "passage text" not in reduce
    assert "Who wrote Hamlet?" in reduce
    flow.record(GenStepResult(texts=((("m1", 5), "William Shakespeare"),)))
    assert flow.answer(req) == "William Shakespeare"


def test_stuff_reads_num_chunks_chunks_in_one_prompt():
    from ragraph.synthesis import Method, SynthesisConfig

    req = metis()
    flow = AnswerFlow([req], passage)
    run = _FanRun(req, SynthesisConfig(Method.STUFF, 5), (11, 12, 13, 14, 15, 16))
    text = _admit(flow, run, "m1", [2])[2]
    assert all(f"passage text {p}" in text for p in (11, 12, 13, 14, 15)) and "passage text 16" not in text
    flow.record(GenStepResult(texts=((("m1", 0), '{"complexity": "low"}'), (("m1", 2), "Shakespeare"))))
    assert flow.answer(req) == "Shakespeare"  # the profile is never the answer


def test_map_rerank_answers_with_a_score_and_the_best_scored_answer_wins():
    from backends.answers import parse_rerank
    from ragraph.synthesis import Method, SynthesisConfig

    assert parse_rerank("Answer: Paris\nScore: 87") == ("Paris", 87.0)
    assert parse_rerank("Lyon") == ("Lyon", None)
    req = metis()
    flow = AnswerFlow([req], passage)
    run = _FanRun(req, SynthesisConfig(Method.MAP_RERANK, 3), (11, 12, 13, 14, 15, 16))
    prompts = _admit(flow, run, "m1", [2, 3, 4])
    assert "passage text 13" in prompts[4] and "passage text 11" not in prompts[4] and "Score" in prompts[4]
    flow.record(GenStepResult(texts=((("m1", 2), "Marlowe\nScore: 40"), (("m1", 3), "no score here"),
                                     (("m1", 4), "William Shakespeare\nScore: 95"))))
    assert flow.answer(req) == "William Shakespeare"
    (rec,) = flow.scored([_record("m1")])
    assert rec.f1 == 1.0


def test_the_profile_text_is_no_query_and_no_notes():
    req = metis()
    flow = AnswerFlow([req], passage)
    sched = _Sched({"m1": _Run(2, {})})
    profile = flow.prompts(GenStep(admit=(task(("m1", 0)),)), sched)[("m1", 0)][0]["content"]
    assert "JSON" in profile and "Who wrote Hamlet?" in profile
    flow.record(GenStepResult(texts=((("m1", 0), '{"complexity": "low"}'),)))
    assert flow.queries(SearchBatch((ScanTask(("m1", 1), (0,), 5, True, True),))) is None


def test_a_fixed_map_reduce_workflow_gets_the_same_prompts():
    from ragraph.graph import Request

    nodes = (Retrieve(4, 3, (0, 1, 2, 3)), Generate(100, 39, role="map"), Generate(100, 39, role="map"),
             Generate(100, 32, role="reduce"))
    req = Request("f", 0.0, "map-reduce", nodes, ((), (0,), (0,), (1, 2)), question="Who wrote Hamlet?")
    flow = AnswerFlow([req], passage)
    sched = _Sched({"f": _Run(4, {0: (21, 22, 23)})})
    maps = {k[1]: m[0]["content"] for k, m in flow.prompts(GenStep(admit=(task(("f", 1)), task(("f", 2)))),
                                                           sched).items()}
    assert "passage text 21" in maps[1] and "passage text 22" in maps[2] and "passage text 22" not in maps[1]
    assert "at most 30 words" in maps[1]  # 39 output tokens hold 30 words
    flow.record(GenStepResult(texts=((("f", 1), "Shakespeare wrote it"), (("f", 2), "a play"))))
    reduce = flow.prompts(GenStep(admit=(task(("f", 3)),)), sched)[("f", 3)][0]["content"]
    assert "[1] Shakespeare wrote it" in reduce and "[2] a play" in reduce
