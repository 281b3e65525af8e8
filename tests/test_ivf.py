"""Cluster-by-cluster IVF search (backends.ivf) equals one FAISS search, on a real IVFFlat index.

Index: 20,000 clustered float32 vectors of dimension 384 (the project's embedder) plus 40 exact
duplicates (so exact ties occur), IndexIVFFlat with nlist 128, inner product on normalised
vectors and L2 on raw ones.
"""

from __future__ import annotations

import gc
import itertools
from pathlib import Path

import numpy as np
import pytest

faiss = pytest.importorskip("faiss", reason="faiss is not installed (pip install faiss-cpu): real IVF backend")
hypothesis = pytest.importorskip("hypothesis")

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from backends.ivf import IVFRetriever, QueryTopK, cluster_vectors, load_index  # noqa: E402

D_DIM = 384
N_BASE = 20_000
N_DUP = 40  # ids N_BASE.. are copies of ids 0..N_DUP-1
NLIST = 128


@pytest.fixture(scope="module", autouse=True)
def _one_omp_thread():
    """Build indexes single-threaded: on a 2-core machine shared with other work, OpenMP regions
    with 2 threads stall for scheduler ticks. The retrievers still use the threads they are given."""
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    yield
    faiss.omp_set_num_threads(before)


def make_data(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((200, D_DIM)).astype(np.float32)
    x = centers[rng.integers(0, len(centers), N_BASE)] + 0.5 * rng.standard_normal((N_BASE, D_DIM)).astype(np.float32)
    return np.vstack([x, x[:N_DUP]])


def build(x: np.ndarray, metric: str) -> faiss.IndexIVFFlat:
    mt = faiss.METRIC_INNER_PRODUCT if metric == "ip" else faiss.METRIC_L2
    index = faiss.IndexIVFFlat(faiss.IndexFlat(D_DIM, mt), D_DIM, NLIST, mt)
    index.train(x[:N_BASE])
    index.add(x)
    return index


@pytest.fixture(scope="module")
def base() -> np.ndarray:
    return make_data()


@pytest.fixture(scope="module", params=["ip", "l2"])
def setup(request, base):
    x = base.copy()
    if request.param == "ip":
        faiss.normalize_L2(x)
    index = build(x, request.param)
    rng = np.random.default_rng(1)
    # queries near stored vectors (half of them near duplicated ones: exact ties at the top)
    src = np.concatenate([rng.integers(0, N_DUP, 24), rng.integers(0, N_BASE, 40)])
    xq = x[src] + 0.05 * rng.standard_normal((len(src), D_DIM)).astype(np.float32)
    if request.param == "ip":
        faiss.normalize_L2(xq)
    xq[:4] = x[:4]  # some queries exactly equal to a duplicated vector
    return request.param, x, index, xq


def true_distance(x: np.ndarray, q: np.ndarray, ids: np.ndarray, ip: bool) -> np.ndarray:
    v = x[ids].astype(np.float64)
    q = q.astype(np.float64)
    return v @ q if ip else ((v - q) ** 2).sum(axis=1)


def assert_same_topk(got: tuple[np.ndarray, np.ndarray], ref: tuple[np.ndarray, np.ndarray], k: int,
                     x: np.ndarray, q: np.ndarray, ip: bool) -> None:
    """`got` (k results) equals `ref` (index.search with k+1): distances bit-identical; ids equal
    wherever the distance is not exactly tied with a neighbour (the (k+1)-th included); inside an
    exact tie, any id that carries that distance (documented in backends.ivf)."""
    D, I = got  # noqa: E741
    D0, I0 = ref
    np.testing.assert_array_equal(D, D0[:k])
    valid = I >= 0
    assert len(set(I[valid].tolist())) == int(valid.sum()), "duplicate ids"
    for j in range(k):
        tied = (j > 0 and D0[j] == D0[j - 1]) or (j + 1 < len(D0) and D0[j] == D0[j + 1])
        if not tied or I0[j] < 0:
            assert I[j] == I0[j], (j, I, I0)
        else:
            assert I[j] >= 0
            want = true_distance(x, q, np.array([I0[j]]), ip)[0]
            assert true_distance(x, q, np.array([I[j]]), ip)[0] == pytest.approx(want, rel=1e-6, abs=1e-6)


# --- the property: any split, any order, any batching == index.search -------------------------------------


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_split_scans_equal_full_search(setup, data) -> None:
    metric, x, index, xq = setup
    ip = metric == "ip"
    threads = data.draw(st.sampled_from([1, 2]), label="threads")
    r = IVFRetriever(index, threads=threads)
    nprobe = data.draw(st.integers(1, 24), label="nprobe")
    qids = data.draw(st.lists(st.integers(0, len(xq) - 1), min_size=1, max_size=6, unique=True), label="queries")
    ks = data.draw(st.lists(st.sampled_from([1, 2, 5, 10, 50]), min_size=len(qids), max_size=len(qids)), label="k")
    Dq, Iq = r.assign(xq[qids], nprobe)
    states, stages = [], []
    for row, (qi, k) in enumerate(zip(qids, ks, strict=True)):
        clusters = data.draw(st.permutations(Iq[row].tolist()), label="order")
        cuts = sorted(data.draw(st.sets(st.integers(1, nprobe - 1), max_size=4), label="cuts")) if nprobe > 1 else []
        bounds = [0, *cuts, nprobe]
        stages.append([clusters[a:b] for a, b in itertools.pairwise(bounds)])
        states.append(r.start(xq[qi], k, coarse=(Dq[row], Iq[row])))
    # rounds: each scans the next sub-stage of a random nonempty subset of the unfinished queries
    while any(stages):
        live = [i for i, s in enumerate(stages) if s]
        pick = data.draw(st.lists(st.sampled_from(live), min_size=1, unique=True), label="batch")
        r.scan([states[i] for i in pick], [stages[i].pop(0) for i in pick])
    for row, (qi, k) in enumerate(zip(qids, ks, strict=True)):
        D0, I0 = r.search_full(xq[qi : qi + 1], k + 1, nprobe)
        assert states[row].scanned == set(Iq[row].tolist())
        assert_same_topk(states[row].result(), (D0[0], I0[0]), k, x, xq[qi], ip)
    # the shared index is left as it was
    assert index.parallel_mode == 0 and faiss.omp_get_max_threads() >= 1


def test_one_batched_call_equals_full_search(setup) -> None:
    metric, x, index, xq = setup
    r = IVFRetriever(index, threads=2)
    k, nprobe = 10, 16
    _, Iq = r.assign(xq, nprobe)
    states = [r.start(v, k) for v in xq]
    r.scan(states, [row[:5] for row in Iq])  # 64 rows >= threads: heaps continued in place (mode 3|1024)
    r.scan(states, [row[5:] for row in Iq])
    D0, I0 = r.search_full(xq, k + 1, nprobe)
    for i, s in enumerate(states):
        assert_same_topk(s.result(), (D0[i], I0[i]), k, x, xq[i], metric == "ip")


def test_exact_duplicates_tie_within_a_cluster(setup) -> None:
    _, x, index, _ = setup
    r = IVFRetriever(index, threads=1)
    q = x[3]  # stored twice: ids 3 and N_BASE + 3, same cluster, identical distance
    _, Iq = r.assign(q, 8)
    D0, I0 = r.search_full(q, 3, 8)
    assert {int(I0[0, 0]), int(I0[0, 1])} == {3, N_BASE + 3} and D0[0, 0] == D0[0, 1]
    for order in (Iq[0].tolist(), Iq[0][::-1].tolist()):
        s = r.start(q, 2)
        for c in order:
            r.scan([s], [[c]])
        D, I = s.result()  # noqa: E741
        np.testing.assert_array_equal(D, D0[0, :2])
        np.testing.assert_array_equal(I, I0[0, :2])  # FAISS's own tie order: L2 id ascending, IP descending


def test_coarse_distances_are_ignored_by_ivfflat(setup) -> None:
    _, _, index, xq = setup
    assert not index.by_residual
    nprobe = 8
    index.nprobe = nprobe
    try:
        Dq, Iq = index.quantizer.search(xq, nprobe)
        ref = index.search_preassigned(xq, 10, Iq, Dq)
        junk = np.random.default_rng(0).standard_normal(Dq.shape).astype(np.float32) * 100
        got = index.search_preassigned(xq, 10, Iq, junk)
    finally:
        index.nprobe = 1
    np.testing.assert_array_equal(got[0], ref[0])
    np.testing.assert_array_equal(got[1], ref[1])


def test_result_leaves_heap_and_empty_slots(setup) -> None:
    _, _, index, xq = setup
    r = IVFRetriever(index)
    sizes = r.list_sizes()
    assert sum(sizes) == index.ntotal and len(sizes) == r.nlist == NLIST
    _, Iq = r.assign(xq[0], 2)
    c0 = int(Iq[0, 0])
    k = sizes[c0] + 5  # more than one cluster holds
    s = r.start(xq[0], k)
    r.scan([s], [[c0]])
    heap = (s.D.copy(), s.I.copy())
    D, I = s.result()  # noqa: E741
    assert (I[: sizes[c0]] >= 0).all() and (I[sizes[c0] :] == -1).all()
    assert (np.abs(D[sizes[c0] :]) == np.finfo(np.float32).max).all()  # FAISS's neutral value
    np.testing.assert_array_equal(s.D, heap[0])
    np.testing.assert_array_equal(s.I, heap[1])
    index.nprobe = 1
    try:
        Dref, Iref = index.search_preassigned(xq[:1], k, Iq[:, :1], None)
    finally:
        index.nprobe = 1
    np.testing.assert_array_equal(I, Iref[0])
    np.testing.assert_array_equal(D, Dref[0])


def test_merge_keeps_best_k_and_faiss_can_continue(setup) -> None:
    metric, x, index, xq = setup
    ip = metric == "ip"
    r = IVFRetriever(index, threads=1)
    k, nprobe = 10, 12
    _, Iq = r.assign(xq[5], nprobe)
    s = r.start(xq[5], k)
    r.scan([s], [Iq[0, :4].tolist()])
    # merge the next 4 clusters' contents from outside (as the GPU cache does), unsorted
    ids = np.concatenate([cluster_vectors(index, int(c))[1] for c in Iq[0, 4:8]])
    dists = true_distance(x, xq[5], ids, ip).astype(np.float32)
    perm = np.random.default_rng(0).permutation(len(ids))
    s.merge(dists[perm], ids[perm])
    s.scanned.update(Iq[0, 4:8].tolist())
    r.scan([s], [Iq[0, 8:].tolist()])  # FAISS continues the merged heap in place
    D0, I0 = r.search_full(xq[5], k, nprobe)
    D, I = s.result()  # noqa: E741
    np.testing.assert_array_equal(I, I0[0])
    np.testing.assert_allclose(D, D0[0], rtol=1e-5, atol=1e-5)


def test_scan_refuses_bad_batches(setup) -> None:
    _, _, index, xq = setup
    r = IVFRetriever(index)
    s = r.start(xq[0], 5)
    r.scan([s], [[0, 1]])
    with pytest.raises(ValueError, match="already scanned"):
        r.scan([s], [[1, 2]])
    with pytest.raises(ValueError, match="twice in one batch"):
        r.scan([s, s], [[3], [4]])
    with pytest.raises(ValueError, match="listed twice"):
        r.scan([s], [[5, 5]])
    with pytest.raises(ValueError, match="out of range"):
        r.scan([s], [[NLIST]])
    r.scan([s], [[]])  # an empty sub-stage is a no-op
    with pytest.raises(ValueError):
        QueryTopK.empty(xq[0], 0, inner_product=True)


def test_residual_index_uses_assign_coarse_distances(base) -> None:
    """IVF,SQ8 encodes residuals (by_residual): the coarse distances from assign() are passed on."""
    x = base[:5000]
    index = faiss.index_factory(D_DIM, "IVF32,SQ8", faiss.METRIC_L2)
    index.train(x)
    index.add(x)
    r = IVFRetriever(index, threads=1)
    assert r.needs_coarse
    xq = x[:8] + 0.05
    nprobe, k = 6, 10
    Dq, Iq = r.assign(xq, nprobe)
    states = [r.start(v, k, coarse=(Dq[i], Iq[i])) for i, v in enumerate(xq)]
    r.scan(states, [row[3:] for row in Iq])
    r.scan(states, [row[:3] for row in Iq])
    D0, I0 = r.search_full(xq, k, nprobe)
    for i, s in enumerate(states):
        D, I = s.result()  # noqa: E741
        np.testing.assert_array_equal(I, I0[i])
        np.testing.assert_array_equal(D, D0[i])


# --- user index files ----------------------------------------------------------------------------------


def test_load_plain_ivf(tmp_path: Path, setup) -> None:
    _, _, index, xq = setup
    path = tmp_path / "user.index"
    faiss.write_index(index, str(path))
    loaded = load_index(path)
    assert isinstance(loaded, faiss.IndexIVFFlat) and loaded.ntotal == index.ntotal
    a, b = IVFRetriever(loaded).search_full(xq, 5, 8), IVFRetriever(index).search_full(xq, 5, 8)
    np.testing.assert_array_equal(a[1], b[1])


@pytest.mark.parametrize("wrapper", ["IDMap2", "IDMap"])
def test_load_idmap_keeps_external_ids(tmp_path: Path, base, wrapper: str) -> None:
    x = base[:4000]
    wrapped = faiss.index_factory(D_DIM, f"IVF32,Flat,{wrapper}")
    wrapped.train(x)
    ids = (np.random.default_rng(3).permutation(10**6)[: len(x)] * 7 + 11).astype(np.int64)
    wrapped.add_with_ids(x, ids)
    path = tmp_path / f"{wrapper}.index"
    faiss.write_index(wrapped, str(path))
    faiss.extract_index_ivf(wrapped).nprobe = 6
    D0, I0 = wrapped.search(x[:20] + 0.01, 5)
    del wrapped
    ivf = load_index(path)  # the wrapper read from the file is dropped; the IVF must outlive it
    gc.collect()
    assert isinstance(ivf, faiss.IndexIVFFlat)
    D, I = IVFRetriever(ivf).search_full(x[:20] + 0.01, 5, 6)  # noqa: E741
    np.testing.assert_array_equal(I, I0)
    np.testing.assert_array_equal(D, D0)
    vecs, cids = cluster_vectors(ivf, 0)
    pos = {int(v): j for j, v in enumerate(ids)}
    np.testing.assert_array_equal(vecs, x[[pos[int(i)] for i in cids]])


def test_load_refuses_pretransform_and_non_ivf(tmp_path: Path, base) -> None:
    x = base[:1000]
    pre = faiss.index_factory(D_DIM, "RR384,IVF16,Flat")  # a random rotation: same dimension, other space
    pre.train(x)
    pre.add(x)
    faiss.write_index(pre, str(tmp_path / "pca.index"))
    with pytest.raises(ValueError, match=r"pca\.index: IndexPreTransform wraps an IVF index") as e1:
        load_index(tmp_path / "pca.index")
    faiss.write_index(faiss.IndexFlatL2(D_DIM), str(tmp_path / "flat.index"))
    with pytest.raises(ValueError, match=r"flat\.index: IndexFlatL2 is not an IVF index") as e2:
        load_index(tmp_path / "flat.index")
    (tmp_path / "junk.index").write_bytes(b"definitely not faiss")
    with pytest.raises(ValueError, match=r"junk\.index: not a readable FAISS index") as e3:
        load_index(tmp_path / "junk.index")
    for e in (e1, e2, e3):
        assert "\n" not in str(e.value)
    with pytest.raises(FileNotFoundError, match=r"missing\.index"):
        load_index(tmp_path / "missing.index")


def test_cluster_vectors_cover_the_index(setup) -> None:
    _, x, index, _ = setup
    seen = []
    for c in range(index.nlist):
        vecs, ids = cluster_vectors(index, c)
        assert vecs.dtype == np.float32 and ids.dtype == np.int64 and vecs.shape == (len(ids), D_DIM)
        np.testing.assert_array_equal(vecs, x[ids])
        seen.append(ids)
    assert np.array_equal(np.sort(np.concatenate(seen)), np.arange(index.ntotal))
    sq = faiss.index_factory(D_DIM, "IVF4,SQ8")
    sq.train(x[:500])
    with pytest.raises(TypeError, match="IndexIVFFlat"):
        cluster_vectors(sq, 0)
    with pytest.raises(TypeError, match="IndexIVF"):
        IVFRetriever(faiss.IndexFlatL2(D_DIM))


# --- seeded searches (ScanTask.seed: the request's previous top-20) ---------------------------------------


def test_seeded_search_has_the_unseeded_result(setup) -> None:
    metric, x, index, xq = setup
    ip = metric == "ip"
    r = IVFRetriever(index)
    rng = np.random.default_rng(7)
    nprobe, k = 16, 10
    for q in xq[:16]:
        _, Iq = r.assign(q, nprobe)
        probe = Iq[0].tolist()
        # the "previous query" of the same request: a nearby vector's top-20, plus ids from anywhere
        prev = q + 0.05 * rng.standard_normal(D_DIM).astype(np.float32)
        _, prev_top = r.search_full(prev, 20, nprobe)
        seeds = [*prev_top[0][prev_top[0] >= 0].tolist(), *rng.integers(0, len(x), 10).tolist()]
        seeded = r.start(q, k)
        r.seed(seeded, seeds, probe)
        before = seeded.ids()
        outside = {int(i) for i in seeds} - set(r.id_lists.ids[np.isin(r.id_lists.lists, probe)].tolist())
        assert not outside & set(before), "a seed outside the probe lists was merged"
        for part in (probe[:5], probe[5:9], probe[9:]):
            r.scan([seeded], [part])
        got = seeded.result()
        D0, I0 = r.search_full(q, k + 1, nprobe)
        assert_same_topk(got, (D0[0], I0[0]), k, x, q, ip)
        final = set(got[1].tolist())
        assert final & set(seeds) <= set(before), "a seed in the final top-k was not in the seeded heap"
        # the seeded heap holds the final members first, in final order (SearchTruth.partial_topk)
        lead = [i for i in before if i in final]
        assert lead == [i for i in got[1].tolist() if i in lead]
        assert before[: len(lead)] == tuple(lead)


def test_seeding_after_a_scan_is_refused(setup) -> None:
    _, _, index, xq = setup
    r = IVFRetriever(index)
    q = r.start(xq[0], 5)
    r.scan([q], [[0]])
    with pytest.raises(ValueError, match="first scan"):
        r.seed(q, [1, 2], [0, 1])
