"""`hedra corpus build|info`: real corpora (passages, embeddings, a FAISS IVF index)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from experiments.cli.common import (
    UsageError,
    app,
    user_errors,
)

corpus_app = typer.Typer(help="Real corpora: passages, embeddings and a FAISS IVF index.", no_args_is_help=True)

app.add_typer(corpus_app, name="corpus")


@corpus_app.command("build")
def corpus_build(
    out: Annotated[Path | None, typer.Option(
        help="Corpus folder to create (default $HEDRA_HOME/corpora/wiki, HEDRA_HOME=~/.cache/hedra).")] = None,
    max_articles: Annotated[int | None, typer.Option(
        help="Wikipedia: an evenly spaced subset of this many articles (default: all).")] = None,
    nlist: Annotated[int | None, typer.Option(
        help="IVF lists (default: power of two near 4*sqrt(passages), >= 39 passages per list).")] = None,
    passage_words: Annotated[int | None, typer.Option(help="Wikipedia: words per passage (default 100).")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the index's k-means.")] = 0,
    flashrag_corpus: Annotated[Path | None, typer.Option(
        help="Build from a FlashRAG corpus JSONL ({id, contents}) instead of Wikipedia.")] = None,
    index: Annotated[Path | None, typer.Option(
        help="With --flashrag-corpus: use this FAISS IVF index (checked: ntotal, dim) instead of building one.")]
    = None,
) -> None:
    """Build a corpus folder: passages.parquet, articles.parquet, index.faiss, manifest.json."""
    from backends.corpus import build_corpus_from_flashrag, build_wiki_corpus, default_corpus_dir

    with user_errors():
        if index is not None and flashrag_corpus is None:
            raise UsageError("--index needs --flashrag-corpus (the passages the index holds)")
        if flashrag_corpus is not None and (max_articles is not None or passage_words is not None):
            raise UsageError("--max-articles and --passage-words apply to the Wikipedia corpus;"
                             " a FlashRAG corpus comes split into passages")
        if nlist is not None and nlist < 1:
            raise UsageError(f"--nlist {nlist}: need at least 1")
        folder = out if out is not None else default_corpus_dir()
        progress = sys.stderr.isatty()
        if flashrag_corpus is not None:
            built = build_corpus_from_flashrag(flashrag_corpus, folder, index, nlist=nlist, seed=seed,
                                               progress=progress)
        else:
            built = build_wiki_corpus(folder, max_articles=max_articles, passage_words=passage_words or 100,
                                      nlist=nlist, seed=seed, progress=progress)
    m = built.manifest
    typer.echo(f"built {m['passages']} passages of {m['articles']} articles, {m['index']['type']}"
               f" nlist {m['index']['nlist']} ({m['index']['metric']}), in {m['build_s']:.1f} s -> {folder}")


@corpus_app.command("info")
def corpus_info(
    folder: Annotated[Path | None, typer.Argument(help="Corpus folder (default: the Wikipedia corpus).")] = None,
) -> None:
    """Print a corpus folder's manifest (JSON)."""
    from backends.corpus import default_corpus_dir, read_manifest

    with user_errors():
        manifest = read_manifest(folder if folder is not None else default_corpus_dir())
    typer.echo(json.dumps(manifest, indent=2))

