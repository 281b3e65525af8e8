"""FanOutQA questions: the loader (a hand-made file and the installed package), sub-question
follow-ups in a realised trace, the `answers` field, and the refusals of bad input."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from traces.fanoutqa import answer_text, load_fanoutqa, read_fanoutqa
from traces.questions import DatasetError, Question, named_dataset
from traces.schema import TraceRequest, load_trace, to_request

ROOT = Path(__file__).resolve().parents[1]
MINI = ROOT / "tests" / "data" / "fanoutqa-mini.json"
INSTALLED = importlib.util.find_spec("fanoutqa") is not None


def hedra(*args: object, home: Path, env: dict | None = None) -> subprocess.CompletedProcess[str]:
    full = {**os.environ, "HEDRA_HOME": str(home), "HF_HUB_OFFLINE": "1", **(env or {})}
    return subprocess.run([sys.executable, "-m", "experiments.cli", *map(str, args)], cwd=ROOT, env=full,
                          capture_output=True, text=True, timeout=300)


def one_error_line(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode == 2, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("hedra: error: "), proc.stderr
    return lines[0]


# --- the loader ---------------------------------------------------------------------------------

def test_loader_reads_questions_answers_and_sub_questions_in_pre_order():
    qs = load_fanoutqa(MINI)
    assert [q.id for q in qs] == ["q-capitals", "q-planets", "q-rivers"]
    capitals, planets, rivers = qs
    # (spaces collapsed)
    assert capitals.question == "What are the capitals of the three most populous countries of Africa?"
    assert capitals.golden_answers == ("Nigeria - Abuja\nEthiopia - Addis Ababa\nEgypt - Cairo",)
    assert capitals.follow_ups[0] == "What are the three most populous countries of Africa?"
    assert capitals.follow_ups[1:] == tuple(f"What is the capital of {c}?" for c in ("Nigeria", "Ethiopia", "Egypt"))
    # a sub-question with its own decomposition comes before its children
    assert planets.follow_ups == ("How many moons do Jupiter and Saturn have?", "How many moons does Jupiter have?",
                                  "How many moons does Saturn have?", "What is 95 plus 146?")
    assert planets.golden_answers == ("241",) and rivers.golden_answers == ("yes",)


@pytest.mark.parametrize(("answer", "text"), [
    (["a", "b"], "a\nb"), ({"x": 1, "y": False}, "x - 1\ny - no"), (True, "yes"), (2.5, "2.5"), ("s", "s"),
])
def test_answer_text_follows_fanoutqa_str_answer(answer, text):
    assert answer_text(answer) == text


@pytest.mark.skipif(not INSTALLED, reason="the fanoutqa package is not installed (pip install --no-deps fanoutqa)")
def test_the_installed_dev_set_without_importing_the_package():
    qs = named_dataset("fanoutqa")
    assert len(qs) == 310 and len({q.id for q in qs}) == 310
    assert all(q.question and len(q.golden_answers) == 1 and q.golden_answers[0] for q in qs)
    assert min(len(q.follow_ups) for q in qs) >= 2  # every question is decomposed
    assert 6.0 < sum(len(q.follow_ups) for q in qs) / len(qs) < 8.0  # 7.07 sub-questions per question
    assert qs[0].question.startswith("What is the batting hand of each of the first five picks")
    assert "fanoutqa" not in sys.modules and "spacy" not in sys.modules  # the file is read, the code never run


# --- bad input ----------------------------------------------------------------------------------

def test_unknown_dataset_and_missing_package_are_refused(monkeypatch):
    with pytest.raises(DatasetError, match=r"unknown dataset 'nq'; known: fanoutqa"):
        named_dataset("nq")
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
    with pytest.raises(DatasetError, match=re.escape("the fanoutqa package is not installed; install it:"
                                                     " pip install --no-deps fanoutqa==1.1.1")):
        named_dataset("fanoutqa")


def bad_file(tmp_path: Path, edit) -> Path:
    data = json.loads(MINI.read_text())
    edit(data)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(data))
    return path


@pytest.mark.parametrize(("edit", "where"), [
    (lambda d: d[1].pop("question"), r"question 1 field question: Field required"),
    (lambda d: d[0]["decomposition"][2].update(answer=None), r"question 0 field decomposition\.2\.answer"),
    (lambda d: d[1]["decomposition"][0]["decomposition"][1].update(question=3),
     r"question 1 field decomposition\.0\.decomposition\.1\.question: Input should be a valid string"),
    (lambda d: d[2].update(id="q-capitals"), r"question 2 field id: duplicate id 'q-capitals'"),
    (lambda d: d[2].update(question="  "), r"question 2 field question: empty"),
    (lambda d: d.clear(), r"no questions"),
])
def test_bad_files_name_file_question_and_field(tmp_path, edit, where):
    path = bad_file(tmp_path, edit)
    with pytest.raises(DatasetError, match=re.escape(str(path)) + ": " + where):
        read_fanoutqa(path)


def test_unreadable_or_non_json_file(tmp_path):
    with pytest.raises(DatasetError, match=r"nowhere\.json: cannot read"):
        read_fanoutqa(tmp_path / "nowhere.json")
    (tmp_path / "x.json").write_text("[{")
    with pytest.raises(DatasetError, match=r"x\.json: not JSON"):
        read_fanoutqa(tmp_path / "x.json")


# --- the trace field ----------------------------------------------------------------------------

def test_answers_round_trip_and_the_simulator_ignores_them(tmp_path):
    from ragraph.workflows import WorkflowRegistry

    row = {"id": "r0", "arrival_s": 0.0, "workflow": "one-shot", "question": "q?", "answers": ["a", "b c"],
           "stages": [{"op": "retrieve", "nprobe": 2, "k": 1, "clusters": [0, 1]},
                      {"op": "generate", "prompt_tokens": 10, "output_tokens": 2}]}
    tr = TraceRequest.model_validate(row)
    assert tr.answers == ["a", "b c"]
    assert TraceRequest.model_validate_json(tr.model_dump_json()) == tr
    bare = TraceRequest.model_validate({k: v for k, v in row.items() if k != "answers"})
    assert bare.answers == []  # none: quality is not scored
    reg = WorkflowRegistry()
    a, b = to_request(tr, reg), to_request(bare, reg)
    assert (a.nodes, a.question, a.workflow) == (b.nodes, b.question, b.workflow)
    (tmp_path / "t.jsonl").write_text(json.dumps({**row, "answers": ["a", 3]}) + "\n")
    with pytest.raises(Exception, match=r"t.jsonl:1: field answers.1: Input should be a valid string"):
        load_trace(tmp_path / "t.jsonl")


# --- realised traces (need the corpus: faiss and the embedder) ----------------------------------

def realized_rows(wiki_corpus, embedder, questions: list[Question], workflows=("irg", "multistep", "hyde")):
    from backends.real_trace import realize_trace
    from traces.generate import TraceConfig, generate_trace

    rows = generate_trace(TraceConfig(workflows, 3.0, 8.0, seed=4, nprobe=4, nlist=wiki_corpus.nlist))
    return rows, realize_trace(rows, wiki_corpus, embedder, seed=4, questions=questions)


def test_sub_questions_are_the_follow_up_queries_and_truth_is_measured(wiki_corpus, embedder, tmp_path):
    from backends.real_trace import search_in_probe_lists
    from traces.generate import write_jsonl

    qs = load_fanoutqa(MINI)
    _, out = realized_rows(wiki_corpus, embedder, qs)
    follow_ups = passage_rule = 0
    for i, row in enumerate(out):
        q = qs[i % len(qs)]
        assert row["question"] == q.question and row["answers"] == list(q.golden_answers)
        ret = [s for s in row["stages"] if s["op"] == "retrieve"]
        for n, st in enumerate(ret):
            if n == 0:
                assert st["query"] == q.question or row["workflow"] == "hyde"
            elif n - 1 < len(q.follow_ups):
                assert st["query"] == q.follow_ups[n - 1]
                follow_ups += 1
            else:  # sub-questions used up: the question followed by a passage found before
                assert st["query"].startswith(q.question + " ") and len(st["query"]) > len(q.question) + 20
                passage_rule += 1
    assert follow_ups > 10 and passage_rule > 0  # q-rivers has one sub-question; irg asks two follow-ups
    stages = [s for r in out for s in r["stages"] if s["op"] == "retrieve"]
    saved = wiki_corpus.index.nprobe
    try:
        _, found = search_in_probe_lists(wiki_corpus.index, embedder.encode([s["query"] for s in stages]),
                                         [s["nprobe"] for s in stages], 20)
    finally:
        wiki_corpus.index.nprobe = saved
    for st, ids in zip(stages, found, strict=True):
        assert st["truth"]["top20"] == [int(p) for p in ids[:20] if p >= 0]
    write_jsonl(out, tmp_path / "t.jsonl")
    loaded = load_trace(tmp_path / "t.jsonl", nlist=wiki_corpus.nlist, index=wiki_corpus.index_identity)
    assert len(loaded) == len(out)
    assert [TraceRequest.model_validate(r).answers for r in out] == [r["answers"] for r in out]


def test_flashrag_questions_carry_their_answers_and_keep_the_passage_rule(wiki_corpus, embedder):
    qs = [Question("a", "Who wrote Hamlet?", ("William Shakespeare", "Shakespeare")), Question("b", "What is DNA?")]
    _, out = realized_rows(wiki_corpus, embedder, qs, workflows=("irg",))
    for i, row in enumerate(out):
        assert row.get("answers", []) == list(qs[i % 2].golden_answers)  # none: no field
        follow = [s for s in row["stages"] if s["op"] == "retrieve"][1:]
        assert follow and all(s["query"].startswith(row["question"] + " ") for s in follow)


def test_template_questions_have_no_answers(wiki_corpus, embedder):
    from backends.real_trace import realize_trace
    from traces.generate import TraceConfig, generate_trace

    rows = generate_trace(TraceConfig(("irg",), 2.0, 3.0, seed=1, nprobe=4, nlist=wiki_corpus.nlist))
    assert all("answers" not in r for r in realize_trace(rows, wiki_corpus, embedder, seed=1))


# --- the command line ---------------------------------------------------------------------------

def test_cli_refuses_bad_dataset_options(wiki_corpus, tmp_path):
    out = tmp_path / "t.jsonl"
    base = ("trace", "gen", "--workflow", "irg", "--rate", 2, "--duration", 5, "--out", out)
    assert "unknown dataset 'hotpot'; known: fanoutqa" in one_error_line(
        hedra(*base, "--corpus", wiki_corpus.path, "--dataset", "hotpot", home=tmp_path))
    assert "--dataset needs --corpus" in one_error_line(hedra(*base, "--dataset", "fanoutqa", home=tmp_path))
    assert "--dataset and --questions both name the questions" in one_error_line(
        hedra(*base, "--corpus", wiki_corpus.path, "--dataset", "fanoutqa", "--questions", MINI, home=tmp_path))
    fake = tmp_path / "site" / "fanoutqa"  # a fanoutqa package without its data file shadows the installed one
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise SystemExit('hedra must not import fanoutqa')\n")
    line = one_error_line(hedra(*base, "--corpus", wiki_corpus.path, "--dataset", "fanoutqa", home=tmp_path,
                                env={"PYTHONPATH": os.pathsep.join([str(fake.parent), str(ROOT)])}))
    assert "the installed fanoutqa package has no data/fanout-final-dev.json; reinstall it: pip install" in line
    assert not out.exists()


@pytest.mark.skipif(not INSTALLED, reason="the fanoutqa package is not installed (pip install --no-deps fanoutqa)")
def test_cli_trace_gen_asks_fanoutqa_questions(wiki_corpus, embedder, tmp_path):
    from backends.real_trace import realize_trace
    from traces.generate import TraceConfig, generate_trace

    out = tmp_path / "t.jsonl"
    proc = hedra("trace", "gen", "--workflow", "multistep,irg", "--rate", 2, "--duration", 4, "--seed", 2,
                 "--corpus", wiki_corpus.path, "--dataset", "fanoutqa", "--out", out, home=tmp_path)
    assert proc.returncode == 0, proc.stderr
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    qs = named_dataset("fanoutqa")
    assert [r["question"] for r in rows] == [q.question for q in qs[:len(rows)]]
    assert all(r["answers"] == list(q.golden_answers) for r, q in zip(rows, qs, strict=False))
    cfg = TraceConfig(("multistep", "irg"), 2.0, 4.0, seed=2, nprobe=wiki_corpus.nlist // 8, nlist=wiki_corpus.nlist)
    assert rows == realize_trace(generate_trace(cfg), wiki_corpus, embedder, seed=2, questions=qs)
    proc = hedra("trace", "stats", out, home=tmp_path)
    assert proc.returncode == 0 and '"paper_fig9a"' in proc.stdout


def test_a_metis_request_on_a_decomposed_question_takes_its_profile_from_the_decomposition(wiki_corpus, embedder):
    """METIS's profile of a FanOutQA question: pieces = its sub-questions (the dataset's own
    annotations), named; the model's quality table, drawn for another question, is dropped."""
    qs = load_fanoutqa(MINI)
    _, out = realized_rows(wiki_corpus, embedder, qs, workflows=("metis",))
    assert out
    for i, row in enumerate(out):
        q = qs[i % len(qs)]
        profile = row["synthesis"]["profile"]
        assert profile["source"] == "fanoutqa-decomposition" and "quality" not in row["synthesis"]
        assert profile["pieces"] == min(10, len(q.follow_ups)) and profile["joint"] == (len(q.follow_ups) > 1)
        TraceRequest.model_validate(row)
    template = realized_rows(wiki_corpus, embedder, [Question("a", "Who wrote Hamlet?", ("Shakespeare",))],
                             workflows=("metis",))[1]
    assert all(r["synthesis"]["profile"]["source"] == "model:metis-profile-v1" and r["synthesis"]["quality"]
               for r in template)  # no decomposition: the declared models stay


