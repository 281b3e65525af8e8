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
