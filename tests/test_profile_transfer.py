"""A measured profile carried to another index of the same kind (backends.assembly.profile_for_corpus):
what its search costs depend on must match; the lists become the new index's."""

from __future__ import annotations

from pathlib import Path

import pytest

from backends.assembly import profile_for_corpus
from backends.corpus import index_identity
from backends.real import BackendError
from hwmodel.profile import DEFAULT_CPU_PROFILE, DEFAULT_PROFILE, load_profile

CORPUS = Path("/data/mine")


def manifest(nlist=64, ntotal=1000, dim=384, metric="inner_product", kind="IndexIVFFlat",
             embedder="sentence-transformers/all-MiniLM-L6-v2") -> dict:
    return {"kind": "flashrag", "source": {"sha256": "ab" * 32}, "articles": 10, "passages": ntotal,
            "embedder": {"name": embedder, "dim": dim},
            "index": {"type": kind, "nlist": nlist, "metric": metric, "ntotal": ntotal}, "seed": 0}


def test_a_profile_of_the_same_index_is_used_as_is():
    shipped = load_profile(DEFAULT_CPU_PROFILE)
    mine = shipped.on_index(shipped.index.model_copy(update={"identity": index_identity(manifest(dim=1))}))
    assert profile_for_corpus(mine, CORPUS, manifest(dim=1)) is mine  # nothing compared: it was measured there


def test_costs_carry_to_another_flat_index_with_the_same_vectors_and_embedder():
    shipped = load_profile(DEFAULT_CPU_PROFILE)
    sizes = [1000 // 64 + (i < 1000 % 64) for i in range(64)]
    carried = profile_for_corpus(shipped, CORPUS, manifest(), sizes)
    assert carried.index.identity == index_identity(manifest())
    assert (carried.index.nlist, carried.index.ntotal, carried.index.list_sizes) == (64, 1000, sizes)
    assert carried.index.name == "IVF64,Flat" and carried.index.embedder == shipped.index.embedder
    assert carried.cpu_search == shipped.cpu_search and carried.gen_step == shipped.gen_step
    before_lists = profile_for_corpus(shipped, CORPUS, manifest())  # before the body has read its lists
    assert before_lists.index.list_sizes is None and before_lists.index.nlist == 64


@pytest.mark.parametrize(("change", "field"), [
    ({"dim": 768}, "dimension 768"),
    ({"metric": "l2"}, "metric l2"),
    ({"kind": "IndexIVFPQ"}, "index type IndexIVFPQ"),
    ({"embedder": "BAAI/bge-small-en-v1.5"}, "embedder BAAI/bge-small-en-v1.5"),
])
def test_what_the_costs_depend_on_must_match(change, field):
    shipped = load_profile(DEFAULT_CPU_PROFILE)
    with pytest.raises(BackendError) as err:
        profile_for_corpus(shipped, CORPUS, manifest(**change))
    line = str(err.value)
    assert field in line and "hedra calibrate --corpus /data/mine" in line and "\n" not in line


def test_an_analytic_profile_does_not_describe_a_real_index():
    with pytest.raises(BackendError, match="not measured on a real index"):
        profile_for_corpus(load_profile(DEFAULT_PROFILE), CORPUS, manifest())
