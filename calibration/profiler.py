"""Profiling the real body on a designed grid: engine steps and retrieval search calls.

The grid is designed, not sampled from the traces a profile is later validated on:

- **engine**: for each batch size B and prompt length P of `ENGINE_GRID`, B sequences of P
  prompt tokens and `ENGINE_OUTPUT` output tokens are admitted at once and stepped to the
  end, so every step from the prefill chunks (token budget) to the last decode is
  measured; `STAGGER_GRID` cases admit a sequence every few steps into a running batch,
  which gives the mixed prefill + decode steps that real traces have. `KERNEL_PASSES` cases run
  one-request prefills of many sizes not met before, each twice over, which shows what a step
  of a size whose kernels are not compiled adds and how many sizes stay compiled
  (`hwmodel.latency.KernelSizes`). Each step is timed as
  the real executor times it (`apply` + `step`), and reports its prefill tokens, scheduled
  sequences and KV context, the features of `hwmodel.latency.gen_step_s`.
- **retrieval**: for each (queries per call, lists per query, query text length) of
  `SEARCH_GRID` x `TEXT_CHARS`, one call whose queries start (embedding + scan) and one that
  continues them (scan only), through the same retrieval body the lane runs (on the CPU,
  the retrieval worker process); each call reports the features of `hwmodel.latency.LatencyModel.search_s`
  (its texts' lengths in the embedder's tokens, counted by `text_tokens`: the body's own counter).
  A call embeds its new queries in one model call: the mixed cell's short texts padded to its
  long ones are what tell a padded token's cost from a text token's, and those two terms put
  the cut where the bodies later split a call's texts into model calls
  (`SearchModel.embed_call_tokens`).

Each function returns rows (plain dicts: the grid cell, the features, the measured
seconds) that `calibration.calibrate` fits and stores in the profile.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from itertools import pairwise
from typing import TYPE_CHECKING, Any

import numpy as np

from ragraph.graph import Request, Retrieve, chain
from ragraph.work import GenStep, GenTask, ScanTask, SearchBatch

if TYPE_CHECKING:
    from backends.executor import RetrievalBody
    from backends.vllm_engine import VLLMEngine

ENGINE_GRID = ((1, 32), (1, 512), (1, 2048), (4, 128), (4, 1024), (8, 32), (8, 512), (16, 256), (16, 1024),
               (32, 64), (32, 512), (64, 32), (64, 256), (128, 64), (128, 512), (256, 32))  # (B, P)
ENGINE_OUTPUT = 24  # output tokens per sequence: enough decode steps per cell
STAGGER_GRID = ((8, 256, 3), (32, 128, 2), (64, 512, 4))  # (sequences, prompt tokens, steps between admissions)
# distinct prompt sizes run one request at a time, in a shuffled order, then again in the same order: a
# size still compiled the second time is within the engine's kernel cache (a few hundred sizes here).
# Passes 64 sizes apart, so the fit can tell the cache's size within 64 (with 96 and 288 alone every size
# from 96 to 287 fitted the same: the fit chose 128 and 256 an hour apart, and the replays' admissions
# ran 1.01x and 1.10-1.18x their price)
KERNEL_PASSES = (96, 160, 224, 288)
KERNEL_SIZE_RANGE = (130, 1100)  # drawn from here, avoiding the grid's own sizes
SEARCH_GRID = ((1, 1), (1, 8), (1, 32), (2, 4), (4, 2), (4, 16), (8, 1), (8, 8), (8, 32), (16, 4), (16, 16),
               (32, 1), (32, 8), (32, 32))  # (queries per call, lists per query and call)
# query text lengths: questions, hypothetical documents, question + passage; 0: a mix of 40 and 700
# in one call (a question beside IRG queries: padding to the longest, tokenizing each)
TEXT_CHARS = (30, 60, 150, 350, 700, 0)
MIXED_CHARS = (40, 700)
REPEATS = 2

Progress = Callable[[str], None]
Row = dict[str, float | int | str]


def _quiet(msg: str) -> None:
    pass


# --- the engine ----------------------------------------------------------------------------------

def _run_to_end(engine: VLLMEngine, admissions: dict[int, list[GenTask]], cell: str, rows: list[Row]) -> None:
    """Step `engine` until every admitted task is done; `admissions[i]` join before step i."""
    pending = sum(len(t) for t in admissions.values())
    step_no = 0
    while pending:
        admit = tuple(admissions.get(step_no, ()))
        t0 = time.perf_counter()
        engine.apply(GenStep(admit=admit))
        res = engine.step()
        seconds = time.perf_counter() - t0
        if res.rejected:
            raise RuntimeError(f"calibration cell {cell}: the engine refused {res.rejected[0]}")
        pending -= len(res.finished)
        step_no += 1
        if res.running:
            rows.append({"kind": "engine_step", "cell": cell, "admitted": res.admitted,
                         "admitted_tokens": res.admitted_tokens, "prefill_attention": res.prefill_attention,
                         "prefill_tokens": res.prefill_tokens, "computed_tokens": res.computed_tokens,
                         "seqs": res.running, "decode_tokens": res.decode_tokens,
                         "context_tokens": res.context_tokens, "seconds": seconds})
        if step_no > 100_000:
            raise RuntimeError(f"calibration cell {cell}: the engine did not finish")


def profile_engine(engine: VLLMEngine, *, repeats: int = REPEATS, grid: Sequence[tuple[int, int]] = ENGINE_GRID,
                   stagger: Sequence[tuple[int, int, int]] = STAGGER_GRID, output_tokens: int = ENGINE_OUTPUT,
                   kernel_passes: Sequence[int] = KERNEL_PASSES, progress: Progress = _quiet) -> list[Row]:
    """Time engine steps over the grid (see the module docstring); unique prompts, so the
    prefix cache never serves them."""
    rows: list[Row] = []
    serial = 0

    def tasks(n: int, prompt: int) -> list[GenTask]:
        nonlocal serial
        serial += 1
        return [GenTask((f"calibrate-{serial}", i), prompt, output_tokens, "", 0) for i in range(n)]

    _run_to_end(engine, {0: tasks(1, 16)}, "warm-up", [])
    cells = [(f"B{b}-P{p}", {0: (b, p)}) for b, p in grid]
    cells += [(f"stagger{n}-P{p}-every{k}", {i * k: (1, p) for i in range(n)}) for n, p, k in stagger]
    for r in range(repeats):
        for i, (cell, plan) in enumerate(cells):
            progress(f"engine: cell {i + 1}/{len(cells)} ({cell}), pass {r + 1}/{repeats}")
            _run_to_end(engine, {step: tasks(b, p) for step, (b, p) in plan.items()}, cell, rows)
    used = {p for _, p in grid} | {p for _, p, _ in stagger} | {b * p for b, p in grid}
    sizes = [n for n in range(*KERNEL_SIZE_RANGE) if n not in used]
    np.random.default_rng(0).shuffle(sizes)
    for count in kernel_passes:
        batch, sizes = sizes[:count], sizes[count:]
        for rerun in ("first", "again"):
            progress(f"engine: {count} step sizes, {rerun}")
            for p in batch:
                _run_to_end(engine, {0: [GenTask((f"calibrate-sizes-{rerun}", p), p, 1, "", 0)]},
                            f"sizes{count}-{rerun}", rows)
    return rows


ENGINE_COLD_PROMPT = 200  # tokens: a question with its passages, one request (a replay's admission at low load)


def profile_engine_cold(engine: VLLMEngine, *, calls: int = 8, gaps: Sequence[float] | None = None,
                        prompt: int = ENGINE_COLD_PROMPT, between: Callable[[], object] | None = None,
                        progress: Progress = _quiet) -> list[Row]:
    """One-request admissions after the engine sat idle for each of `gaps` (default
    `COLD_GAPS_S`): at low load the engine idles between requests, and the step that admits the
    next one ran 1.5x its price in replays after 2-100 ms idle (1.16-1.35x back to back).
    `between()` runs at the end of each idle spell, as the retrieval lane's search runs while
    the engine waits for the request it admits next (`other_lane_search`): on a machine whose
    cores share a cache, the other lane's work is most of what makes an idle engine cold. Rows of
    kind `engine_cold` with `idle_s`, the spell with `between` in it: the admission step only (the
    request's last step ends it)."""
    rows: list[Row] = []
    for gap in COLD_GAPS_S if gaps is None else gaps:
        progress(f"engine: one-request admissions after {gap * 1e3:.0f} ms idle"
                 + (" and a search call" if between is not None else ""))
        for j in range(calls):
            steps: list[Row] = []
            idle = _idle_spell(gap, between)
            _run_to_end(engine, {0: [GenTask((f"engine-cold-{gap}-{j}", 0), prompt, 2, "", 0)]},
                        f"idle{gap * 1e3:g}ms", steps)
            rows.append({**steps[0], "kind": "engine_cold", "idle_s": idle})
    return rows


def _idle_spell(gap: float, between: Callable[[], object] | None) -> float:
    """Leave a lane idle for `gap` seconds, then run the other lane's `between()`; the seconds
    the lane sat idle (`gap` itself without `between`)."""
    t0 = time.perf_counter()
    time.sleep(gap)
    if between is None:
        return gap
    between()
    return time.perf_counter() - t0


def other_lane_generation(engine: VLLMEngine, *, prompt: int = ENGINE_COLD_PROMPT,
                          output_tokens: int = 8) -> Callable[[], None]:
    """A `between` for `profile_cold`: each call runs one request (`prompt` tokens, then
    `output_tokens`) on the engine to its end, as the engine serves the previous request while
    the retrieval lane waits for the next."""
    serial = iter(range(1 << 62))

    def generate() -> None:
        _run_to_end(engine, {0: [GenTask((f"between-{next(serial)}", 0), prompt, output_tokens, "", 0)]},
                    "between", [])
    return generate


# --- retrieval -----------------------------------------------------------------------------------

def _texts_of_length(source: Sequence[str], chars: int, n: int, rng: np.random.Generator) -> list[str]:
    """`n` texts of about `chars` characters cut from `source` (corpus passages) at word ends
    (`chars` 0: alternately `MIXED_CHARS`)."""
    out = []
    for j, i in enumerate(rng.integers(0, len(source), size=n)):
        text = source[int(i)]
        want = chars or MIXED_CHARS[j % 2]
        while len(text) < want:
            text += " " + source[int(rng.integers(len(source)))]
        cut = text.rfind(" ", 0, want)
        out.append(text[: cut if cut > want // 2 else want])
    return out


def profile_search(begin: Callable[[list[Request]], RetrievalBody], list_sizes: Sequence[int],
                   passages: Sequence[str], text_tokens: Callable[[str], int], *, repeats: int = REPEATS,
                   grid: Sequence[tuple[int, int]] = SEARCH_GRID,
                   text_chars: Sequence[int] = TEXT_CHARS, k: int = 1, seed: int = 0,
                   progress: Progress = _quiet) -> list[Row]:
    """Time search calls over the grid (module docstring) through the retrieval body the lane
    runs: `begin(requests)` is `RealBackend.retrieval_body` (on the CPU, the worker process)."""
    rng = np.random.default_rng(seed)
    sizes = list(list_sizes)
    nlist = len(sizes)
    rows: list[Row] = []
    cells = [(q, c, chars) for q, c in grid for chars in text_chars]
    for r in range(-1, repeats):  # pass -1 warms up the embedder and the caches; its rows are dropped
        for i, (queries, per_call, chars) in enumerate(cells if r >= 0 else cells[:3]):
            progress(f"retrieval: cell {i + 1}/{len(cells)} ({queries} queries x {per_call} lists,"
                     f" {chars}-char text), pass {r + 1}/{repeats}")
            per_call = min(per_call, nlist // 2)
            texts = _texts_of_length(passages, chars, queries, rng)
            probe_lists = [tuple(int(x) for x in rng.choice(nlist, 2 * per_call, replace=False)) for _ in texts]
            requests: list[Request] = [chain(f"calibrate-{r}-{i}-{j}", 0.0, "calibrate",
                                             [Retrieve(len(lists), k, lists, query=text)])
                                       for j, (text, lists) in enumerate(zip(texts, probe_lists, strict=True))]
            service = begin(requests)
            for part in (0, 1):  # the queries' first sub-stage (embed + scan), then a continuation (scan)
                tasks = tuple(ScanTask(key=(req.id, 0), clusters=lists[part * per_call:(part + 1) * per_call],
                                       k=k, first=part == 0, last=part == 1,
                                       embed_tokens=text_tokens(text) if part == 0 else 0)
                              for req, lists, text in zip(requests, probe_lists, texts, strict=True))
                batch = SearchBatch(tasks)  # one model call (module docstring)
                t0 = time.perf_counter()
                service.search(batch)
                seconds = time.perf_counter() - t0
                cell = f"q{queries}-c{per_call}-t{chars}-{'new' if part == 0 else 'cont'}"
                if r >= 0:
                    rows.append({"kind": "search_call", "cell": cell, **batch.timeline_args(sizes),
                                 "seconds": seconds})
            for req in requests:
                service.forget(req.id)
    return rows


# --- the executor's own time -----------------------------------------------------------------------

BACK_TO_BACK_S = 0.001  # a gap shorter than this between two items of a lane: the lane had more work


def dispatch_gaps(timeline: Sequence[tuple[str, str, float, float, dict]]) -> list[Row]:
    """Per lane, the gaps between consecutive items that ran back to back (the scheduler core's
    `complete` and `next_work` between them): rows of kind `dispatch_gap`, each with the
    sequences the engine step before it ran (`running`; 0 after a search call)."""
    by_lane: dict[str, list[tuple[float, float, int]]] = {}
    for lane, _name, start, dur, args in timeline:
        by_lane.setdefault(lane, []).append((start, dur, int(args.get("running", 0))))
    rows: list[Row] = []
    for lane, items in sorted(by_lane.items()):
        items.sort()
        for (s0, d0, running), (s1, _, _) in pairwise(items):
            gap = s1 - (s0 + d0)
            if 0 <= gap < BACK_TO_BACK_S:
                rows.append({"kind": "dispatch_gap", "cell": lane, "seconds": gap, "running": running})
    return rows


# --- the GPU cluster cache: host-to-device copies and GPU scans ------------------------------------

TRANSFER_CLUSTERS = (1, 2, 4, 8, 16, 32, 64)  # clusters per copy, and per query in a GPU scan
GPU_SCAN_QUERIES = (1, 8, 32)


def profile_gpu_cache(cache: Any, list_sizes: Sequence[int], bytes_per_vector: int, *, repeats: int = REPEATS,
                      seed: int = 0, progress: Progress = _quiet) -> list[Row]:
    """Time copies of clusters into `cache` (a `backends.gpu_cache.ClusterCache`: the pcie
    lane's work) and scans of resident clusters (the gpu_retrieval lane's), over
    `TRANSFER_CLUSTERS` x `GPU_SCAN_QUERIES`; each waits for the device before the clock stops.
    Rows of kind `pcie_copy` and `gpu_search` with the bytes moved or scanned."""
    from backends.ivf import QueryTopK

    rng = np.random.default_rng(seed)
    nlist = len(list_sizes)
    rows: list[Row] = []
    for r in range(repeats):
        for n in TRANSFER_CLUSTERS:
            progress(f"gpu cache: copies and scans of {n} clusters, pass {r + 1}/{repeats}")
            clusters = [int(c) for c in rng.choice(nlist, min(n, nlist), replace=False)]
            cache.evict(list(cache.resident))
            t0 = time.perf_counter()
            cache.load(clusters)
            cache.synchronize()
            seconds = time.perf_counter() - t0
            nbytes = sum(list_sizes[c] for c in clusters) * bytes_per_vector
            rows.append({"kind": "pcie_copy", "cell": f"c{n}", "clusters": len(clusters), "bytes": nbytes,
                         "seconds": seconds})
            for q in GPU_SCAN_QUERIES:
                states = [QueryTopK.empty(rng.standard_normal(cache.d).astype(np.float32), 1,
                                          inner_product=cache.inner_product) for _ in range(q)]
                t0 = time.perf_counter()
                cache.search(states, [clusters] * q)
                cache.synchronize()
                seconds = time.perf_counter() - t0
                rows.append({"kind": "gpu_search", "cell": f"q{q}-c{n}", "queries": q, "bytes": nbytes * q,
                             "seconds": seconds})
    return rows


# --- a cold embedder: calls after the lane sat idle ----------------------------------------------------

COLD_GAPS_S = (0.0, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2)  # idle time before a call
COLD_CALLS = 12  # one-query calls per gap


def profile_cold(begin: Callable[[list[Request]], RetrievalBody], list_sizes: Sequence[int],
                 passages: Sequence[str], text_tokens: Callable[[str], int], *, calls: int = COLD_CALLS,
                 gaps: Sequence[float] = COLD_GAPS_S, between: Callable[[], object] | None = None,
                 seed: int = 1, progress: Progress = _quiet) -> list[Row]:
    """One-query first sub-stages (a question of about 40 characters, 4 lists) after the lane
    sat idle for each of `gaps`: in a replay the retrieval lane idles between sparse arrivals,
    and an embedding after an idle spell runs slower than back to back (measured here: 10.6 ms
    back to back, 14-15 ms after 30-100 ms idle). `between()` runs at the end of each spell (the
    engine's work meanwhile: `other_lane_generation`), as in `profile_engine_cold`. Rows of kind
    `search_cold` with `idle_s`."""
    rng = np.random.default_rng(seed)
    sizes = list(list_sizes)
    rows: list[Row] = []
    for gap in gaps:
        progress(f"retrieval: one-query calls after {gap * 1e3:.0f} ms idle"
                 + (" and a generation" if between is not None else ""))
        for j, text in enumerate(_texts_of_length(passages, 40, calls, rng)):
            lists = tuple(int(x) for x in rng.choice(len(sizes), min(4, len(sizes)), replace=False))
            req, batch = _one_query(f"cold-{gap}-{j}", text, lists, text_tokens)
            service = begin([req])
            idle = _idle_spell(gap, between)
            t0 = time.perf_counter()
            service.search(batch)
            seconds = time.perf_counter() - t0
            rows.append({"kind": "search_cold", "cell": f"idle{gap * 1e3:g}ms", "idle_s": idle,
                         **batch.timeline_args(sizes), "seconds": seconds})
    return rows


def _one_query(rid: str, text: str, lists: tuple[int, ...], text_tokens: Callable[[str], int]
               ) -> tuple[Request, SearchBatch]:
    """A one-query request over `lists` (k 1) and its whole search as one call: embed + scan."""
    req = chain(rid, 0.0, "calibrate", [Retrieve(len(lists), 1, lists, query=text)])
    return req, SearchBatch((ScanTask(key=(req.id, 0), clusters=lists, k=1, first=True, last=True,
                                      embed_tokens=text_tokens(text)),))


def other_lane_search(begin: Callable[[list[Request]], RetrievalBody], list_sizes: Sequence[int],
                      passages: Sequence[str], text_tokens: Callable[[str], int], *, lists: int = 32,
                      seed: int = 2) -> Callable[[], None]:
    """A `between` for `profile_engine_cold`: each call runs one query's whole search (a question of
    about 60 characters embedded, then `lists` lists scanned) on the retrieval lane, as the
    request the engine admits next is searched while the engine waits."""
    rng = np.random.default_rng(seed)
    sizes = list(list_sizes)
    serial = iter(range(1 << 62))

    def search() -> None:
        text = _texts_of_length(passages, 60, 1, rng)[0]
        probe = tuple(int(x) for x in rng.choice(len(sizes), min(lists, len(sizes)), replace=False))
        req, batch = _one_query(f"between-{next(serial)}", text, probe, text_tokens)
        service = begin([req])
        service.search(batch)
        service.forget(req.id)
    return search