def test_a_metis_request_with_gold_answers_takes_its_answer_length_from_them(wiki_corpus, embedder):
    """The final answer's tokens of a gold-answered question come from its gold answer (words x
    1.3, the generator's count, x 2.5, in 16-256), named "gold-answer", not from the dataset
    shape's draw (7-10 tokens for SQuAD-like shapes would cut a FanOutQA list answer short)."""
    from traces.metis import ANSWER_BOUNDS, GOLD_ANSWER, gold_answer_tokens

    assert gold_answer_tokens(["yes"]) == ANSWER_BOUNDS[0] and gold_answer_tokens(["w " * 500]) == ANSWER_BOUNDS[1]
    assert gold_answer_tokens(["a b c d e f g h i j k l m n o p q r s t"]) == 65  # 20 words: 26 tokens x 2.5
    assert gold_answer_tokens(["Paris", "the city of Paris in France"]) == gold_answer_tokens(["a b c d e f"])
    long_ = Question("long", "What is the capital of each of these countries?",
                     ("\n".join(f"Country {i} - Capital city {i}" for i in range(8)),), ("q1?", "q2?", "q3?"))
    qs = [*load_fanoutqa(MINI), long_]
    drawn, out = realized_rows(wiki_corpus, embedder, qs, workflows=("metis",))
    assert len(out) > len(qs)
    for i, (before, row) in enumerate(zip(drawn, out, strict=True)):
        q = qs[i % len(qs)]
        syn = row["synthesis"]
        assert syn["answer_tokens"] == gold_answer_tokens(q.golden_answers) and syn["answer_source"] == GOLD_ANSWER
        assert list(syn)[list(syn).index("answer_tokens") + 1] == "answer_source"
        assert TraceRequest.model_validate(row).synthesis.answer_source == GOLD_ANSWER
        assert "answer_source" not in before["synthesis"]  # a synthetic trace's draw: no source field
    long_rows = [r for i, r in enumerate(out) if qs[i % len(qs)] is long_]
    gold_words = len(long_.golden_answers[0].split())  # 48 words: 63 tokens as the generator counts them
    assert long_rows and all(r["synthesis"]["answer_tokens"] >= gold_words * 1.3 for r in long_rows)
    assert any(b["synthesis"]["answer_tokens"] < gold_words * 1.3 for b in drawn)  # the draw was shorter
    plain = realized_rows(wiki_corpus, embedder, None, workflows=("metis",))
    assert [r["synthesis"] for r in plain[1]] == [r["synthesis"] for r in plain[0]]  # no gold answers: as drawn


