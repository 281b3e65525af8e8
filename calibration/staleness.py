"""A profile that knows when it is stale: a few seconds of probe of the real body against the
profile's prediction.

Before a real run, validation or a benchmark uses a measured profile, `check_profile` runs a
small slice of the calibration grid (`calibration.profiler`: engine steps of four batch
shapes, search calls of four sizes, about 70 items, a few seconds on the CPU rig) on the
body's own cores, prices every item with the profile's latency functions, and takes the
signed relative error of the priced time against the measured, each summed per kind
(prefill steps, decode steps, search calls that embed their queries, search calls that only
scan). Beyond `TOLERANCE` on any kind it returns one line saying so, with the command that
recalibrates. Summed, not a median over items: half the probe's decode steps are of one
and four sequences, whose fixed cost swings 1.0-2.4x within a minute on this VM (stop 34:
three probes in a row, 1.65 ms steps taking 2.2-4.0 ms), and a median over them once said a
profile a minute old was 1.4x off; a sum weights each item by its time, as a run does.
Prefill and decode steps apart, as the embedding and the scan are: in a probe the prefills
take most of the engine's time, and a sum over both would let them hide decode steps off by
2x. The CPU model string cannot tell VMs of one kind apart, and the same VM drifts by 10-20%
between runs (`.ci/run`); 25% lies above that drift and below what made validation wrong on
another VM (engine steps 32% off, issue 16).

The same probe also says how fast the machine runs now against the calibration's minute
(`Staleness.speed`: measured over priced time per kind, divided by what the probe measured
right after the calibration, `Profile.probe`). `Profile.at_speed` of it is a prediction that
follows the machine's drift up to the probe's minute (validation's `--probe-each-cell`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from calibration.cpu import cpu_id
from calibration.profiler import Row, profile_engine, profile_search
from hwmodel.latency import AfterPrefill, LatencyModel
from hwmodel.profile import ProbeReference, Profile

if TYPE_CHECKING:
    from backends.real import RealBackend

TOLERANCE = 0.25  # |priced / measured - 1| of a kind (each summed) beyond which the profile is stale
# a measured profile's `probe` reference was taken on these shapes: changing them calls for a recalibration
# (sequences, prompt tokens): prefill chunks, then decode steps; one and four sequences as most of a replay's
# steps are (stop 27: the two larger shapes alone said little about them)
PROBE_ENGINE = ((1, 256), (4, 256), (16, 256), (64, 64))
PROBE_OUTPUT = 12  # output tokens per sequence
PROBE_SEARCH = ((1, 8), (4, 16), (8, 8), (32, 4))  # (queries per call, lists per query)
PROBE_TEXT = (60, 350)  # query text lengths (characters)
# what the probe compares, each on its own: a profile whose query embedding is off by 2x while its
# scans are right is stale, and a median over both kinds of search call hid it (it did, issue 16)
KINDS = {"prefill_step": "engine steps that prefill", "decode_step": "engine steps that only decode",
         "search_embed": "search calls that embed queries", "search_scan": "search calls that only scan"}


def probe_kind(row: Row) -> str:
    """The `KINDS` key of a profiler row."""
    if row["kind"] == "engine_step":
        return "prefill_step" if int(row["prefill_tokens"]) else "decode_step"
    return "search_embed" if row["new_queries"] else "search_scan"


@dataclass(frozen=True, slots=True)
class Staleness:
    """How far the body at hand is from its profile."""

    profile: str
    errors: dict[str, float | None]  # per kind: (priced - measured) / measured, each summed (None: no items)
    items: dict[str, int]  # per kind: items measured
    tolerance: float
    probe_s: float  # seconds the probe took
    speed: dict[str, float | None]  # per `SPEED_KINDS`: the machine's time over the calibration's (`speed`)
    # (the profile's CPU, this one's) where both are known and differ (`calibration.cpu.cpu_id`); None otherwise
    other_cpu: tuple[str, str] | None = None

    def to_json(self) -> dict[str, object]:
        return {"profile": self.profile, "stale": self.stale, "rel_error": self.errors, "items": self.items,
                "tolerance": self.tolerance, "probe_s": self.probe_s, "speed": self.speed,
                "other_cpu": list(self.other_cpu) if self.other_cpu else None}

    @property
    def stale(self) -> bool:
        return any(e is not None and abs(e) > self.tolerance for e in self.errors.values())

    def line(self, recalibrate: str) -> str:
        """One line: what is off, by how much, and `recalibrate` (the command that fixes it)."""
        parts = [f"{KINDS[kind]} take {1 / (1 + err):.2f}x its prediction" for kind, err in self.errors.items()
                 if err is not None]
        cpu = f"; it was measured on {self.other_cpu[0]}, this CPU is {self.other_cpu[1]}" if self.other_cpu else ""
        return (f"profile {self.profile} does not describe this machine: {', '.join(parts)} (a {self.probe_s:.0f} s"
                f" probe; tolerance {self.tolerance:.0%}{cpu}); recalibrate: {recalibrate}")


def predicted_s(latency: LatencyModel, rows: Sequence[Row]) -> list[float]:
    """The profile's price of each probe row (engine steps and search calls, as the profiler
    records them, in the order they ran: a step's refill and kernels depend on the steps before it)."""
    after_prefill, kernels = AfterPrefill(), latency.kernel_sizes()
    out = []
    for row in rows:
        if row["kind"] == "engine_step":
            out.append(latency.gen_step_s(int(row["prefill_tokens"]), int(row["seqs"]), int(row["context_tokens"]),
                                          int(row["admitted"]), int(row["admitted_tokens"]),
                                          int(row["prefill_attention"]))
                       + latency.refill_s(*after_prefill.step(int(row["prefill_tokens"])))
                       + latency.kernels_s(kernels, int(row["computed_tokens"])))
        else:
            out.append(latency.search_call_s(row))  # type: ignore[arg-type]
    return out


