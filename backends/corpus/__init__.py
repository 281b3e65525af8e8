"""Real corpora: passages, their embeddings in a FAISS IVF index, and a manifest.

The default corpus is English Wikipedia (`wiki`); users bring their own corpus and questions
in FlashRAG's formats (`flashrag`). Both fill the same folder layout (`store`: the manifest,
loading, the index identity), through the same embedding and IVF training (`index`). This
package's namespace is the public interface; faiss, pandas and pyarrow are imported inside the
functions that need them.
"""

from backends.corpus.flashrag import build_corpus_from_flashrag, load_flashrag_corpus, load_flashrag_dataset
from backends.corpus.index import NLIST_RULE, Progress, nlist_for
from backends.corpus.store import (
    FILES,
    FORMAT,
    Corpus,
    CorpusError,
    default_corpus_dir,
    embedder_for,
    index_identity,
    load_corpus,
    read_manifest,
)
from backends.corpus.wiki import (
    SOURCE_FILE,
    SOURCE_PACKAGE,
    build_wiki_corpus,
    ensure_wiki_corpus,
    read_wiki_articles,
    split_passages,
    wiki_source,
)

__all__ = [
    "FILES", "FORMAT", "NLIST_RULE", "SOURCE_FILE", "SOURCE_PACKAGE", "Corpus", "CorpusError", "Progress",
    "build_corpus_from_flashrag", "build_wiki_corpus", "default_corpus_dir", "embedder_for",
    "ensure_wiki_corpus", "index_identity", "load_corpus", "load_flashrag_corpus", "load_flashrag_dataset",
    "nlist_for", "read_manifest", "read_wiki_articles", "split_passages", "wiki_source",
]
