"""The calibration's meter of other processes' CPU use: a busy process outside this process
tree is counted, the tree's own workers are not."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from calibration.machine_load import BUSY_CORES, LoadMeter

SPIN = "import time\nend = time.perf_counter() + {s}\nwhile time.perf_counter() < end: pass\n"


def test_a_busy_process_outside_the_tree_is_counted():
    # the shell exits at once, so the spinning loop is re-parented: not a descendant of this process
    pid = int(subprocess.check_output(
        [sys.executable, "-c", "import subprocess, sys; print(subprocess.Popen([sys.executable, '-c',"
         f" {SPIN.format(s=5)!r}], stdout=subprocess.DEVNULL, start_new_session=True).pid)"]))
    try:
        with LoadMeter() as meter:
            time.sleep(1.5)
    finally:
        os.kill(pid, signal.SIGTERM)
    assert meter.result is not None and meter.result.busy
    assert 0.7 < meter.result.other_cores < 1.0 + BUSY_CORES
    line = meter.result.line("x was measured")
    assert "\n" not in line and "busy while x was measured" in line


def test_this_trees_own_workers_are_not_other_load():
    with LoadMeter() as meter:
        child = subprocess.Popen([sys.executable, "-c", SPIN.format(s=1.5)])
        time.sleep(1.4)  # the child is still alive when the meter reads the tree
    child.wait()
    assert meter.result is not None
    assert meter.result.other_cores < 0.5, meter.result
