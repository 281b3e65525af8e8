"""Capacity: the highest arrival rate a policy sustains on a body, found by bisection.

A rate is *sustained* when `duration_s` seconds of a workload's arrivals at that rate (its
Poisson arrivals rescaled, `calibration.workload.at_rate`) end with a P95 latency at most the
SLO (default 10 s), a request that fails counting as over it. The search starts from a guess,
steps up (or down) by `step` until one rate passes and another fails, then bisects
geometrically until the failing rate is within `tolerance` of the passing one: the capacity
lies in [low, high], and `rps` is `low`, the highest rate that passed. Runs go through
`runs.run.simulate` (`sim_capacity`) or `runs.run.run_real` (`real_capacity`), the same
runs every other command makes, so the capacity is the body's own.

The duration matters: above capacity the queue grows by about (1 - capacity / rate) seconds
per second of arrivals, so a trace of D seconds shows a rate (1 + tolerance) x capacity as
over an SLO of S only when 0.95 x D x tolerance / (1 + tolerance) exceeds S (the P95
request arrives near 0.95 x D); `min_duration_s` is that bound, the default duration of
`hedra capacity` (221 s for the defaults). A shorter duration finds a higher rate: one whose
queue had not yet grown past the SLO when the arrivals stopped.
Throughput-oriented definition as in the serving literature (DistServe's and Vidur's
"capacity under a latency SLO"); the HedraRAG paper reports sustainable rates the same way.

A real search also says how fast the machine ran while it searched: each real run's engine
steps and CPU search calls, measured over their price in the body's profile (`Trial.speed`,
as validation's `run_speed`), and their median over the search's full-length runs
(`Capacity.run_speed`). A CPU VM drifts by 0.7-1.5x within the hour, and a search near the
SLO takes minutes per run: the simulator's capacity with the profile at that speed
(`sim_capacity_at_speed`) separates the model's error from the machine's drift.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

import numpy as np

from calibration.workload import Template
from hwmodel.latency import LatencyModel
from hwmodel.profile import Profile
from ragraph.kvpolicy import KVPolicy
from ragraph.policies import PolicyChoice
from ragraph.records import RequestRecord
from runs.run import Run, run_real, simulate

if TYPE_CHECKING:
    from backends.real import RealBackend

SLO_P95_S = 10.0  # default latency objective: P95 at most this
TOLERANCE = 0.05  # default bracket: high <= (1 + TOLERANCE) x low
SLO_QUANTILE = 0.95


@dataclass(frozen=True, slots=True)
class Trial:
    """One run of the search."""

    rate: float  # arrivals per second
    requests: int  # requests that arrived in the duration
    completed: int
    p95_s: float  # P95 latency, failed requests counted as infinitely late (inf when over 5% failed)
    sustained: bool  # p95_s <= the SLO
    wall_s: float  # seconds the run took
    duration_s: float  # seconds of arrivals (a screening run: a quarter of the search's)
    # real runs: per kind (engine_step, search_call), the items' measured over priced seconds; None: not timed
    speed: dict[str, float | None] | None = None


@dataclass(frozen=True, slots=True)
class Capacity:
    """What a search found: `capacity.json`'s content."""

    rps: float  # highest rate that passed (= low; 0 when none passed)
    low: float  # a rate that passed (0 when none did)
    high: float  # a rate that failed, above low (inf when every rate tried passed)
    slo_p95_s: float
    tolerance: float
    duration_s: float
    trials: tuple[Trial, ...]  # every run, in the order they ran (screening runs included)
    note: str = ""  # why the bracket is open, when it is

    def run_speed(self) -> dict[str, float | None] | None:
        """Per kind, the median of `Trial.speed` over the full-length runs (those near the answer
        decide it; screening runs are a quarter as long); None for a body that does not time its
        items (the simulator)."""
        runs = [t.speed for t in self.trials if t.speed is not None and t.duration_s == self.duration_s]
        if not runs:
            return None
        out: dict[str, float | None] = {}
        for kind in runs[0]:
            values = [v for r in runs if (v := r.get(kind)) is not None]
            out[kind] = float(np.median(values)) if values else None
        return out if any(v is not None for v in out.values()) else None  # (runs with no items: none)

    def to_json(self) -> dict[str, object]:
        d = asdict(self)
        d["high"] = None if math.isinf(self.high) else self.high
        d["trials"] = [{**t, "p95_s": None if math.isinf(t["p95_s"]) else t["p95_s"]} for t in d["trials"]]
        d["run_speed"] = self.run_speed()
        return d


