"""Was the machine quiet while we measured? Other processes' CPU use during a measurement.

A profile measured while other processes share the body's cores prices every call too slow
(measured here: a calibration beside two busy helper sessions priced the query embedding
1.5-2x what the same calls took on the quiet machine three hours later, and its held-out error
was 38% against 8%). Nothing inside the measurement tells such a profile apart: every
cell is slow alike. What does tell is the kernel's own accounting: `LoadMeter` reads the
machine's busy CPU time (all cores, hypervisor steal included) and this process tree's
(the body's engine and retrieval workers are its children) at the start and at the end,
and reports the difference as the cores other processes kept busy on average.
`hedra calibrate` records it in the profile (`fits["machine_load"]`) and says in one line
when it is above `BUSY_CORES`; the fidelity benchmark records it over its whole run.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import psutil

BUSY_CORES = 0.25  # other processes' average busy cores above which a measurement is not trusted


def _machine_busy_s() -> float:
    """CPU seconds all cores spent not idle since boot (steal included: another VM's work)."""
    t = psutil.cpu_times()
    return sum(t) - t.idle - getattr(t, "iowait", 0.0)


def _tree_cpu_s(root: psutil.Process) -> float:
    """CPU seconds of `root` and its live descendants (user + system)."""
    total = 0.0
    for proc in (root, *root.children(recursive=True)):
        try:
            t = proc.cpu_times()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        total += t.user + t.system
    return total


@dataclass(frozen=True, slots=True)
class OtherLoad:
    """Other processes' CPU use over one measurement."""

    other_cores: float  # cores they kept busy on average
    cores: int  # cores of the machine
    wall_s: float

    @property
    def busy(self) -> bool:
        return self.other_cores > BUSY_CORES

    def to_json(self) -> dict[str, object]:
        return {"other_cores": round(self.other_cores, 3), "cores": self.cores, "wall_s": round(self.wall_s, 1),
                "busy": self.busy}

    @classmethod
    def from_json(cls, data: dict[str, object]) -> OtherLoad:
        return cls(float(data["other_cores"]), int(data["cores"]), float(data["wall_s"]))  # type: ignore[arg-type]

    def line(self, what: str) -> str:
        """One line for a busy measurement (`what`: what was measured)."""
        return (f"the machine was busy while {what}: other processes kept {self.other_cores:.2f} of its"
                f" {self.cores} cores busy on average (more than {BUSY_CORES}); its timings include their"
                f" contention: measure again on a quiet machine")


class LoadMeter:
    """Other processes' load between `start()` and `stop()`, or over a `with LoadMeter() as meter:`
    block (then `meter.result`). Processes of this tree that end in between count as other
    (their time is gone with them)."""

    def __init__(self) -> None:
        self._me = psutil.Process()
        self.result: OtherLoad | None = None

    def start(self) -> LoadMeter:
        self._start = (time.perf_counter(), _machine_busy_s(), _tree_cpu_s(self._me))
        return self

    def stop(self) -> OtherLoad:
        wall0, busy0, mine0 = self._start
        wall = time.perf_counter() - wall0
        others = (_machine_busy_s() - busy0) - (_tree_cpu_s(self._me) - mine0)
        self.result = OtherLoad(max(others, 0.0) / max(wall, 1e-9), psutil.cpu_count() or 1, wall)
        return self.result

    def __enter__(self) -> LoadMeter:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