SPEED_KINDS = ("engine_step", "search_call")  # what `Profile.at_speed` scales, each on its own


def at_measured_speed(profile: Profile, speed: dict[str, float | None]) -> Profile:
    """`profile` for the machine at a measured `speed` (per `SPEED_KINDS`, a probe's or a real
    run's; a kind not measured stays at 1.0)."""
    return profile.at_speed(speed.get("engine_step") or 1.0, speed.get("search_call") or 1.0)


def measured_over_priced(items: Iterable[tuple[str, float, float]],
                         kinds: Iterable[str] = SPEED_KINDS) -> dict[str, float | None]:
    """Per kind of `kinds`: the items' measured seconds over their priced seconds, each summed,
    from (kind, measured, priced) triples (None: no item of that kind). The probe's speed and
    verdict, and a validation run's speed (`calibration.validate.run_speed`)."""
    measured, priced = dict.fromkeys(kinds, 0.0), dict.fromkeys(kinds, 0.0)
    for kind, seconds, price in items:
        if kind in priced:
            measured[kind] += seconds
            priced[kind] += price
    return {kind: measured[kind] / priced[kind] if priced[kind] > 0 else None for kind in priced}


def _probe_speed(rows: Sequence[Row], prices: Sequence[float]) -> dict[str, float | None]:
    return measured_over_priced((str(r["kind"]), float(r["seconds"]), price)
                                for r, price in zip(rows, prices, strict=True))


def reference(profile: Profile, rows: Sequence[Row]) -> ProbeReference:
    """`Profile.probe` from a probe run right after the calibration that fitted `profile`."""
    speed = _probe_speed(rows, predicted_s(LatencyModel(profile), rows))
    return ProbeReference(**{kind: speed[kind] or 1.0 for kind in SPEED_KINDS})


def speed(profile: Profile, rows: Sequence[Row], prices: Sequence[float]) -> dict[str, float | None]:
    """How much longer than at the calibration the probe's items took, per `SPEED_KINDS`
    (measured over priced time, over the profile's `probe` reference; 1.0: as fast; > 1: slower)."""
    ref = profile.probe
    return {kind: None if v is None else v / (getattr(ref, kind) if ref else 1.0)
            for kind, v in _probe_speed(rows, prices).items()}


def compare(profile: Profile, rows: Sequence[Row], tolerance: float = TOLERANCE, probe_s: float = 0.0) -> Staleness:
    """The signed error of the profile's prediction per kind (priced over measured time, each
    summed, minus one) over measured `rows`, and the machine's speed against the calibration's."""
    prices = predicted_s(LatencyModel(profile), rows)
    kinds = [probe_kind(r) for r in rows]
    ratio = measured_over_priced(((kind, float(r["seconds"]), price)
                                  for kind, r, price in zip(kinds, rows, prices, strict=True)), KINDS)
    errors = {kind: None if not v else 1 / v - 1 for kind, v in ratio.items()}
    items = {kind: kinds.count(kind) for kind in KINDS}
    return Staleness(profile.name, errors, items, tolerance, probe_s, speed(profile, rows, prices))


def probe(body: RealBackend, progress: Callable[[str], None] = lambda msg: None) -> list[Row]:
    """A small slice of the calibration grid on the body's own cores (each lane's thread setup)."""
    from backends.real import lanes_on_this_thread, thread_setup
    with lanes_on_this_thread():
        thread_setup(body.gen_cores)
        rows = profile_engine(body.engine, repeats=1, grid=PROBE_ENGINE, stagger=(), output_tokens=PROBE_OUTPUT,
                              kernel_passes=(), progress=progress)
        thread_setup(body.retrieval_cores, search_threads=len(body.retrieval_cores))
        corpus = body.corpus
        passages = [corpus.contents(i) for i in range(0, corpus.ntotal, max(1, corpus.ntotal // 100))]
        rows += profile_search(body.retrieval_body, body.retriever.list_sizes(), passages, body.text_tokens, repeats=1,
                               grid=PROBE_SEARCH, text_chars=PROBE_TEXT, seed=7, progress=progress)
    return rows


def check_profile(body: RealBackend, profile: Profile, *, tolerance: float = TOLERANCE,
                  progress: Callable[[str], None] = lambda msg: None) -> Staleness:
    """Probe `body` and compare it with `profile` (a measured profile of a body like it)."""
    t0 = time.perf_counter()
    rows = probe(body, progress)
    found = compare(profile, rows, tolerance, time.perf_counter() - t0)
    theirs, ours = profile.hardware.cpu_id, cpu_id()
    return replace(found, other_cpu=(theirs, ours)) if theirs and ours and theirs != ours else found


def recalibrate_command(backend: str, corpus: object | None = None) -> str:
    """The command that measures a profile of this body."""
    where = f" --corpus {corpus}" if corpus else ""
    return f"hedra calibrate --backend {backend}{where} --out PROFILE.json, then pass --profile PROFILE.json"


def warn_if_stale(body: RealBackend, profile: Profile, say: Callable[[str], None], *, corpus: object | None = None,
                  progress: Callable[[str], None] = lambda msg: None) -> Staleness:
    """`check_profile`, and one line through `say` when the profile is stale (what the commands
    and benchmarks that use a measured profile call before they run)."""
    found = check_profile(body, profile, progress=progress)
    if found.stale:
        say(found.line(recalibrate_command(body.options.backend, corpus)))
    return found