def p95_of(records: list[RequestRecord]) -> float:
    """P95 latency of a run's requests, a failed request counting as infinitely late."""
    lat = [r.latency_s if r.status == "completed" else math.inf for r in records]
    if not lat:
        return 0.0
    return float(np.percentile(np.asarray(lat), 100 * SLO_QUANTILE, method="inverted_cdf"))


def min_duration_s(slo_p95_s: float, tolerance: float) -> float:
    """Seconds of arrivals that show a rate (1 + tolerance) x capacity as over the SLO: its queue
    grows by tolerance / (1 + tolerance) s per second of arrivals, and the P95 request (which
    arrives at about 95% of the duration) must wait longer than the SLO."""
    return slo_p95_s * (1 + tolerance) / (tolerance * SLO_QUANTILE)


Measure = Callable[[float, bool], list[Trial]]  # (rate, screen first) -> its runs, the last one decides


def search(measure: Measure, guess: float, *, tolerance: float = TOLERANCE, step: float = 2.0,
           min_rps: float = 0.01, max_rps: float = 10_000.0, slo_p95_s: float = SLO_P95_S,
           duration_s: float = 0.0) -> Capacity:
    """Bracket and bisect with `measure(rate, screen)`: from `guess`, multiply (passing) or
    divide (failing) by `step` until the outcome flips, within [min_rps, max_rps]; then bisect
    geometrically until high <= (1 + tolerance) x low. While bracketing, `screen` is True: the
    measure may first run a shorter trace and fail the rate on it when it is far over the SLO
    (a queue that grew past it in a quarter of the arrivals grows further in all of them),
    which makes the far-off rates of the bracketing cheap; near the answer every run is full
    length."""
    if not (tolerance > 0 and step > 1 and 0 < min_rps <= max_rps):
        raise ValueError("need tolerance > 0, step > 1 and 0 < min_rps <= max_rps")
    trials: list[Trial] = []

    def run(rate: float, screen: bool = False) -> bool:
        trials.extend(measure(rate, screen))
        return trials[-1].sustained

    low, high, rate = 0.0, math.inf, min(max(guess, min_rps), max_rps)
    while low == 0.0 or math.isinf(high):
        if run(rate, True):
            low = rate
            if not math.isinf(high):
                break
            if rate >= max_rps:
                return Capacity(low, low, high, slo_p95_s, tolerance, duration_s, tuple(trials),
                                f"every rate passed, up to the largest tried ({max_rps:g} req/s)")
            rate = min(rate * step, max_rps)
        else:
            high = rate
            if low > 0:
                break
            if rate <= min_rps:
                return Capacity(0.0, 0.0, high, slo_p95_s, tolerance, duration_s, tuple(trials),
                                f"no rate passed, down to the smallest tried ({min_rps:g} req/s)")
            rate = max(rate / step, min_rps)
    while high > (1 + tolerance) * low:
        mid = math.sqrt(low * high)
        if run(mid):
            low = mid
        else:
            high = mid
    return Capacity(low, low, high, slo_p95_s, tolerance, duration_s, tuple(trials))


SCREEN = 0.25  # a screening run's share of the duration
SCREEN_MARGIN = 2.0  # a screening run fails a rate only when its P95 exceeds this x the SLO (a run's first
# requests meet a cold body: on the real CPU body a 5 s run gave P95 4.5 s where its 20 s run gave 2.2 s)


