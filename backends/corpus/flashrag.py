"""A user's own corpus and questions in FlashRAG's formats.

A corpus JSONL (`{"id": ..., "contents": "\\"Title\\"\\ntext"}` per line), optionally with the
FAISS index the user built for it, becomes a corpus folder; a dataset JSONL
(`{"id"?, "question", "golden_answers"}` per line) becomes questions. Errors name FILE:LINE
and the field.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import TYPE_CHECKING

from backends.corpus.index import Progress, default_embedder, embed_and_index, index_record
from backends.corpus.store import (
    Corpus,
    CorpusError,
    check_free,
    check_ivf,
    new_manifest,
    read_index,
    sha256_of,
    write_corpus,
)
from traces.questions import Question

if TYPE_CHECKING:
    import pandas as pd

    from backends.embedder import Embedder


def _jsonl(path: Path) -> list[tuple[int, dict]]:
    """(line number, object) for each non-blank line; errors name FILE:LINE and the field."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise CorpusError(f"{path}: cannot read ({exc.strerror})") from None
    except UnicodeDecodeError as exc:
        raise CorpusError(f"{path}: not UTF-8 text (byte {exc.start})") from None
    out = []
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except ValueError as exc:
            raise CorpusError(f"{path}:{lineno}: field (line): not JSON ({getattr(exc, 'msg', exc)})") from None
        if not isinstance(obj, dict):
            raise CorpusError(f"{path}:{lineno}: field (line): expected a JSON object")
        out.append((lineno, obj))
    if not out:
        raise CorpusError(f"{path}: no records")
    return out


def _id_of(obj: dict, where: str, default: str | None) -> str:
    rid = obj.get("id", default)
    if rid is None:
        raise CorpusError(f"{where}: field id: missing")
    if isinstance(rid, bool) or not isinstance(rid, str | int) or rid == "":
        raise CorpusError(f"{where}: field id: expected a non-empty string or an integer")
    return str(rid)


def _split_contents(contents: str) -> tuple[str, str]:
    """FlashRAG contents `"Title"\\ntext` -> (title, text); no newline: no title."""
    first, sep, rest = contents.partition("\n")
    if not sep:
        return "", contents.strip()
    title = first.strip()
    if len(title) >= 2 and title[0] == title[-1] == '"':
        title = title[1:-1]
    return title, rest.strip()


def _required_text(obj: dict, where: str, field: str) -> str:
    """obj[field], which must be a non-empty string; CorpusError naming `where` and the field."""
    value = obj.get(field)
    if value is None:
        raise CorpusError(f"{where}: field {field}: missing")
    if not isinstance(value, str) or not value.strip():
        raise CorpusError(f"{where}: field {field}: expected a non-empty string")
    return value


def load_flashrag_corpus(jsonl_path: str | Path) -> pd.DataFrame:
    """A FlashRAG corpus JSONL (`{"id": ..., "contents": "\\"Title\\"\\ntext"}` per line) as a
    passages table: id (row number, the FAISS label), source_id, title, article, text.
    Passages with the same title form one article (numbered in order of appearance)."""
    import pandas as pd

    path = Path(jsonl_path)
    cols: dict[str, list] = {"id": [], "source_id": [], "title": [], "article": [], "text": []}
    seen: set[str] = set()
    article_of: dict[str, int] = {}
    for lineno, obj in _jsonl(path):
        where = f"{path}:{lineno}"
        sid = _id_of(obj, where, None)
        if sid in seen:
            raise CorpusError(f"{where}: field id: duplicate id {sid!r}")
        seen.add(sid)
        title, text = _split_contents(_required_text(obj, where, "contents"))
        if not text:
            raise CorpusError(f"{where}: field contents: no text after the title line")
        cols["id"].append(len(cols["id"]))
        cols["source_id"].append(sid)
        cols["title"].append(title)
        cols["article"].append(article_of.setdefault(title, len(article_of)))
        cols["text"].append(text)
    return pd.DataFrame(cols).astype({"id": "int64", "article": "int64"})


