"""`hedra quality measure` without engines (calibration/quality.py, experiments/cli/quality.py):
the configurations it measures, the trace it writes, and its refusals (one line, exit 2,
nothing written). The smallest real measurement is in tests/test_smollm2.py."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from calibration.quality import (
    Measured,
    default_configs,
    measurable,
    parse_configs,
    policy_spec,
    source_name,
    write_measured,
)
from ragraph.policies import parse_policy
from ragraph.synthesis import ConfigError, Method, SynthesisConfig, space
from traces.generate import TraceConfig, generate_trace, write_jsonl
from traces.schema import TraceError, load_trace

ROOT = Path(__file__).resolve().parents[1]


def metis_trace(path: Path, answers: bool = True) -> Path:
    rows = generate_trace(TraceConfig(("metis",), 2.0, 2.0, seed=5))
    for n, row in enumerate(rows):
        row["question"] = f"question {n}?"
        if answers:
            row["answers"] = [f"answer {n}"]
    write_jsonl(rows, path)
    return path


def hedra(*args: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "experiments.cli", *map(str, args)], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)


def test_configs_parse_by_label_and_default_to_the_policies_space(tmp_path):
    grid = parse_configs("stuff:chunks=3; map_reduce:chunks=3,length=25 stuff:chunks=3")
    assert grid == [SynthesisConfig(Method.STUFF, 3), SynthesisConfig(Method.MAP_REDUCE, 3, 25)]
    with pytest.raises(ConfigError, match="num_chunks 0"):
        parse_configs("stuff:chunks=0")
    assert policy_spec(grid[1]) == "fixed:synthesis=map_reduce,chunks=3,length=25"
    assert parse_policy(policy_spec(grid[1])).spec == policy_spec(grid[1])  # a policy spec that parses
    requests = load_trace(metis_trace(tmp_path / "t.jsonl"))
    most = max(r.synthesis.max_chunks for r in requests)
    assert default_configs(requests) == list(space(most))
    assert source_name("smollm2") == "measured:smollm2" and source_name("/m/my-model/") == "measured:my-model"


def test_a_trace_without_gold_answers_or_without_a_run_time_synthesis_is_refused(tmp_path):
    bare = tmp_path / "bare.jsonl"
    requests = load_trace(metis_trace(bare, answers=False))
    with pytest.raises(TraceError, match="has no gold answers"):
        measurable(requests, bare)
    with pytest.raises(TraceError, match="no request chooses its synthesis"):
        measurable([replace(r, synthesis=None) for r in requests], bare)
    assert len(measurable(load_trace(metis_trace(tmp_path / "a.jsonl")), "a")) == len(requests)


def test_the_written_trace_holds_the_measured_tables_and_loads(tmp_path):
    trace = metis_trace(tmp_path / "t.jsonl")
    requests = load_trace(trace)
    first, second = requests[0].id, requests[1].id
    measured = Measured({first: {"stuff:chunks=3": 0.5, "map_rerank:chunks=3": 0.0}, second: {}})
    out = tmp_path / "m.jsonl"
    assert write_measured(trace, measured, "measured:smollm2", out) == 1
    again = {r.id: r for r in load_trace(out)}
    syn = again[first].synthesis
    assert syn.quality_source == "measured:smollm2"
    assert dict(syn.quality) == {"stuff:chunks=3": 0.5, "map_rerank:chunks=3": 0.0}
    assert again[second].synthesis.quality_source != "measured:smollm2"  # not measured: left as it was
    before = trace.read_text().splitlines()
    after = out.read_text().splitlines()
    assert before[1:] == after[1:] and before[0] != after[0]  # only the measured line changed
    assert measured.mean("stuff:chunks=3") == 0.5 and measured.mean("stuff:chunks=9") is None


def test_the_cli_refuses_in_one_line_before_loading_anything(tmp_path):
    bare = metis_trace(tmp_path / "bare.jsonl", answers=False)
    gold = metis_trace(tmp_path / "gold.jsonl")
    out = tmp_path / "m.jsonl"
    cases = [
        ((bare, "--model", "smollm2"), "has no gold answers"),
        ((gold, "--model", "tiny"), "random weights answer nothing"),
        ((gold,), "random weights answer nothing"),
        ((gold, "--model", "smollm2", "--configs", "stuff:chunks=99"), "--configs: stuff:chunks=99"),
        ((gold, "--model", "smollm2", "--configs", " ; "), "--configs names no configuration"),
    ]
    for (trace, *extra), message in cases:
        proc = hedra("quality", "measure", "--trace", trace, "--out", out, *extra)
        assert proc.returncode == 2, proc.stderr
        assert proc.stderr.strip().count("\n") == 0 and message in proc.stderr, proc.stderr
        assert not out.exists()
    out.write_text("")
    proc = hedra("quality", "measure", "--trace", gold, "--out", out, "--model", "smollm2")
    assert proc.returncode == 2 and "already exists" in proc.stderr
    json.loads(gold.read_text().splitlines()[0])  # the input untouched
