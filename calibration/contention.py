"""Lane contention on the real body: how much its two lanes slow each other where they overlap.

The calibration grid times each lane alone. In a replay the lanes run at once: an engine step
beside a search call, each lane's thread driving its worker process and running the scheduler
core and the policy between items, in one interpreter. In the fidelity replays of stop 21
(one-shot, tiny model, 2-core VM) hedra's decode steps that overlapped a search call took
1.21x their price, those that overlapped none 1.05x; flashrag's steps, which never overlap its
searches, 1.03x. A machine-level cause was ruled out (a process burning the other lane's core
left decode steps and search calls as they were); a thread of the same process issuing search
calls slowed decode steps by 0-30% from run to run, and the policy's own work between items
(hedra plans each sub-stage in Python) is heavier than that thread's. So the slowdown is
measured where it happens: on the calibration's own designed replay (`calibrate.measure_dispatch`,
under hedra, its own seed; never a validation trace). Each of its engine steps and CPU search
calls is priced by the grid's models and its overlap with the other lane's items measured; per
kind of item (decode steps, admissions; calls that embed, calls that only scan) the median of
measured / priced over the items wholly beside the other lane against the items beside none;
a lane's slowdown is the mean of those ratios weighted by the items each kind had beside the
other lane, minus one (never below 0) (`Profile.contention`): a kind seen beside the other lane
20 times weighs 20 / 668 against one seen 648 times (a median over kinds let the 20 decide:
0.93 for admissions against 1.021 for decode steps gave 0). The simulator charges it over the part
of an item that overlaps the other lane's item in flight (`hwmodel.latency.contended_s`).
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence

from calibration.profiler import Row
from hwmodel.latency import LatencyModel
from ragraph.records import TimelineEvent

SLOWDOWNS = {"replay_step": "gen_step_slowdown", "replay_search": "cpu_search_slowdown"}
FULL_OVERLAP = 0.95  # an item counts as beside the other lane when this share of it overlapped
NO_OVERLAP = 0.05  # ... and as alone below this share

Interval = tuple[float, float]


def overlap_share(start: float, end: float, busy: Sequence[Interval]) -> float:
    """The share of [start, end] that some interval of `busy` (sorted, disjoint) covers."""
    if end <= start:
        return 0.0
    covered = sum(max(0.0, min(end, b) - max(start, a)) for a, b in busy if a < end and b > start)
    return covered / (end - start)


def replay_items(timeline: Sequence[TimelineEvent], latency: LatencyModel) -> list[Row]:
    """A real replay's engine steps and CPU search calls, each with its measured seconds, its
    price as validation reprices a real run's items (`validate.retimed_items`: the grid's models,
    the cold terms by the lane's idle time; `latency` is the provisional profile's, which has no
    contention yet), its kind (`cell`) and its overlap with the other lane's items: rows of kind
    `replay_step` and `replay_search`."""
    from calibration.validate import retimed_items

    busy: dict[str, list[Interval]] = {"gpu_gen": [], "cpu_retrieval": []}
    for lane, _name, start, dur, _args in timeline:
        if lane in busy and dur > 0:
            busy[lane].append((start, start + dur))
    for intervals in busy.values():
        intervals.sort()
    rows: list[Row] = []
    for item in retimed_items(timeline, latency):
        start, seconds = float(item["start_s"]), float(item["measured_s"])  # type: ignore[arg-type]
        if item["kind"] == "engine_step":
            kind, other = "replay_step", busy["cpu_retrieval"]
            cell = "admit" if item.get("admitted") else "decode" if not item.get("prefill_tokens") else "prefill"
        else:
            kind, other, cell = "replay_search", busy["gpu_gen"], "embed" if item.get("new_queries") else "scan"
        rows.append({"kind": kind, "cell": cell, "overlap": overlap_share(start, start + seconds, other),
                     "priced_s": item["predicted_s"], "seconds": seconds})
    return rows


def fit_contention(rows: Sequence[Row]) -> dict[str, object] | None:
    """Each lane's slowdown beside the other (module docstring), with each kind's ratio and
    sample sizes; None without replay rows that show both sides."""
    out: dict[str, object] = {}
    for kind, name in SLOWDOWNS.items():
        alone: dict[str, list[float]] = {}
        beside: dict[str, list[float]] = {}
        for r in rows:
            if r["kind"] != kind:
                continue
            share, ratio = float(r["overlap"]), float(r["seconds"]) / float(r["priced_s"])
            if share >= FULL_OVERLAP:
                beside.setdefault(str(r["cell"]), []).append(ratio)
            elif share < NO_OVERLAP:
                alone.setdefault(str(r["cell"]), []).append(ratio)
        ratios = {cell: statistics.median(beside[cell]) / statistics.median(ratio)
                  for cell, ratio in sorted(alone.items()) if len(beside.get(cell, ())) >= 5 and len(ratio) >= 5}
        if ratios:
            weight = {cell: len(beside[cell]) for cell in ratios}
            mean = sum(r * weight[cell] for cell, r in ratios.items()) / sum(weight.values())
            out[name] = max(0.0, mean - 1.0)
            out[f"{name}_kinds"] = {cell: {"ratio": round(r, 4), "beside": len(beside[cell]), "alone": len(alone[cell])}
                                    for cell, r in ratios.items()}
    return out or None
