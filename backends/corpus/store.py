"""The corpus store: a corpus folder's layout, its manifest, its identity, and loading it.

A corpus folder is written once and atomically (built in a temporary sibling, then renamed):

- `passages.parquet`: id (= the FAISS label, the row number), title, article, text;
- `articles.parquet`: id, title, description, topic, first_passage, n_passages;
- `index.faiss`: an IVF index (`IndexIVFFlat`, `METRIC_INNER_PRODUCT` over unit vectors, or a
  user's own IVF index);
- `manifest.json`: source (package, version, file, sha256), counts, passage_words, embedder,
  index (type, nlist, metric, how nlist was chosen), seed, build time, hedra version.

`index_identity(manifest)` names the index by a hash of the manifest fields that define it
(`ivf256-3f9a0c1b2d4e`); real traces carry it, and the commands that replay them check it.
The sources that fill a folder are `backends.corpus.wiki` and `backends.corpus.flashrag`; the
embedding and index training they share is `backends.corpus.index`.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from backends.paths import hedra_home

if TYPE_CHECKING:
    import pandas as pd

    from backends.embedder import Embedder

FORMAT = 1
FILES = {"passages": "passages.parquet", "articles": "articles.parquet", "index": "index.faiss",
         "manifest": "manifest.json"}


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
        return flashrag_contents(str(self.passages["title"].iat[pid]), str(self.passages["text"].iat[pid]))


def faiss_module() -> Any:
    try:
        import faiss
    except ImportError:
        raise CorpusError("faiss is not installed: pip install faiss-cpu (or pip install 'hedra[real]')") from None
    return faiss


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def default_corpus_dir() -> Path:
    """`$HEDRA_HOME/corpora/wiki`; HEDRA_HOME defaults to `~/.cache/hedra`."""
    return hedra_home() / "corpora" / "wiki"


def flashrag_contents(title: str, text: str) -> str:
    return f'"{title}"\n{text}'


def new_manifest(kind: str, source: dict, *, articles: int, passages: int, max_articles: int | None,
                 passage_words: int | None, embedder: dict, index: dict, seed: int,
                 timings: dict[str, float], started: float) -> dict:
    """A corpus's manifest; `started` is the build's `time.perf_counter()` at its start."""
    try:
        version = importlib.metadata.version("hedra")
    except importlib.metadata.PackageNotFoundError:
        version = "unknown"
    return {
        "format": FORMAT, "kind": kind, "source": source, "articles": articles, "passages": passages,
        "max_articles": max_articles, "passage_words": passage_words, "embedder": embedder, "index": index,
        "seed": seed, "build_s": round(time.perf_counter() - started, 3), "timings": timings,
        "built_at": datetime.now(UTC).isoformat(timespec="seconds"), "hedra_version": version,
    }


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


def write_corpus(out_dir: Path, passages: pd.DataFrame, articles: pd.DataFrame, index: Any,
                  manifest: dict) -> None:
    """Write the corpus folder atomically: a temporary sibling, renamed into place."""
    faiss = faiss_module()
    check_free(out_dir)
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


def check_free(out_dir: Path) -> None:
    if out_dir.exists() and not (out_dir.is_dir() and not any(out_dir.iterdir())):
        raise CorpusError(f"{out_dir}: already exists (remove it to rebuild, or choose another folder)")


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


def read_index(path: Path) -> Any:
    faiss = faiss_module()
    if not path.is_file():
        raise CorpusError(f"{path}: missing")
    try:
        return faiss.read_index(str(path))
    except RuntimeError:
        raise CorpusError(f"{path}: not a FAISS index file") from None


def check_ivf(index: Any, path: Path) -> None:
    faiss = faiss_module()
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
    index = read_index(ipath)
    check_ivf(index, ipath)
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
