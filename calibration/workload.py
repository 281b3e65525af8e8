"""Workloads that validation and the capacity search rescale to any load.

A workload is a list of requests of one workflow (or a comma-joined mix) arriving as a Poisson
process of 1 request per second; `at_rate` divides their arrival times by a rate, so the same
requests arrive at any rate (a Poisson process stays one). `corpus_requests` makes them from
a real body's corpus (real questions, queries and probe lists, as `hedra trace gen --corpus`
does); `generated_requests` makes them for the simulator alone, on a profile's index
(synthetic probe lists and truth, as `hedra trace gen` does). `Template` keeps one and makes
it longer when a rate x duration asks for more requests than it holds.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING

from ragraph.graph import Request
from ragraph.workflows import WorkflowRegistry
from traces.generate import TraceConfig, generate_trace
from traces.schema import TraceRequest, to_request

if TYPE_CHECKING:
    from backends.real import RealBackend

Progress = Callable[[str], None]


def default_nprobe(nlist: int) -> int:
    """Lists a retrieval searches when a workload does not say: an eighth of the index's."""
    return max(1, nlist // 8)


def _config(workflow: str, n: int, seed: int, nprobe: int | None, nlist: int) -> TraceConfig:
    return TraceConfig(tuple(workflow.split(",")), 1.0, n * 1.5 + 10, seed=seed,
                       nprobe=nprobe or default_nprobe(nlist), nlist=nlist)


def corpus_requests(body: RealBackend, workflow: str, n: int, *, seed: int = 0, nprobe: int | None = None,
                    registry: WorkflowRegistry | None = None, progress: Progress = lambda msg: None
                    ) -> list[Request]:
    """`n` requests of `workflow` made from the body's own corpus (real questions, queries and
    probe lists, as `hedra trace gen --corpus` makes them), arriving as a Poisson process of
    1 request per second: `at_rate` rescales them to any rate."""
    from backends.real_trace import realize_trace

    registry = registry or WorkflowRegistry()
    progress(f"making {n} {workflow} requests from the corpus")
    cfg = _config(workflow, n, seed, nprobe, body.retriever.nlist)
    rows = realize_trace(generate_trace(cfg, registry)[:n], body.corpus, body.embedder, seed=seed)
    return [to_request(TraceRequest.model_validate(r), registry) for r in rows]


def generated_requests(workflow: str, n: int, nlist: int, *, seed: int = 0, nprobe: int | None = None,
                       registry: WorkflowRegistry | None = None) -> list[Request]:
    """`n` requests of `workflow` for the simulator on an index of `nlist` lists (synthetic probe
    lists and truth, as `hedra trace gen` makes them), arriving at 1 request per second."""
    registry = registry or WorkflowRegistry()
    rows = generate_trace(_config(workflow, n, seed, nprobe, nlist), registry)[:n]
    return [to_request(TraceRequest.model_validate(r), registry) for r in rows]


def at_rate(requests: Sequence[Request], rate: float, duration_s: float | None = None) -> list[Request]:
    """`requests` (arriving at 1 per second on average) with their arrival times divided by
    `rate`, so they arrive at `rate` per second (a Poisson process stays one); with
    `duration_s`, only those that arrive before it."""
    out = [replace(r, arrival_s=r.arrival_s / rate) for r in requests]
    return [r for r in out if duration_s is None or r.arrival_s < duration_s]


class Template:
    """One workload, made longer on demand: `at(rate, duration_s)` gives its requests arriving
    at `rate` for `duration_s` seconds, remaking it (same seed, a quarter more requests than
    needed) when it holds too few. `make(n)` returns n requests at 1 per second."""

    def __init__(self, make: Callable[[int], list[Request]], initial: int = 100) -> None:
        self._make = make
        self.requests = make(initial)

    def at(self, rate: float, duration_s: float) -> list[Request]:
        if max(r.arrival_s for r in self.requests) < rate * duration_s:  # too few to fill the duration
            self.requests = self._make(int(1.25 * rate * duration_s) + 20)
        return at_rate(self.requests, rate, duration_s)
