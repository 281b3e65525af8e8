"""Measured quality tables: every question of a trace under every synthesis configuration, on the real body.

Source: RAGServe / METIS (arXiv 2412.10543), whose configuration choice trades answer quality
(F1 against gold answers) for delay. Quality cannot come from timing, so for a trace with gold
answers (a FanOutQA `metis` trace, `hedra trace gen --corpus wiki --dataset fanoutqa --workflow
metis`) `hedra quality measure` replays its questions once per configuration on the real body
with a model that answers (`backends.answers`: METIS's prompts per fan-out role), under the
`fixed` policy of that configuration, and scores each answer (`ragraph.quality`). The trace it
writes is the input trace with each request's `synthesis.quality` replaced by the measured
table, its source named `measured:<model>` so that every output reading it (summary.json
`quality`, `hedra compare`) says the F1 is measured and by which model.

- A measurement replay is about quality, not delay: every request arrives at 0 s (one batch),
  so the engine batches the questions together. Greedy decoding gives the same answer whatever
  the batch, up to the engine's floating-point order.
- A configuration over more chunks than a request's retrieval returned is not run for it (no
  policy may choose it there); a request that fails under a configuration (a call longer than
  the engine's context, say) gave no answer: F1 0, counted in `failed`.
- Default configurations: every one a configuring policy may choose for the trace's requests
  (`ragraph.synthesis.space` over each request's chunks: `ragserve`'s whole space);
  `configs` restricts them (a small grid on a CPU), and `ragserve` then chooses among those.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

from ragraph.graph import Request
from ragraph.policies import parse_policy
from ragraph.synthesis import MEASURED, Method, SynthesisConfig, parse_config, space
from traces.generate import write_jsonl
from traces.schema import TraceError, read_lines

if TYPE_CHECKING:
    from backends.real import RealBackend
    from ragraph.costs import SearchCostModel

Progress = Callable[[str], None]


def source_name(model: str) -> str:
    """The quality table's source for answers of `model` (a name, or a folder: its last part)."""
    return f"{MEASURED}:{Path(str(model)).name or model}"


def measurable(requests: Sequence[Request], path: Path | str) -> list[Request]:
    """The requests whose quality can be measured (a synthesis chosen at run time, gold answers);
    raises TraceError (one line) where there are none, or one such request lacks gold answers."""
    configured = [r for r in requests if r.synthesis is not None]
    if not configured:
        raise TraceError(f"{path}: no request chooses its synthesis at run time (workflow metis): nothing to measure")
    if missing := next((r for r in configured if not r.answers), None):
        raise TraceError(f"{path}: request {missing.id!r} has no gold answers: its quality cannot be measured"
                         " (make the trace from a dataset with answers: --dataset fanoutqa)")
    return configured


def default_configs(requests: Sequence[Request]) -> list[SynthesisConfig]:
    """Every configuration a policy may choose for some request (the union of their spaces, in order)."""
    most = max((r.synthesis.max_chunks for r in requests if r.synthesis is not None), default=0)
    return list(space(most))


def parse_configs(text: str) -> list[SynthesisConfig]:
    """Configurations named by their labels, separated by `;` or spaces
    (`stuff:chunks=3;map_reduce:chunks=3,length=25`); raises ConfigError. Duplicates kept once."""
    out: list[SynthesisConfig] = []
    for label in text.replace(";", " ").split():
        config = parse_config(label)
        if config not in out:
            out.append(config)
    return out


def policy_spec(config: SynthesisConfig) -> str:
    """The `fixed` policy that runs `config` for every request."""
    length = f",length={config.intermediate_length}" if config.method is Method.MAP_REDUCE else ""
    return f"fixed:synthesis={config.method.value},chunks={config.num_chunks}{length}"


@dataclass
class Measured:
    """The measured F1 per (request, configuration label), and what it took."""

    f1: dict[str, dict[str, float]] = field(default_factory=dict)
    failed: dict[str, int] = field(default_factory=dict)  # configuration label -> requests failed (F1 0)
    wall_s: dict[str, float] = field(default_factory=dict)  # configuration label -> replay wall seconds

    def mean(self, label: str) -> float | None:
        values = [table[label] for table in self.f1.values() if label in table]
        return sum(values) / len(values) if values else None


def measure(body: RealBackend, requests: Sequence[Request], configs: Sequence[SynthesisConfig],
            costs: SearchCostModel, progress: Progress = lambda msg: None,
            executor_hook: Callable[[object], None] | None = None) -> Measured:
    """Each of `requests` (measurable ones) under each of `configs`, on `body` (a model that answers)."""
    from runs.run import run_real

    if not body.text:
        raise TraceError(f"--model {body.engine.model}: the model does not answer (no chat template):"
                         " quality needs a model that answers, e.g. --model smollm2")
    batch = [_at_zero(r) for r in requests]
    out = Measured({r.id: {} for r in batch})
    for n, config in enumerate(configs, 1):
        runnable = [r for r in batch if r.synthesis is not None and not config.problem(r.synthesis.max_chunks)]
        progress(f"configuration {n}/{len(configs)} {config.label}: {len(runnable)} questions")
        if not runnable:
            continue
        run = run_real(body, runnable, parse_policy(policy_spec(config)), costs, timeline=False,
                       executor_hook=executor_hook)
        failed = 0
        for rec in run.result.records:
            completed = rec.status == "completed" and rec.f1 is not None
            failed += not completed
            out.f1[rec.id][config.label] = round(float(rec.f1), 4) if completed else 0.0
        out.failed[config.label] = failed
        out.wall_s[config.label] = float(run.summary["wall_s"])  # type: ignore[arg-type]
        mean = out.mean(config.label)
        progress(f"configuration {n}/{len(configs)} {config.label}: F1 {mean:.3f} over {len(runnable)}"
                 f" questions ({failed} failed), {out.wall_s[config.label]:.1f} s")
    return out


def _at_zero(request: Request) -> Request:
    """`request` arriving at 0 s, its quality table (a model's, if any) left out: it is being measured."""
    syn = request.synthesis
    return replace(request, arrival_s=0.0,
                   synthesis=None if syn is None else replace(syn, quality=(), quality_source=""))


def write_measured(trace: Path, measured: Measured, source: str, out: Path) -> int:
    """Write `trace` to `out` with each measured request's `synthesis.quality` = {source, f1}
    (atomically); the other lines unchanged. Returns the requests given a table."""
    rows = []
    given = 0
    for lineno, line in enumerate(read_lines(trace), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError:
            raise TraceError(f"{trace}:{lineno}: not JSON") from None
        table = measured.f1.get(row.get("id"))
        if table and isinstance(row.get("synthesis"), dict):
            row["synthesis"]["quality"] = {"source": source, "f1": table}
            given += 1
        rows.append(row)
    write_jsonl(rows, out)
    return given
