"""Lane contention on a CPU rig: how much the engine and the retrieval lane slow each other.

The engine worker and the retrieval worker run on cores of their own but share the chip (its
caches, its memory), and the calibration grid times each lane alone. In the fidelity replays of
stop 21 (one-shot, tiny model, 2-core VM) hedra's engine steps that overlapped a search call
took 1.16-1.37x their price by size, those that overlapped none 1.04-1.10x; flashrag's steps,
which never overlap its searches, 1.03x. This module times a few cells of each lane alone and
beside the other lane kept busy by a thread of this process (as a replay runs its lanes: the
same worker processes, pipes and interpreter), measures each item's overlap with the other
lane's items, and fits the slowdown `Profile.contention` holds: per cell, the median time of
the items that ran wholly beside the other lane over the median time alone; the median of the
cells' ratios, minus one (never below 0). The simulator charges it over the part of an item
that overlaps the other lane's (`hwmodel.latency.contended_s`).
"""

from __future__ import annotations

import statistics
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING

from calibration.profiler import REPEATS, Progress, Row, _quiet, _run_to_end, profile_search
from ragraph.work import GenStep, GenTask

if TYPE_CHECKING:
    from backends.executor import RetrievalBody
    from backends.vllm_engine import VLLMEngine

ENGINE_CELLS = ((8, 32), (32, 64), (64, 32))  # (sequences, prompt tokens): mostly decode steps, as replays run
ENGINE_OUTPUT = 24
SEARCH_CELLS = ((1, 8), (4, 16), (16, 4))  # (queries per call, lists per query): one call that embeds, one that scans
SEARCH_TEXT = (60,)  # characters: questions
BUSY_SEARCH = ((4, 8),)  # what a busy retrieval lane runs: 4 questions embedded and scanned, then continued
BUSY_BATCH, BUSY_PROMPT, BUSY_OUTPUT = 32, 64, 200  # what a busy engine runs: a batch decoding
FULL_OVERLAP = 0.95  # an item counts as beside the other lane when this share of it overlapped
SLOWDOWNS = {"contention_gen": "gen_step_slowdown", "contention_search": "cpu_search_slowdown"}

Interval = tuple[float, float]


def overlap_share(start: float, end: float, busy: Sequence[Interval]) -> float:
    """The share of [start, end] that some interval of `busy` (sorted, disjoint) covers."""
    if end <= start:
        return 0.0
    covered = sum(max(0.0, min(end, b) - max(start, a)) for a, b in busy if a < end and b > start)
    return covered / (end - start)


@contextmanager
def _busy(work: Callable[[threading.Event, list[Interval]], None] | None) -> Iterator[list[Interval]]:
    """Run `work(stop, intervals)` in a thread while the block runs (None: nothing); yields the
    intervals it records, complete once the block has ended."""
    intervals: list[Interval] = []
    if work is None:
        yield intervals
        return
    stop = threading.Event()
    thread = threading.Thread(target=work, args=(stop, intervals), name="contention", daemon=True)
    thread.start()
    try:
        yield intervals
    finally:
        stop.set()
        thread.join()


def profile_contention(engine: VLLMEngine, begin: Callable[[list], RetrievalBody], list_sizes: Sequence[int],
                       passages: Sequence[str], text_tokens: Callable[[str], int], *,
                       gen_setup: Callable[[], None], search_setup: Callable[[], None], repeats: int = REPEATS,
                       progress: Progress = _quiet) -> list[Row]:
    """Engine cells timed with the retrieval lane idle, then busy; search cells with the engine
    idle, then busy (`gen_setup` / `search_setup` pin the calling thread as each lane's thread
    is pinned). Rows of kind `contention_gen` and `contention_search` with `beside` (0/1) and
    `overlap` (the item's share that overlapped the other lane's items)."""
    serial = 0

    def tasks(n: int, prompt: int, output: int) -> list[GenTask]:
        nonlocal serial
        serial += 1
        return [GenTask((f"contention-{serial}", i), prompt, output, "", 0) for i in range(n)]

    def searching(stop: threading.Event, intervals: list[Interval]) -> None:
        search_setup()
        seed = 1000
        while not stop.is_set():
            seed += 1
            profile_search(begin, list_sizes, passages, text_tokens, repeats=1, grid=BUSY_SEARCH,
                           text_chars=SEARCH_TEXT, seed=seed, intervals=intervals)

    def decoding(stop: threading.Event, intervals: list[Interval]) -> None:
        gen_setup()
        while not stop.is_set():
            batch = tasks(BUSY_BATCH, BUSY_PROMPT, BUSY_OUTPUT)
            engine.apply(GenStep(admit=tuple(batch)))
            pending = len(batch)
            while pending and not stop.is_set():
                t0 = time.perf_counter()
                res = engine.step()
                intervals.append((t0, time.perf_counter()))
                pending -= len(res.finished)
                engine.apply(GenStep())
            engine.abort_all()

    rows: list[Row] = []
    for r in range(repeats):
        for beside in (0, 1):
            progress(f"contention: engine steps, retrieval lane {'busy' if beside else 'idle'}, pass {r + 1}/{repeats}")
            gen_setup()
            found: list[tuple[Row, Interval]] = []
            with _busy(searching if beside else None) as other:
                for b, p in ENGINE_CELLS:
                    cell_rows: list[Row] = []
                    times: list[Interval] = []
                    _run_to_end(engine, {0: tasks(b, p, ENGINE_OUTPUT)}, f"B{b}-P{p}", cell_rows, times)
                    found += zip(cell_rows, times, strict=True)
            rows += _marked(found, "contention_gen", beside, other)
            progress(f"contention: search calls, engine {'busy' if beside else 'idle'}, pass {r + 1}/{repeats}")
            search_setup()
            found = []
            with _busy(decoding if beside else None) as other:
                times = []
                calls = profile_search(begin, list_sizes, passages, text_tokens, repeats=1, grid=SEARCH_CELLS,
                                       text_chars=SEARCH_TEXT, seed=2000 + 2 * r + beside, intervals=times)
                found += zip(calls, times[-len(calls):], strict=True)  # (the first calls warm up, unrecorded)
            rows += _marked(found, "contention_search", beside, other)
    gen_setup()
    return rows


def _marked(found: Sequence[tuple[Row, Interval]], kind: str, beside: int, other: Sequence[Interval]) -> list[Row]:
    busy = sorted(other)
    return [{**row, "kind": kind, "beside": beside, "overlap": overlap_share(a, b, busy)} for row, (a, b) in found]


def fit_contention(rows: Sequence[Row]) -> dict[str, object] | None:
    """Each lane's slowdown beside the other (module docstring), with each cell's ratio; None
    without contention rows."""
    out: dict[str, object] = {}
    for kind, name in SLOWDOWNS.items():
        alone: dict[str, list[float]] = {}
        beside: dict[str, list[float]] = {}
        for r in rows:
            if r["kind"] != kind:
                continue
            if not r["beside"]:
                alone.setdefault(str(r["cell"]), []).append(float(r["seconds"]))
            elif float(r["overlap"]) >= FULL_OVERLAP:
                beside.setdefault(str(r["cell"]), []).append(float(r["seconds"]))
        ratios = {cell: statistics.median(beside[cell]) / statistics.median(times)
                  for cell, times in sorted(alone.items()) if beside.get(cell)}
        if ratios:
            out[name] = max(0.0, statistics.median(ratios.values()) - 1.0)
            out[f"{name}_cells"] = {cell: round(ratio, 4) for cell, ratio in ratios.items()}
    return out or None

