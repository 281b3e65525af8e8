"""Which CPU this is: the model string a profile names, and what tells CPUs under one string apart.

Every VM here reports "AMD EPYC"; their engine steps differed by 1.5-1.9x (issue 16), so a
measured profile also records family, model, stepping, clock and cache (`cpu_id`), and the
stale-profile check names both CPUs when they differ.
"""

from __future__ import annotations

import platform
from pathlib import Path


def _cpuinfo() -> dict[str, str]:
    """The first processor's fields of /proc/cpuinfo ({} where there is none)."""
    try:
        text = Path("/proc/cpuinfo").read_text().split("\n\n", 1)[0]
    except OSError:
        return {}
    return {k.strip(): v.strip() for k, _, v in (line.partition(":") for line in text.splitlines())}


def cpu_model() -> str:
    return _cpuinfo().get("model name") or platform.processor() or platform.machine()


def cpu_id() -> str | None:
    """What tells CPUs sold under one model string apart ("AMD EPYC" on every VM here): family,
    model, stepping, clock and the cache size /proc/cpuinfo reports (None where it has no x86
    fields). The clock is the TSC's (half the boot-time bogomips), which stays put where
    "cpu MHz" follows frequency scaling: the same machine must give the same id."""
    info = _cpuinfo()
    if "cpu family" not in info:
        return None
    mhz = f", {float(info['bogomips']) / 2:.0f} MHz" if info.get("bogomips") else ""
    cache = f", cache {info['cache size']}" if info.get("cache size") else ""
    return f"family {info['cpu family']} model {info.get('model')} stepping {info.get('stepping')}{mhz}{cache}"