# --- answer quality asked for without gold answers --------------------------------------------------

def test_quality_without_gold_answers_is_refused_in_one_line(tmp_path):
    from traces.generate import TraceConfig, generate_trace, write_jsonl
    from traces.questions import require_gold

    with pytest.raises(DatasetError, match=r"^q\.jsonl: no question has gold answers .* use --dataset fanoutqa$"):
        require_gold([Question("0", "Who wrote Hamlet?"), Question("1", "Capital of Senegal?")], "q.jsonl")
    assert require_gold(qs := [Question("0", "q?"), Question("1", "r?", ("a",))], "q.jsonl") == qs
    # hedra run --quality: a trace without answers, or a model that answers nothing (before anything loads)
    trace = tmp_path / "t.jsonl"
    write_jsonl(generate_trace(TraceConfig(("one-shot",), 1.0, 3.0, seed=1)), trace)
    out = tmp_path / "run"
    base = ("run", "--trace", trace, "--policy", "hedra", "--out", out, "--quality")
    line = one_error_line(hedra(*base, "--model", "smollm2", home=tmp_path))
    assert f"--quality: {trace} has no gold answers" in line and "--dataset fanoutqa or --questions FILE" in line
    assert "--model tiny answers nothing" in one_error_line(hedra(*base, home=tmp_path))
    # the real-answer benchmark: a FlashRAG question file whose golden_answers are all empty
    questions = tmp_path / "q.jsonl"
    questions.write_text('{"question": "Who wrote Hamlet?", "golden_answers": []}\n')
    bench = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "real_answers.py"), "--questions-file",
                            str(questions), "--out", str(tmp_path / "bench.json")], cwd=ROOT, capture_output=True,
                           text=True, timeout=120, env={**os.environ, "HEDRA_HOME": str(tmp_path)})
    assert bench.returncode == 2 and bench.stderr.strip().count("\n") == 0, bench.stderr
    assert f"{questions}: no question has gold answers" in bench.stderr
    assert not out.exists() and not (tmp_path / "bench.json").exists() and not (tmp_path / "models").exists()


def test_cli_without_the_fanoutqa_package_is_one_line(tmp_path):
    out = tmp_path / "t.jsonl"
    code = ("import importlib.util as u, sys; f = u.find_spec; "
            "u.find_spec = lambda n, *a: None if n == 'fanoutqa' else f(n, *a); "
            f"sys.argv = ['hedra', 'trace', 'gen', '--workflow', 'irg', '--rate', '2', '--duration', '5', '--corpus',"
            f" 'wiki', '--dataset', 'fanoutqa', '--out', {str(out)!r}]; from experiments.cli import main; main()")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "HEDRA_HOME": str(tmp_path / "home")})
    line = one_error_line(proc)
    assert "the fanoutqa package is not installed; install it: pip install --no-deps fanoutqa==1.1.1" in line
    assert not out.exists() and not (tmp_path / "home" / "corpora").exists()  # refused before the corpus build
