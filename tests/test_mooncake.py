"""`hedra trace import mooncake`: Mooncake-format traces into Hedra's format, and its refusals."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sim.executor import Simulation
from tests.test_cli import assert_usage_error, hedra
from traces.mooncake import import_mooncake
from traces.schema import TraceError, load_trace

LINES = [
    {"timestamp": 0, "input_length": 1200, "output_length": 20, "hash_ids": [1, 2, 3]},
    {"timestamp": 1500, "input_length": 700, "output_length": 5, "hash_ids": [1, 2]},
    {"timestamp": 2500.5, "input_length": 600, "output_length": 9, "hash_ids": [1, 7]},
    {"timestamp": 3000, "input_length": 30, "output_length": 1, "hash_ids": []},
]


def write(tmp_path: Path, rows: list, name: str = "mc.jsonl") -> Path:
    path = tmp_path / name
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def test_the_documented_mapping(tmp_path):
    rows = import_mooncake(write(tmp_path, LINES), "gen-only")
    assert [r["id"] for r in rows] == ["mc0000001", "mc0000002", "mc0000003", "mc0000004"]
    assert [r["arrival_s"] for r in rows] == [0.0, 1.5, 2.5005, 3.0]
    assert rows[0]["stages"] == [{"op": "generate", "prompt_tokens": 1200, "output_tokens": 20,
                                  "hash_ids": [1, 2, 3], "block_tokens": 512}]
    assert rows[3]["stages"] == [{"op": "generate", "prompt_tokens": 30, "output_tokens": 1}]
    retrieving = import_mooncake(write(tmp_path, LINES), "one-shot", nprobe=8, nlist=64, seed=3)
    assert [s["op"] for s in retrieving[0]["stages"]] == ["retrieve", "generate"]
    assert len(set(retrieving[0]["stages"][0]["clusters"])) == 8


def test_imported_prompts_share_their_common_ids_in_the_simulator(tmp_path):
    from hwmodel.latency import LatencyModel
    from hwmodel.profile import load_profile
    from ragraph.policies import make_policy
    from traces.generate import write_jsonl

    trace = tmp_path / "t.jsonl"
    write_jsonl(import_mooncake(write(tmp_path, LINES), "gen-only"), trace)
    latency = LatencyModel(load_profile())
    result = Simulation(load_trace(trace), make_policy("hedra", latency), latency).run()
    assert len(result.records) == 4 and all(r.status == "completed" for r in result.records)
    # the second: ids 1, 2 cover its 700 tokens, its full blocks (43 x 16) found; the third: id 1 (512)
    assert result.kv_cache["prompt_tokens_cached"] == 688 + 512


@pytest.mark.parametrize(("line", "field"), [
    ({"timestamp": 0, "input_length": 1000, "output_length": 2, "hash_ids": [1, 2, 3]}, "hash_ids"),
    ({"timestamp": -1, "input_length": 10, "output_length": 2, "hash_ids": [1]}, "timestamp"),
    ({"timestamp": 0, "output_length": 2, "hash_ids": [1]}, "input_length"),
    ({"timestamp": 0, "input_length": 10, "hash_ids": [1]}, "output_length"),
    ({"timestamp": 0, "input_length": 10, "output_length": 2}, "hash_ids"),
    ({"input_length": 10, "output_length": 2, "hash_ids": []}, "timestamp"),
    ({"timestamp": 0, "input_length": 0, "output_length": 2, "hash_ids": []}, "input_length"),
    ({"timestamp": 0, "input_length": 10, "output_length": 2, "hash_ids": [-4]}, "hash_ids"),
    ({"timestamp": "0", "input_length": 10, "output_length": 2, "hash_ids": []}, "timestamp"),
])
def test_refusals_name_file_line_and_field(tmp_path, line, field):
    path = write(tmp_path, [LINES[0], line])
    with pytest.raises(TraceError) as err:
        import_mooncake(path, "gen-only")
    assert str(err.value).startswith(f"{path}:2: field {field}:")


def test_a_workflow_of_other_than_one_generation_is_refused(tmp_path):
    with pytest.raises(ValueError, match="exactly one"):
        import_mooncake(write(tmp_path, LINES), "irg")


def test_the_command_writes_the_trace_or_nothing(tmp_path):
    out = tmp_path / "h.jsonl"
    ok = hedra("trace", "import", "mooncake", write(tmp_path, LINES), "--out", out)
    assert ok.returncode == 0, ok.stderr
    assert len(load_trace(out)) == 4
    bad = write(tmp_path, [*LINES, {"timestamp": -5, "input_length": 10, "output_length": 2, "hash_ids": []}],
                "bad.jsonl")
    line = assert_usage_error(hedra("trace", "import", "mooncake", bad, "--out", tmp_path / "b.jsonl"),
                              tmp_path / "b.jsonl")
    assert f"{bad}:5: field timestamp" in line
