"""The GPU cluster cache (backends.gpu_cache) on torch CPU: cache scans + FAISS scans == one FAISS search.

Same real-ish index as tests/test_ivf.py: 20,000 clustered vectors of dimension 384 plus exact
duplicates, IndexIVFFlat nlist 128, inner product (normalised) and L2 (raw vectors). The cache
runs with device="cpu": the same code as on CUDA, with plain copies instead of pinned
asynchronous ones.
"""

from __future__ import annotations

import numpy as np
import pytest

faiss = pytest.importorskip("faiss", reason="faiss is not installed (pip install faiss-cpu): real IVF backend")
torch = pytest.importorskip("torch", reason="torch is not installed: the GPU cluster cache needs it")
pytest.importorskip("hypothesis")

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from backends.gpu_cache import ClusterCache  # noqa: E402
from backends.ivf import IVFRetriever, cluster_vectors  # noqa: E402

D_DIM = 384
N_BASE = 20_000
N_DUP = 40
NLIST = 128
# fp32 matmul distances vs FAISS's kernels, observed on this index: up to 4e-7 for IP (unit vectors)
# and up to 4e-4 for L2 (|q|^2 - 2q.x + |x|^2 with squared distances ~170-500), i.e. ~6e-7 relative
# to |q|^2 + the largest distance. A fixed 1e-5 absolute gap would be too tight for L2; tolerance:
RTOL = 1e-5


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """faiss and torch single-threaded outside the code under test: on a 2-core machine shared with
    other work, 2-thread OpenMP regions stall for scheduler ticks (torch CPU ops take ~10 ms)."""
    before = faiss.omp_get_max_threads(), torch.get_num_threads()
    faiss.omp_set_num_threads(1)
    torch.set_num_threads(1)
    yield
    faiss.omp_set_num_threads(before[0])
    torch.set_num_threads(before[1])