def _measure(body: str, choice: PolicyChoice, template: Template, duration: float, slo_p95_s: float,
             run: Callable[[list], Run], progress: Callable[[str], None],
             speed_of: Callable[[Run], dict[str, float | None]] | None = None) -> Measure:
    """A `Measure` that runs `template` at a rate through `run` (one body's run function);
    `speed_of`: how fast a run's items ran against their price (`Trial.speed`)."""

    def trial(rate: float, seconds: float) -> Trial:
        t0 = time.perf_counter()
        done_run = run(template.at(rate, seconds))
        records = done_run.result.records
        p95 = p95_of(records)
        done = sum(r.status == "completed" for r in records)
        speed = speed_of(done_run) if speed_of is not None else None
        out = Trial(rate, len(records), done, p95, p95 <= slo_p95_s, time.perf_counter() - t0, seconds, speed)
        at = speed_text(speed)
        at = f", {at}" if at else ""
        progress(f"{body} {choice.spec} at {rate:.3g} req/s, {seconds:.0f} s: P95 {p95:.3g} s"
                 f" ({'passes' if out.sustained else 'fails'}; {out.wall_s:.0f} s{at})")
        return out

    def measure(rate: float, screen: bool) -> list[Trial]:
        runs = [trial(rate, SCREEN * duration)] if screen else []
        if runs and runs[0].p95_s > SCREEN_MARGIN * slo_p95_s:
            return runs
        return [*runs, trial(rate, duration)]

    return measure


def sim_capacity(template: Template, choice: PolicyChoice, profile: Profile, *, slo_p95_s: float = SLO_P95_S,
                 tolerance: float = TOLERANCE, duration_s: float | None = None, guess: float = 1.0,
                 step: float = 2.0, progress: Callable[[str], None] = lambda msg: None,
                 kv_policy: KVPolicy | None = None) -> Capacity:
    """`choice`'s capacity on the simulator with `profile` (and `kv_policy`, default lru), for
    `template`'s workload."""
    latency = LatencyModel(profile)
    duration = duration_s or min_duration_s(slo_p95_s, tolerance)
    measure = _measure("sim", choice, template, duration, slo_p95_s,
                       lambda reqs: simulate(reqs, choice, profile, timeline=False, latency=latency,
                                             kv_policy=kv_policy), progress)
    return search(measure, guess, tolerance=tolerance, step=step, slo_p95_s=slo_p95_s, duration_s=duration)


def real_capacity(body: RealBackend, template: Template, choice: PolicyChoice, costs: LatencyModel, *,
                  slo_p95_s: float = SLO_P95_S, tolerance: float = TOLERANCE, duration_s: float | None = None,
                  guess: float = 1.0, step: float = 2.0, max_rps: float = 10_000.0,
                  progress: Callable[[str], None] = lambda msg: None) -> Capacity:
    """`choice`'s capacity on the real `body` (its sub-stages priced by `costs`, the body's
    measured profile), for `template`'s workload (made from the body's corpus). A good `guess`
    (the simulator's capacity with a profile of this body) and a small `step` save runs. Each
    run's items are priced by `costs` too: how fast the machine ran (`Capacity.run_speed`)."""
    from calibration.validate import retimed_items, run_speed

    duration = duration_s or min_duration_s(slo_p95_s, tolerance)
    measure = _measure("real", choice, template, duration, slo_p95_s,
                       lambda reqs: run_real(body, reqs, choice, costs, timeline=True), progress,
                       lambda run: run_speed(retimed_items(run.result.timeline, costs)))
    return search(measure, guess, tolerance=tolerance, step=step, max_rps=max_rps, slo_p95_s=slo_p95_s,
                  duration_s=duration)


def sim_capacity_at_speed(template: Template, choice: PolicyChoice, profile: Profile,
                          speed: dict[str, float | None] | None, *, guess: float = 1.0, slo_p95_s: float = SLO_P95_S,
                          tolerance: float = TOLERANCE, duration_s: float | None = None) -> Capacity | None:
    """The simulator's capacity with `profile` at a measured `speed` (`staleness.at_measured_speed`):
    a probe's, or a real search's (`Capacity.run_speed`), whose capacity's gap to this one is the
    model's error, the machine's drift taken out; None when nothing was measured."""
    from calibration.staleness import at_measured_speed

    if speed is None:
        return None
    return sim_capacity(template, choice, at_measured_speed(profile, speed), slo_p95_s=slo_p95_s,
                        tolerance=tolerance, duration_s=duration_s, guess=guess)


def speed_text(speed: dict[str, float | None] | None) -> str:
    """A measured speed in a line: "engine_step 0.97x, search_call 1.03x" ("" for none)."""
    return ", ".join(f"{kind} {v:.2f}x" for kind, v in (speed or {}).items() if v is not None)
