"""The calibration's meter of other processes' CPU use: what the machine did minus what this
process tree did. The arithmetic on given readings, then the two readings on real processes
(each assertion holds whatever else the machine runs meanwhile)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import psutil

from calibration import machine_load
from calibration.machine_load import BUSY_CORES, LoadMeter, OtherLoad

SPIN = "import time\nend = time.perf_counter() + {s}\nwhile time.perf_counter() < end: pass\n"


def test_other_cores_are_the_machines_busy_time_less_this_trees_over_the_wall_time(monkeypatch):
    readings = {"busy": iter([100.0, 103.0]), "tree": iter([10.0, 11.0]), "clock": iter([5.0, 7.0])}
    monkeypatch.setattr(machine_load, "_machine_busy_s", lambda: next(readings["busy"]))
    monkeypatch.setattr(machine_load, "_tree_cpu_s", lambda root: next(readings["tree"]))
    monkeypatch.setattr(machine_load.time, "perf_counter", lambda: next(readings["clock"]))
    with LoadMeter() as meter:
        pass
    assert meter.result is not None and meter.result.other_cores == 1.0 and meter.result.wall_s == 2.0
    assert meter.result.busy and not OtherLoad(BUSY_CORES, 2, 1.0).busy
    line = meter.result.line("x was measured")
    assert "\n" not in line and "busy while x was measured" in line and "1.00 of its" in line


def test_a_busy_process_outside_the_tree_is_counted():
    # started by a child that exits at once: re-parented, not a descendant of this process
    pid = int(subprocess.check_output(
        [sys.executable, "-c", "import subprocess, sys; print(subprocess.Popen([sys.executable, '-c',"
         f" {SPIN.format(s=5)!r}], stdout=subprocess.DEVNULL, start_new_session=True).pid)"]))
    spinner = psutil.Process(pid)
    try:
        time.sleep(0.3)  # past its interpreter's start
        before = sum(spinner.cpu_times()[:2])
        with LoadMeter() as meter:
            time.sleep(1.5)
        spun = sum(spinner.cpu_times()[:2]) - before
    finally:
        os.kill(pid, signal.SIGTERM)
    assert meter.result is not None and spun > 0.3
    assert meter.result.other_cores >= spun / meter.result.wall_s - 0.15, (meter.result, spun)


def test_this_trees_cpu_includes_its_children():
    me = psutil.Process()
    child = subprocess.Popen([sys.executable, "-c", SPIN.format(s=2.0)])
    try:
        time.sleep(0.3)
        own = psutil.Process(child.pid)
        tree0, child0 = machine_load._tree_cpu_s(me), sum(own.cpu_times()[:2])
        time.sleep(1.2)
        tree1, child1 = machine_load._tree_cpu_s(me), sum(own.cpu_times()[:2])
    finally:
        child.wait()
    assert child1 - child0 > 0.3
    # the two readings of each pair are instants apart and CPU times tick by 10 ms
    assert tree1 - tree0 >= child1 - child0 - 0.05, (tree1 - tree0, child1 - child0)