def make_data(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((200, D_DIM)).astype(np.float32)
    x = centers[rng.integers(0, len(centers), N_BASE)] + 0.5 * rng.standard_normal((N_BASE, D_DIM)).astype(np.float32)
    return np.vstack([x, x[:N_DUP]])


@pytest.fixture(scope="module", params=["ip", "l2"])
def setup(request):
    x = make_data()
    mt = faiss.METRIC_INNER_PRODUCT if request.param == "ip" else faiss.METRIC_L2
    if request.param == "ip":
        faiss.normalize_L2(x)
    index = faiss.IndexIVFFlat(faiss.IndexFlat(D_DIM, mt), D_DIM, NLIST, mt)
    index.train(x[:N_BASE])
    index.add(x)
    rng = np.random.default_rng(1)
    src = np.concatenate([rng.integers(0, N_DUP, 16), rng.integers(0, N_BASE, 48)])
    xq = x[src] + 0.05 * rng.standard_normal((len(src), D_DIM)).astype(np.float32)
    if request.param == "ip":
        faiss.normalize_L2(xq)
    return request.param, x, index, xq


def tolerance(D0: np.ndarray, q: np.ndarray, ip: bool) -> float:
    """Absolute distance tolerance for fp32 matmul vs FAISS: RTOL times the magnitudes involved."""
    scale = 1.0 if ip else float(q @ q) + float(np.abs(D0[np.abs(D0) < 1e30]).max(initial=0.0)) + 1.0
    return RTOL * scale


def assert_close_topk(got: tuple[np.ndarray, np.ndarray], ref: tuple[np.ndarray, np.ndarray], k: int,
                      x: np.ndarray, q: np.ndarray, ip: bool) -> None:
    """`got` (k) vs `ref` (index.search with k+1): distances within the tolerance; ids equal wherever
    the reference distance is more than the tolerance away from its neighbours (the (k+1)-th
    included); elsewhere (near-ties the two arithmetics may order differently) each returned id's
    exact distance must match the reference distance at its place."""
    D, I = got  # noqa: E741
    D0, I0 = ref
    tol = tolerance(D0, q, ip)
    np.testing.assert_allclose(D, D0[:k], rtol=0, atol=tol)
    valid = I >= 0
    assert len(set(I[valid].tolist())) == int(valid.sum()), "duplicate ids"
    for j in range(k):
        near = (j > 0 and abs(D0[j] - D0[j - 1]) <= tol) or (j + 1 < len(D0) and abs(D0[j + 1] - D0[j]) <= tol)
        if not near or I0[j] < 0:
            assert I[j] == I0[j], (j, I, I0)
        else:
            v = x[I[j]].astype(np.float64)
            exact = float(v @ q) if ip else float(((v - q.astype(np.float64)) ** 2).sum())
            assert abs(exact - D0[j]) <= 2 * tol, (j, exact, D0[j])


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_cache_plus_cpu_scans_equal_full_search(setup, data) -> None:
    metric, x, index, xq = setup
    ip = metric == "ip"
    r = IVFRetriever(index, threads=data.draw(st.sampled_from([1, 2]), label="threads"))
    nprobe = data.draw(st.integers(1, 20), label="nprobe")
    qids = data.draw(st.lists(st.integers(0, len(xq) - 1), min_size=1, max_size=5, unique=True), label="queries")
    ks = data.draw(st.lists(st.sampled_from([1, 3, 10, 40]), min_size=len(qids), max_size=len(qids)), label="k")
    _, Iq = r.assign(xq[qids], nprobe)
    hot = set(data.draw(st.sets(st.sampled_from(sorted(set(Iq.ravel().tolist()))), max_size=12), label="hot"))
    chunk = data.draw(st.sampled_from([100, 1000, 1 << 17]), label="chunk_vectors")  # 100: every cluster alone
    cache = ClusterCache(index, device="cpu", capacity_vectors=index.ntotal, chunk_vectors=chunk)
    assert set(cache.load(sorted(hot))) == hot
    states = [r.start(xq[qi], k) for qi, k in zip(qids, ks, strict=True)]
    steps = []  # (query row, "gpu" | "cpu", clusters)
    for row in range(len(qids)):
        clusters = data.draw(st.permutations(Iq[row].tolist()), label="order")
        cached = [c for c in clusters if c in hot]
        cpu = [c for c in clusters if c not in hot]
        cut = data.draw(st.integers(0, len(cpu)), label="cpu split")
        parts = [("cpu", cpu[:cut]), ("gpu", cached), ("cpu", cpu[cut:])]
        steps.append([(lane, cs) for lane, cs in data.draw(st.permutations(parts), label="lanes") if cs])
    while any(steps):
        live = [i for i, s in enumerate(steps) if s]
        lane = data.draw(st.sampled_from(sorted({steps[i][0][0] for i in live})), label="lane")
        pick = [i for i in live if steps[i][0][0] == lane]
        pick = data.draw(st.lists(st.sampled_from(pick), min_size=1, unique=True), label="batch")
        batch = ([states[i] for i in pick], [steps[i].pop(0)[1] for i in pick])
        (cache.search if lane == "gpu" else r.scan)(*batch)
    for row, (qi, k) in enumerate(zip(qids, ks, strict=True)):
        assert states[row].scanned == set(Iq[row].tolist())
        D0, I0 = r.search_full(xq[qi : qi + 1], k + 1, nprobe)
        assert_close_topk(states[row].result(), (D0[0], I0[0]), k, x, xq[qi], ip)


@pytest.mark.parametrize("chunk_vectors", [2000, 1 << 17])
def test_all_from_cache_batched(setup, chunk_vectors: int) -> None:
    """Every probed cluster from the cache, 64 queries in one call (clusters shared between queries)."""
    metric, x, index, xq = setup
    r = IVFRetriever(index)
    k, nprobe = 10, 8
    _, Iq = r.assign(xq, nprobe)
    cache = ClusterCache(index, device="cpu", capacity_vectors=index.ntotal, chunk_vectors=chunk_vectors)
    cache.load(sorted(set(Iq.ravel().tolist())))
    states = [r.start(v, k) for v in xq]
    cache.search(states, [row.tolist() for row in Iq])
    D0, I0 = r.search_full(xq, k + 1, nprobe)
    for i, s in enumerate(states):
        assert_close_topk(s.result(), (D0[i], I0[i]), k, x, xq[i], metric == "ip")


def test_load_evict_capacity(setup) -> None:
    _, _, index, _ = setup
    sizes = [int(index.invlists.list_size(c)) for c in range(NLIST)]
    order = sorted(range(NLIST), key=lambda c: -sizes[c])
    big, small = order[0], order[-1]
    cap = sizes[big] + sizes[small]
    cache = ClusterCache(index, device="cpu", capacity_vectors=cap)
    assert cache.capacity_vectors == cap and cache.used_vectors == 0 and cache.resident == frozenset()
    assert cache.load([big, order[1], small]) == (big, small)  # order[1] does not fit after big: skipped
    assert cache.resident == {big, small} and cache.used_vectors == cap
    assert cache.load([big]) == (big,)  # already resident: stays, no double count
    assert cache.used_vectors == cap
    assert cache.load([order[1]], evict=[big]) == (order[1],)
    assert cache.resident == {order[1], small}
    assert cache.used_vectors == sizes[order[1]] + sizes[small]
    assert cache.ready(small)
    cache.synchronize()
    vecs, ids = cluster_vectors(index, small)
    e = cache._entries[small]
    np.testing.assert_array_equal(e.vectors.numpy(), vecs)
    np.testing.assert_array_equal(e.ids.numpy(), ids)
    cache.evict([small, 12345])  # unknown ids are ignored
    assert cache.resident == {order[1]}
    with pytest.raises(ValueError, match="out of range"):
        cache.load([NLIST])
    tiny = ClusterCache(index, device="cpu", capacity_vectors=0)
    assert tiny.load(order) == tuple(c for c in order if sizes[c] == 0)


def test_search_refuses_bad_batches(setup) -> None:
    _, _, index, xq = setup
    r = IVFRetriever(index)
    cache = ClusterCache(index, device="cpu", capacity_vectors=index.ntotal)
    cache.load([0, 1])
    s = r.start(xq[0], 5)
    with pytest.raises(ValueError, match="not resident"):
        cache.search([s], [[0, 2]])
    cache.search([s], [[0]])
    with pytest.raises(ValueError, match="already scanned"):
        cache.search([s], [[0, 1]])
    with pytest.raises(ValueError, match="already scanned"):
        r.scan([s], [[0]])  # the CPU path knows the cache scanned it
    with pytest.raises(ValueError, match="twice in one batch"):
        cache.search([s, s], [[1], [1]])
    cache.search([s], [[]])  # nothing to do
    sq = faiss.index_factory(D_DIM, "IVF4,SQ8")
    sq.train(xq)
    with pytest.raises(TypeError, match="IndexIVFFlat"):
        ClusterCache(sq, device="cpu", capacity_vectors=10)


def test_cuda_device_is_refused_without_cuda(setup) -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    _, _, index, _ = setup
    with pytest.raises(RuntimeError, match="no CUDA device"):
        ClusterCache(index, device="cuda", capacity_vectors=10)


def test_observed_precision_matches_documented_tolerance(setup) -> None:
    """Keep RTOL honest: matmul distances for the probed clusters vs FAISS's, on all 64 queries."""
    metric, _, index, xq = setup
    r = IVFRetriever(index)
    _, Iq = r.assign(xq, 4)
    cache = ClusterCache(index, device="cpu", capacity_vectors=index.ntotal)
    cache.load(sorted(set(Iq.ravel().tolist())))
    worst = 0.0
    for start in range(0, len(xq), 16):
        rows = list(range(start, min(start + 16, len(xq))))
        a = [r.start(xq[i], 20) for i in rows]
        b = [r.start(xq[i], 20) for i in rows]
        cache.search(a, [Iq[i].tolist() for i in rows])
        r.scan(b, [Iq[i].tolist() for i in rows])
        for i, qa, qb in zip(rows, a, b, strict=True):
            Da, _ = qa.result()
            Db, _ = qb.result()
            worst = max(worst, float(np.abs(Da - Db).max()) / tolerance(Db, xq[i], metric == "ip"))
    assert worst < 1.0, f"matmul vs FAISS distance gap is {worst:.2f} x the tolerance"


def test_masked_places_never_leak(setup) -> None:
    """A query asking for fewer vectors than k, in a chunk shared with other clusters and queries:
    only its own cluster's vectors come back, the rest stays empty (as FAISS leaves it)."""
    metric, _, index, xq = setup
    r = IVFRetriever(index)
    _, Iq = r.assign(xq[:2], 3)
    mine, others = int(Iq[0, 0]), [int(c) for c in Iq[1] if c != Iq[0, 0]]
    size = int(index.invlists.list_size(mine))
    cache = ClusterCache(index, device="cpu", capacity_vectors=index.ntotal)
    cache.load([mine, *others])
    a, b = r.start(xq[0], size + 10), r.start(xq[1], 5)
    cache.search([a, b], [[mine], others])
    D, I = a.result()  # noqa: E741
    assert set(I[:size].tolist()) == set(cluster_vectors(index, mine)[1].tolist())
    assert (I[size:] == -1).all() and (np.abs(D[size:]) == np.finfo(np.float32).max).all()
    ref = r.start(xq[0], size + 10)
    r.scan([ref], [[mine]])
    Dref, _ = ref.result()
    np.testing.assert_allclose(D[:size], Dref[:size], rtol=0, atol=tolerance(Dref, xq[0], metric == "ip"))


def test_calibration_profiles_the_cache_copies_and_scans(setup):
    """`hedra calibrate --backend gpu` times the cache's copies (pcie) and scans (gpu_retrieval)
    and fits `latency + bytes / rate` to each; here on CPU torch, the same code path."""
    from calibration.calibrate import fit_transfer
    from calibration.profiler import GPU_SCAN_QUERIES, TRANSFER_CLUSTERS, profile_gpu_cache

    _, _, index, _ = setup
    sizes = IVFRetriever(index).list_sizes()
    cache = ClusterCache(index, device="cpu", capacity_vectors=index.ntotal)
    rows = profile_gpu_cache(cache, sizes, index.d * 4, repeats=1)
    copies = [r for r in rows if r["kind"] == "pcie_copy"]
    scans = [r for r in rows if r["kind"] == "gpu_search"]
    assert len(copies) == len(TRANSFER_CLUSTERS) and len(scans) == len(TRANSFER_CLUSTERS) * len(GPU_SCAN_QUERIES)
    for r in copies:  # the bytes are those of the clusters copied
        assert r["bytes"] > 0 and r["bytes"] % (index.d * 4) == 0 and r["seconds"] > 0
    for fit in (fit_transfer(copies), fit_transfer(scans)):
        latency, per_byte = fit.coef
        assert latency >= 0 and per_byte > 0  # more bytes take longer
    assert fit_transfer([]) is None
