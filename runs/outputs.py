"""Run outputs (DESIGN §6): the files of one run's folder.

Every run, simulated or real, writes the same three files into its output folder:
`requests.parquet` (one row per request, in arrival order), `summary.json` and
`timeline.json` (Chrome trace format: one track per lane that ran something, named by the
hardware that ran it; one slice per work item). The folder is written under a temporary
name and renamed into place, so no half-written folder is ever left.

Writing is a large share of a short simulation's wall time (a 300 s trace gives ~50,000
timeline slices), so the timeline is encoded by orjson and the table written by pyarrow
alone; pandas is not imported here.
"""

from __future__ import annotations

import gc
import itertools
import json
import typing
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np
import orjson

from ragraph.records import RequestRecord, TimelineEvent
from ragraph.work import LANES, Lane
from runs.outdir import atomic_dir
from sim.timeline import Timeline


def lane_tracks(gpu: str | None, gen_cores: Sequence[int] | None = None,
                retrieval_cores: Sequence[int] | None = None) -> dict[str, str]:
    """Timeline track names of the lanes, by the hardware that runs them: `gpu` is the GPU's
    name (None: the engine runs on the CPU), the cores those of the engine thread and the
    retrieval lane where known (e.g. {"gpu_gen": "engine (CPU cores 0)", ...})."""

    def cpu(cores: Sequence[int] | None) -> str:
        if not cores:
            return "CPU"
        return f"CPU core{'s' if len(cores) > 1 else ''} {','.join(map(str, cores))}"

    return {Lane.GPU_GEN: f"engine ({gpu or cpu(gen_cores)})",
            Lane.CPU_RETRIEVAL: f"retrieval ({cpu(retrieval_cores)})",
            Lane.GPU_RETRIEVAL: f"retrieval ({gpu or 'GPU'})",
            Lane.PCIE: "cluster copies (PCIe)"}


def chrome_trace(events: Iterable[TimelineEvent], tracks: Mapping[str, str] | None = None) -> dict[str, object]:
    """Chrome trace-event JSON (Perfetto opens it): one thread track per lane that ran an item,
    named `tracks[lane]` (default: the lane's name), in the lanes' order."""
    tids = {lane.value: i + 1 for i, lane in enumerate(LANES)}
    slices = [{"name": name, "ph": "X", "pid": 1, "tid": tids[lane], "ts": round(start * 1e6, 3),
               "dur": round(dur * 1e6, 3), "args": args} for lane, name, start, dur, args in events]
    used = {s["tid"] for s in slices}
    names = tracks or {}
    out: list[dict[str, object]] = [
        {"name": "thread_name", "ph": "M", "pid": 1, "tid": tid, "args": {"name": names.get(lane, lane)}}
        for lane, tid in tids.items() if tid in used
    ]
    out.append({"name": "process_name", "ph": "M", "pid": 1, "tid": 0, "args": {"name": "hedra"}})
    out += slices
    return {"traceEvents": out, "displayTimeUnit": "ms"}


def chrome_trace_chunks(events: Iterable[TimelineEvent], tracks: Mapping[str, str] | None = None,
                        chunk: int = 8192) -> Iterator[bytes]:
    """`orjson.dumps(chrome_trace(events, tracks))` in pieces, made `chunk` slices at a time,
    so a timeline of millions of slices (a sparse trace's engine steps) is never held whole as
    dicts or bytes (the same bytes: tests/test_step_folding.py)."""
    if not isinstance(events, Sequence):
        events = list(events)
    tids = {lane.value: i + 1 for i, lane in enumerate(LANES)}
    lanes = events.lanes() if isinstance(events, Timeline) else {e[0] for e in events}
    names = tracks or {}
    head: list[dict[str, object]] = [
        {"name": "thread_name", "ph": "M", "pid": 1, "tid": tid, "args": {"name": names.get(lane, lane)}}
        for lane, tid in tids.items() if lane in lanes
    ]
    head.append({"name": "process_name", "ph": "M", "pid": 1, "tid": 0, "args": {"name": "hedra"}})
    yield b'{"traceEvents":' + orjson.dumps(head)[:-1]
    it = iter(events)
    while batch := list(itertools.islice(it, chunk)):
        yield b","
        yield orjson.dumps([{"name": name, "ph": "X", "pid": 1, "tid": tids[lane], "ts": round(start * 1e6, 3),
                             "dur": round(dur * 1e6, 3), "args": args} for lane, name, start, dur, args in batch])[1:-1]
    yield b'],"displayTimeUnit":"ms"}'


def write_requests(path: Path, records: Sequence[RequestRecord]) -> None:
    """requests.parquet: one row per request, in arrival order (ties by id); columns are
    RequestRecord's fields, typed from its annotations (so an empty run has them too)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = sorted(records, key=lambda r: (r.arrival_s, r.id))
    hints = typing.get_type_hints(RequestRecord)
    names = list(RequestRecord.__dataclass_fields__)
    columns = [_arrow_column([getattr(r, f) for r in rows], hints[f]) for f in names]
    pq.write_table(pa.Table.from_arrays(columns, names=names), path)


def _arrow_column(values: list, kind: object):
    """An Arrow array of str, int, float or optional float values (None: null), built from
    buffers: `pyarrow.array` on Python objects imports pandas (~0.2 s, a tenth of a whole `hedra sim`)."""
    import pyarrow as pa

    if kind == float | None:
        valid = np.array([v is not None for v in values], dtype=bool)
        data = np.array([v if v is not None else 0.0 for v in values], dtype=np.float64)
        bitmap = None if valid.all() else pa.py_buffer(np.packbits(valid, bitorder="little"))
        return pa.Array.from_buffers(pa.float64(), len(values), [bitmap, pa.py_buffer(data)],
                                     null_count=int((~valid).sum()))

    if kind is str:
        data = [v.encode() for v in values]
        offsets = np.zeros(len(data) + 1, dtype=np.int32)
        np.cumsum([len(d) for d in data], out=offsets[1:])
        buffers = [None, pa.py_buffer(offsets), pa.py_buffer(b"".join(data))]
        return pa.Array.from_buffers(pa.string(), len(data), buffers)
    dtype, arrow = {int: (np.int64, pa.int64()), float: (np.float64, pa.float64())}[kind]
    return pa.Array.from_buffers(arrow, len(values), [None, pa.py_buffer(np.asarray(values, dtype=dtype))])


def write_run(out_dir: str | Path, records: Sequence[RequestRecord], summary: dict[str, object],
              timeline: Iterable[TimelineEvent] | None, tracks: Mapping[str, str] | None = None) -> Path:
    """Write the run's files into `out_dir` atomically (replacing an older run there); `tracks`
    names the timeline's lanes (`lane_tracks`)."""
    collecting = gc.isenabled()
    gc.disable()  # a slice dict per timeline slice and no cycle: a collection would walk the whole run
    try:
        with atomic_dir(out_dir) as tmp:
            write_requests(tmp / "requests.parquet", records)
            (tmp / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
            if timeline is not None:
                with open(tmp / "timeline.json", "wb") as f:
                    f.writelines(chrome_trace_chunks(timeline, tracks))
    finally:
        if collecting:
            gc.enable()
    return Path(out_dir)
