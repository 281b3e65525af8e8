"""A simulated run's timeline, with quiet runs of decode steps kept compact until read.

The timeline has one slice per lane item (`ragraph.records.TimelineEvent`), one per engine
step included. A run spread over days with one request at a time takes many more engine
steps than the same requests close together (each step decodes one sequence, not a batch),
and a slice with its args dict is ~640 bytes: 707,000 steps of the sparse benchmark were
~450 MB, made and freed in every run, which cost more than the simulation of them. The
simulator advances a quiet run of decode steps together (`GenEngineModel.decode_run`), so
it hands that run's (step seconds, end, context tokens, KV blocks used) rows here as they
are; the slices are made when the timeline is read, the same values in the same order as
one slice per step appended as it ends (`tests/test_step_folding.py` compares them).

A `Timeline` reads as the list of slices it stands for: iteration, `len`, indexing,
equality with a list, and pickling (as a plain list).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import overload

from ragraph.records import TimelineEvent


class _DecodeRun:
    """The slices of a quiet run of decode steps: a `GenStep` slice per step, with its args
    the decode step's `args` and the step's KV blocks used and context tokens."""

    __slots__ = ("args", "dispatch", "rows")

    def __init__(self, rows: list[tuple[float, float, int, int]], args: dict[str, int], dispatch: float) -> None:
        self.rows, self.args, self.dispatch = rows, args, dispatch

    def __iter__(self) -> Iterator[TimelineEvent]:
        copy, dispatch = self.args.copy, self.dispatch
        for s, e, c, u in self.rows:
            a = copy()  # (a copy and two items: twice as fast as building the dict)
            a["kv_used_blocks"] = u
            a["context_tokens"] = c
            yield "gpu_gen", "GenStep", e - s - dispatch, s, a


class Timeline(Sequence[TimelineEvent]):
    """The slices of a run in the order they ended; `add_decode_run` keeps a run of decode
    steps as one entry until the timeline is read."""

    __slots__ = ("_items", "_len")

    def __init__(self) -> None:
        self._items: list[TimelineEvent | _DecodeRun] = []
        self._len = 0

    def append(self, event: TimelineEvent) -> None:
        self._items.append(event)
        self._len += 1

    def add_decode_run(self, rows: list[tuple[float, float, int, int]], args: dict[str, int],
                       dispatch: float) -> None:
        """The steps of a decode run: `rows` of (seconds, end, context tokens, KV blocks used)
        as `GenEngineModel.decode_run` gives them; each slice starts `dispatch` before its
        step; `args` (not changed) are the slices' args but those two."""
        self._items.append(_DecodeRun(rows, args, dispatch))
        self._len += len(rows)

    def lanes(self) -> set[str]:
        """The lanes that have a slice (without making the slices of decode runs)."""
        return {"gpu_gen" if type(item) is _DecodeRun else item[0] for item in self._items}  # type: ignore[index]

    def __iter__(self) -> Iterator[TimelineEvent]:
        for item in self._items:
            if type(item) is _DecodeRun:
                yield from item
            else:
                yield item  # type: ignore[misc]

    def __len__(self) -> int:
        return self._len

    @overload
    def __getitem__(self, i: int) -> TimelineEvent: ...

    @overload
    def __getitem__(self, i: slice) -> list[TimelineEvent]: ...

    def __getitem__(self, i: int | slice) -> TimelineEvent | list[TimelineEvent]:
        if len(self._items) != self._len:  # runs kept compact: made into slices once, for reading by index
            self._items = list(self)
        return self._items[i]  # type: ignore[return-value]

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Timeline | list | tuple):
            return NotImplemented
        return len(self) == len(other) and all(a == b for a, b in zip(self, other, strict=True))

    __hash__ = None  # type: ignore[assignment]  # mutable, like a list

    def __reduce__(self) -> tuple[type[list], tuple[list[TimelineEvent]]]:
        return list, (list(self),)  # pickled as the plain list it stands for

    def __repr__(self) -> str:
        return f"Timeline({list(self)!r})"

