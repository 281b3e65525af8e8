"""Import public traces in Mooncake's format (Qin et al., "Mooncake", FAST 2025; the
kvcache-ai/Mooncake repository's `traces/`) into Hedra's trace format.

A Mooncake trace is JSON Lines, one request per line: `timestamp` (ms since the trace's start),
`input_length` and `output_length` (tokens), `hash_ids` (one id per block of `block_tokens`
prompt tokens, 512 in the published traces; equal ids at equal positions = equal blocks, so the
prompts' shared prefixes form a tree). The mapping (docs/traces.md, "Mooncake"):

| Mooncake | Hedra |
|---|---|
| line n (1-based) | request `id` = `mc` + n, zero-padded to 7 digits |
| `timestamp` / 1000 | `arrival_s` |
| `input_length` | the generation's `prompt_tokens` |
| `output_length` | the generation's `output_tokens` |
| `hash_ids`, `block_tokens` | the generation's `hash_ids`, `block_tokens` |

The workflow is the user's: a workflow of exactly one generation at its default iterations
(`gen-only`: the generation alone; `one-shot`: a retrieval before it). Its retrievals get
`nprobe` synthetic probe lists (`traces.probes`, seeded) and no recorded truth.

Refused, with the file, the line and the field (nothing is written): a line that is not a
JSON object; a missing field, or one of the wrong type; a negative timestamp; a length below
1; more ids than the input's tokens fill (`(len(hash_ids) - 1) x block_tokens >= input_length`).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ragraph.graph import Op
from ragraph.workflows import WorkflowRegistry, WorkflowSpec
from traces.probes import ProbeModel
from traces.schema import TraceError, read_lines

FIELDS = ("timestamp", "input_length", "output_length", "hash_ids")
BLOCK_TOKENS = 512  # Mooncake's published traces


def _int(row: dict, name: str, where: str, low: int) -> int:
    value = row[name]
    if type(value) is not int:  # (a bool is not a length)
        raise TraceError(f"{where}: field {name}: must be an integer, got {json.dumps(value)}")
    if value < low:
        raise TraceError(f"{where}: field {name}: must be >= {low}, got {value}")
    return value


def _line(text: str, where: str, block_tokens: int) -> tuple[float, int, int, list[int]]:
    """(arrival seconds, input tokens, output tokens, hash ids) of one line; raises TraceError."""
    try:
        row = json.loads(text)
    except json.JSONDecodeError as exc:
        raise TraceError(f"{where}: not JSON ({exc.msg}, column {exc.colno})") from None
    if not isinstance(row, dict):
        raise TraceError(f"{where}: not a JSON object")
    for name in FIELDS:
        if name not in row:
            raise TraceError(f"{where}: field {name}: missing")
    ts = row["timestamp"]
    if type(ts) not in (int, float) or not np.isfinite(ts):
        raise TraceError(f"{where}: field timestamp: must be a number of milliseconds, got {json.dumps(ts)}")
    if ts < 0:
        raise TraceError(f"{where}: field timestamp: negative ({ts} ms)")
    inp = _int(row, "input_length", where, 1)
    out = _int(row, "output_length", where, 1)
    ids = row["hash_ids"]
    if not isinstance(ids, list) or any(type(h) is not int or not 0 <= h < 2**63 for h in ids):
        raise TraceError(f"{where}: field hash_ids: must be a list of non-negative integers")
    if ids and (len(ids) - 1) * block_tokens >= inp:
        raise TraceError(f"{where}: field hash_ids: {len(ids)} blocks of {block_tokens} tokens,"
                         f" more than input_length {inp} fills")
    return ts / 1000.0, inp, out, ids


def single_generation(spec: WorkflowSpec) -> list[Op]:
    """The ops of `spec` at its default iterations; raises ValueError unless exactly one generates."""
    ops = [s.op for s in spec.unroll(spec.default_iterations)]
    if ops.count(Op.GENERATE) != 1:
        raise ValueError(f"workflow {spec.name!r} has {ops.count(Op.GENERATE)} generations;"
                         " a Mooncake request maps onto a workflow of exactly one (gen-only, one-shot)")
    return ops


def import_mooncake(path: str | Path, workflow: str, *, block_tokens: int = BLOCK_TOKENS,
                    registry: WorkflowRegistry | None = None, nprobe: int = 256, k: int = 1,
                    nlist: int = 4096, seed: int = 0) -> list[dict]:
    """The Hedra trace rows (JSON-ready) of a Mooncake-format file; raises TraceError naming
    file, line and field, or WorkflowError / ValueError for the workflow and options."""
    path = Path(path)
    spec = (registry or WorkflowRegistry()).get(workflow)
    ops = single_generation(spec)
    if block_tokens < 1 or not 1 <= nprobe <= nlist or k < 1:
        raise ValueError(f"need block_tokens >= 1, 1 <= nprobe <= nlist ({nlist}) and k >= 1")
    probes = ProbeModel(nlist, 0.8, 0.5, np.random.default_rng(seed)) if Op.RETRIEVE in ops else None
    lines = read_lines(path)
    rows = []
    for n, text in enumerate(lines, start=1):
        if not text.strip():
            continue
        arrival, inp, out, ids = _line(text, f"{path}:{n}", block_tokens)
        stages: list[dict] = []
        previous = None
        for op in ops:
            if op is Op.RETRIEVE:
                assert probes is not None
                previous = probes.probe(nprobe, previous)
                stages.append({"op": "retrieve", "nprobe": nprobe, "k": k, "clusters": previous})
            else:
                stage: dict = {"op": "generate", "prompt_tokens": inp, "output_tokens": out}
                if ids:
                    stage |= {"hash_ids": ids, "block_tokens": block_tokens}
                stages.append(stage)
        rows.append({"id": f"mc{n:07d}", "arrival_s": arrival, "workflow": spec.name,
                     "iterations": spec.default_iterations, "stages": stages})
    if not rows:
        raise TraceError(f"{path}: the trace has no requests")
    return rows