def load_flashrag_dataset(jsonl_path: str | Path) -> list[Question]:
    """A FlashRAG dataset JSONL (`{"id"?, "question", "golden_answers"}` per line), in file order."""
    path = Path(jsonl_path)
    out: list[Question] = []
    seen: set[str] = set()
    for lineno, obj in _jsonl(path):
        where = f"{path}:{lineno}"
        qid = _id_of(obj, where, str(len(out)))
        if qid in seen:
            raise CorpusError(f"{where}: field id: duplicate id {qid!r}")
        seen.add(qid)
        question = _required_text(obj, where, "question")
        answers = obj.get("golden_answers")
        if answers is None:
            raise CorpusError(f"{where}: field golden_answers: missing")
        if not isinstance(answers, list) or not all(isinstance(a, str) for a in answers):
            raise CorpusError(f"{where}: field golden_answers: expected a list of strings")
        out.append(Question(qid, " ".join(question.split()), tuple(answers)))
    return out


def _articles_of(passages: pd.DataFrame) -> pd.DataFrame:
    import pandas as pd

    first = passages.groupby("article", sort=True)["id"].agg(["min", "count"])
    titles = passages.groupby("article", sort=True)["title"].first()
    return pd.DataFrame({"id": first.index.astype("int64"), "title": titles.to_numpy(), "description": "",
                         "topic": "", "first_passage": first["min"].astype("int64").to_numpy(),
                         "n_passages": first["count"].astype("int64").to_numpy()})


def build_corpus_from_flashrag(jsonl: str | Path, out_dir: str | Path, index_path: str | Path | None = None, *,
                               nlist: int | None = None, seed: int = 0, embedder: Embedder | None = None,
                               progress: Progress = True) -> Corpus:
    """A corpus folder from a FlashRAG corpus JSONL.

    Without `index_path` the passages are embedded and indexed (IndexIVFFlat, inner
    product, the nlist rule unless `nlist` is given). With it, the user's FAISS index is
    checked (an IVF index whose ntotal equals the passage count and whose dimension equals
    the embedder's; nlist, when given, must equal its nlist) and used as is: its labels
    must be the passages' line order, as FlashRAG's index builder makes them."""
    t0 = time.perf_counter()
    jsonl, out = Path(jsonl), Path(out_dir)
    check_free(out)
    passages = load_flashrag_corpus(jsonl)
    articles = _articles_of(passages)
    timings: dict[str, float] = {}
    supplied = None
    if index_path is not None:
        ipath = Path(index_path)
        index = read_index(ipath)
        check_ivf(index, ipath)
        if index.ntotal != len(passages):
            raise CorpusError(f"{ipath}: field ntotal: the index holds {index.ntotal} vectors,"
                              f" {jsonl} has {len(passages)} passages")
        if nlist is not None and nlist != index.nlist:
            raise CorpusError(f"{ipath}: field nlist: the index has {index.nlist} lists, asked for {nlist}")
        embedder = default_embedder(embedder)
        if index.d != embedder.dim:
            raise CorpusError(f"{ipath}: field d: the index has {index.d} dimensions,"
                              f" embedder {embedder.name} gives {embedder.dim}")
        supplied = {"file": str(ipath.resolve()), "sha256": sha256_of(ipath)}
    else:
        index, embedder, timings = embed_and_index(passages, embedder, nlist, seed, progress)
    source_record = {"package": None, "version": None, "file": str(jsonl.resolve()), "sha256": sha256_of(jsonl)}
    manifest = new_manifest("flashrag", source_record, articles=len(articles), passages=len(passages),
                            max_articles=None, passage_words=None, embedder=embedder.describe(),
                            index=index_record(index, nlist is not None, supplied), seed=seed, timings=timings,
                            started=t0)
    write_corpus(out, passages, articles, index, manifest)
    return Corpus(out, passages, articles, index, manifest)
