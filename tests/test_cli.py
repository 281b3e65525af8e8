"""The `hedra` command line, run as a subprocess: trace gen + sim end to end, outputs, errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from hwmodel.profile import DEFAULT_CPU_PROFILE, DEFAULT_PROFILE, PROFILE_DIR

ROOT = Path(__file__).resolve().parents[1]
POLICIES = ["langchain", "flashrag", "hedra", "hedra:no-wavefront", "hedra:substages=fixed"]


def hedra(*args: object, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "experiments.cli", *map(str, args)], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)


def trace_gen(out: Path, *extra: object, workflow: str = "irg") -> subprocess.CompletedProcess[str]:
    return hedra("trace", "gen", "--workflow", workflow, "--rate", 2, "--duration", 10, "--out", out, *extra)


def sim(trace: Path, policy: str, out: Path, *extra: object) -> subprocess.CompletedProcess[str]:
    return hedra("sim", "--trace", trace, "--policy", policy, "--out", out, *extra)


def assert_usage_error(proc: subprocess.CompletedProcess[str], out: Path) -> str:
    """Exit 2, one `hedra: error:` line, and nothing written at `out` (nor a temporary beside it)."""
    assert proc.returncode == 2, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("hedra: error:")
    assert len(lines[0]) > len("hedra: error: ")
    assert "Traceback" not in proc.stderr
    assert not out.exists()
    if out.parent.is_dir():
        assert not [p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}")]
    return lines[0]


@pytest.fixture(scope="module")
def trace(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("trace") / "irg.jsonl"
    proc = trace_gen(path, "--seed", 3)
    assert proc.returncode == 0, proc.stderr
    assert path.is_file()
    assert f"to {path}" in proc.stdout
    return path


def trace_lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


# --- end to end -------------------------------------------------------------------------------

def test_trace_gen_writes_a_valid_trace(trace):
    rows = trace_lines(trace)
    assert 5 <= len(rows) <= 40  # ~20 expected at 2 req/s for 10 s
    assert {r["workflow"] for r in rows} == {"irg"}
    assert all(0 <= r["arrival_s"] < 10 for r in rows)
    assert not [p for p in trace.parent.iterdir() if p.name.startswith(".")]


@pytest.mark.parametrize("policy", POLICIES)
def test_sim_end_to_end(tmp_path, trace, policy):
    out = tmp_path / "run"
    proc = sim(trace, policy, out)
    assert proc.returncode == 0, proc.stderr
    assert str(out) in proc.stdout
    assert {p.name for p in out.iterdir()} == {"requests.parquet", "summary.json", "timeline.json", ".hedra-output"}
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]

    n = len(trace_lines(trace))
    summary = json.loads((out / "summary.json").read_text())
    for key in ("requests", "completed", "failed", "latency_s", "throughput_rps", "sim_s", "wall_s"):
        assert key in summary
    assert set(summary["latency_s"]) >= {"mean", "p50", "p95", "p99"}
    assert summary["requests"] == summary["completed"] + summary["failed"] == n
    assert summary["policy"] == policy
    assert summary["sim_s"] > 0 and summary["wall_s"] >= 0 and summary["throughput_rps"] >= 0
    if summary["completed"]:
        lat = summary["latency_s"]
        assert 0 < lat["p50"] <= lat["p95"] <= lat["p99"]

    frame = pd.read_parquet(out / "requests.parquet")
    assert len(frame) == n
    assert list(frame["id"]) == [r["id"] for r in sorted(trace_lines(trace), key=lambda r: r["arrival_s"])]
    assert set(frame["status"]) <= {"completed", "failed"}
    assert (frame["status"] == "completed").sum() == summary["completed"]

    timeline = json.loads((out / "timeline.json").read_text())
    events = timeline["traceEvents"]
    assert isinstance(events, list)
    names = {e["tid"]: e["args"]["name"] for e in events if e.get("ph") == "M" and e["name"] == "thread_name"}
    slices = [e for e in events if e.get("ph") == "X"]
    assert slices
    assert {e["tid"] for e in slices} == set(names)  # a track per lane that ran something, no other
    for e in slices:
        assert isinstance(e["ts"], int | float) and isinstance(e["dur"], int | float)
        assert e["ts"] >= 0 and e["dur"] >= 0
        assert e["tid"] in names
        assert isinstance(e["name"], str) and "pid" in e
    assert {names[e["tid"]] for e in slices} >= {"engine (NVIDIA H100 SXM5 80GB)", "retrieval (CPU)"}


def test_sim_on_a_cpu_profile_names_tracks_by_cpu_cores(tmp_path):
    trace, out = tmp_path / "t.jsonl", tmp_path / "run"
    assert trace_gen(trace, "--nlist", 256, "--nprobe", 32).returncode == 0
    proc = sim(trace, "hedra", out, "--profile", DEFAULT_CPU_PROFILE)
    assert proc.returncode == 0, proc.stderr
    events = json.loads((out / "timeline.json").read_text())["traceEvents"]
    names = {e["args"]["name"] for e in events if e["name"] == "thread_name"}
    assert names == {"engine (CPU core 0)", "retrieval (CPU core 1)"}, names


def test_sim_is_deterministic(tmp_path, trace):
    a, b = tmp_path / "a", tmp_path / "b"
    for out in (a, b):
        proc = sim(trace, "hedra", out, "--seed", 5)
        assert proc.returncode == 0, proc.stderr
    pd.testing.assert_frame_equal(pd.read_parquet(a / "requests.parquet"), pd.read_parquet(b / "requests.parquet"))
    sa, sb = (json.loads((d / "summary.json").read_text()) for d in (a, b))
    sa.pop("wall_s")
    sb.pop("wall_s")
    assert sa == sb
    assert sa["seed"] == 5


def test_sim_replaces_an_older_run(tmp_path, trace):
    out = tmp_path / "run"
    assert sim(trace, "hedra", out).returncode == 0
    (out / "stale.txt").write_text("old")
    proc = sim(trace, "langchain", out)
    assert proc.returncode == 0, proc.stderr
    assert {p.name for p in out.iterdir()} == {"requests.parquet", "summary.json", "timeline.json", ".hedra-output"}


# --- bad input --------------------------------------------------------------------------------

@pytest.mark.parametrize(("policy", "text"), [("nosuch", "nosuch"), ("hedra:no-nosuch", "nosuch"),
                                              ("langchain:wavefront", "wavefront")])
def test_bad_policy(tmp_path, trace, policy, text):
    out = tmp_path / "run"
    line = assert_usage_error(sim(trace, policy, out), out)
    assert text in line


def test_unknown_workflow_in_trace_gen(tmp_path):
    out = tmp_path / "t.jsonl"
    line = assert_usage_error(trace_gen(out, workflow="nosuch"), out)
    assert "nosuch" in line


def test_bad_option_in_trace_gen(tmp_path):
    out = tmp_path / "t.jsonl"
    assert_usage_error(trace_gen(out, "--nprobe", 5000), out)


def test_malformed_trace_line(tmp_path, trace):
    lines = trace.read_text().splitlines()
    bad = json.loads(lines[1])
    del bad["arrival_s"]
    path = tmp_path / "bad.jsonl"
    path.write_text("\n".join([lines[0], json.dumps(bad), *lines[2:]]) + "\n")
    out = tmp_path / "run"
    line = assert_usage_error(sim(path, "hedra", out), out)
    assert f"{path}:2:" in line
    assert "arrival_s" in line


def test_invalid_json_trace_line(tmp_path, trace):
    lines = trace.read_text().splitlines()
    path = tmp_path / "bad.jsonl"
    path.write_text("\n".join([lines[0], lines[1][:-7], *lines[2:]]) + "\n")
    out = tmp_path / "run"
    line = assert_usage_error(sim(path, "hedra", out), out)
    assert f"{path}:2:" in line


def test_missing_profile(tmp_path, trace):
    out = tmp_path / "run"
    line = assert_usage_error(sim(trace, "hedra", out, "--profile", "nosuch"), out)
    assert "nosuch" in line


def test_inconsistent_profile(tmp_path, trace):
    data = json.loads((PROFILE_DIR / f"{DEFAULT_PROFILE}.json").read_text())
    data["model"]["weights_gib"] = 500
    prof = tmp_path / "big-model.json"
    prof.write_text(json.dumps(data, indent=2))
    out = tmp_path / "run"
    line = assert_usage_error(sim(trace, "hedra", out, "--profile", prof), out)
    assert str(prof) in line


def test_missing_trace_file(tmp_path):
    path = tmp_path / "absent.jsonl"
    out = tmp_path / "run"
    line = assert_usage_error(sim(path, "hedra", out), out)
    assert str(path) in line


def test_shipped_profile_by_name_and_path(tmp_path, trace):
    for ref in (DEFAULT_PROFILE, PROFILE_DIR / f"{DEFAULT_PROFILE}.json"):
        out = tmp_path / "run"
        proc = sim(trace, "flashrag", out, "--profile", ref)
        assert proc.returncode == 0, proc.stderr
        assert json.loads((out / "summary.json").read_text())["profile"] == DEFAULT_PROFILE


def test_sim_refuses_a_trace_made_against_another_index(tmp_path, trace):
    """Lines that carry an index identity run only on a profile of that identity; synthetic lines
    (no identity, like the module's trace, which test_sim_end_to_end simulates) run on any."""
    rows = trace_lines(trace)
    assert not any("index" in r for r in rows)
    made = "ivf4096-0123456789ab"
    for row in rows[2:]:
        row["index"] = made
    path = tmp_path / "real.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    data = json.loads((PROFILE_DIR / f"{DEFAULT_PROFILE}.json").read_text())
    out = tmp_path / "run"
    line = assert_usage_error(sim(path, "hedra", out), out)  # the analytic default profile: no identity
    assert f"{path}:3: field index: made against index {made}, but the profile {DEFAULT_PROFILE}" in line
    assert f"index {data['index']['name']} (no identity)" in line
    for identity, ok in (("ivf4096-ba9876543210", False), (made, True)):
        data["index"]["identity"] = identity
        prof = tmp_path / f"measured-{identity}.json"
        prof.write_text(json.dumps(data))
        proc = sim(path, "hedra", out, "--profile", prof)
        if ok:
            assert proc.returncode == 0, proc.stderr
            assert json.loads((out / "summary.json").read_text())["requests"] == len(rows)
        else:
            assert f"{path}:3: field index: made against index {made}" in assert_usage_error(proc, out)
            assert f"({identity})" in proc.stderr


def too_big(tmp_path: Path, rows: list[dict], n: int) -> Path:
    """A trace of `rows` whose first `n` requests need more KV blocks than the engine has."""
    for row in rows[:n]:
        for st in row["stages"]:
            if st["op"] == "generate":
                st["prompt_tokens"] = 10_000_000
    path = tmp_path / "too-big.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_failed_requests_are_counted(tmp_path, trace):
    rows = trace_lines(trace)
    out = tmp_path / "run"
    proc = sim(too_big(tmp_path, rows, 1), "hedra", out)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["failed"] == 1
    assert summary["requests"] == summary["completed"] + summary["failed"] == len(rows)
    frame = pd.read_parquet(out / "requests.parquet")
    assert frame.set_index("id").loc[rows[0]["id"], "status"] == "failed"


def test_all_requests_failed(tmp_path, trace):
    out = tmp_path / "run"
    proc = sim(too_big(tmp_path, trace_lines(trace)[:2], 2), "hedra", out)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["completed"] == 0 and summary["failed"] == 2


def test_user_workflows_file_end_to_end(tmp_path):
    workflows = ROOT / "examples" / "workflows.toml"
    path = tmp_path / "user.jsonl"
    proc = hedra("trace", "gen", "--workflows", workflows, "--workflow", "flare,self-rag", "--rate", 2,
                 "--duration", 5, "--out", path)
    assert proc.returncode == 0, proc.stderr
    assert {r["workflow"] for r in trace_lines(path)} <= {"flare", "self-rag"}
    out = tmp_path / "run"
    proc = sim(path, "hedra", out, "--workflows", workflows)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["requests"] == len(trace_lines(path))
    # the same trace without the workflows file: refused, naming the file, line 1 and the field
    out2 = tmp_path / "run2"
    line = assert_usage_error(sim(path, "hedra", out2), out2)
    assert f"{path}:1: field workflow" in line


def test_bad_workflow_in_workflows_file(tmp_path):
    wf = tmp_path / "wf.toml"
    wf.write_text('[[workflow]]\nname = "x"\nhead = [{ op = "rerank" }]\n')
    out = tmp_path / "t.jsonl"
    line = assert_usage_error(trace_gen(out, "--workflows", wf, workflow="x"), out)
    assert str(wf) in line and "workflow[0]" in line


@pytest.mark.parametrize(("name", "text"), [("wf.json", '[{"name": "x", "head": [{"op": "retrieve"}]}]'),
                                            ("wf.toml", "workflow = 3\n")], ids=["json-list", "toml-scalar"])
def test_workflows_file_of_the_wrong_shape(tmp_path, name, text):
    wf = tmp_path / name
    wf.write_text(text)
    out = tmp_path / "t.jsonl"
    line = assert_usage_error(trace_gen(out, "--workflows", wf, workflow="irg"), out)
    assert str(wf) in line


@pytest.mark.parametrize("command", ["sim", "trace gen"])
def test_out_under_a_regular_file(tmp_path, trace, command):
    blocker = tmp_path / "afile"
    blocker.write_text("")
    out = blocker / "run"
    proc = sim(trace, "hedra", out) if command == "sim" else trace_gen(out)
    assert_usage_error(proc, out)


def test_out_never_replaces_a_folder_hedra_did_not_write(tmp_path, trace):
    mine = tmp_path / "data"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    proc = sim(trace, "hedra", mine)
    assert proc.returncode == 2 and "not a hedra output folder" in proc.stderr
    assert (mine / "notes.txt").read_text() == "keep me"
    assert [p.name for p in mine.iterdir()] == ["notes.txt"]


@pytest.mark.parametrize("extra", [("--rate", "inf"), ("--duration", "nan"), ("--arrival", "gamma", "--cv", "inf"),
                                   ("--zipf", "nan"), ("--overlap", "1.5"), ("--rate", "1e9", "--duration", "1e3")])
def test_impossible_trace_options(tmp_path, extra):
    out = tmp_path / "t.jsonl"
    proc = hedra("trace", "gen", "--workflow", "irg", "--rate", 2, "--duration", 10, "--out", out, *extra)
    assert_usage_error(proc, out)


@pytest.mark.parametrize(("edit", "field"), [
    (lambda r: r.update(arrival_s="0.5"), "arrival_s"),
    (lambda r: r.update(arrival_s=float("inf")), "arrival_s"),
    (lambda r: r["stages"][1].update(prompt_tokens=10**30), "prompt_tokens"),
    (lambda r: r["stages"][0].update(clusters=[True] * r["stages"][0]["nprobe"]), "clusters"),
])
def test_mistyped_trace_values(tmp_path, trace, edit, field):
    rows = trace_lines(trace)
    edit(rows[0])
    bad = tmp_path / "bad.jsonl"
    bad.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    out = tmp_path / "run"
    line = assert_usage_error(sim(bad, "hedra", out), out)
    assert f"{bad}:1" in line and field in line


def test_trace_that_is_not_text(tmp_path):
    bad = tmp_path / "bin.jsonl"
    bad.write_bytes(b"\xff\xfe\x00garbage")
    out = tmp_path / "run"
    assert "UTF-8" in assert_usage_error(sim(bad, "hedra", out), out)


@pytest.mark.parametrize(("field", "value"), [("list_size_sigma", 1e6), ("gpu_memory_gib", "79.6"),
                                              ("max_num_seqs", True)])
def test_mistyped_profile_values(tmp_path, trace, field, value):
    data = json.loads((PROFILE_DIR / f"{DEFAULT_PROFILE}.json").read_text())
    for part in data.values():
        if isinstance(part, dict) and field in part:
            part[field] = value
    path = tmp_path / "p.json"
    path.write_text(json.dumps(data))
    out = tmp_path / "run"
    line = assert_usage_error(sim(trace, "hedra", out, "--profile", path), out)
    assert field in line


@pytest.mark.parametrize("args", [("demo", "--duration", "0"), ("demo", "--duration", "nan"),
                                  ("sim", "--profile", "")])
def test_impossible_run_options(tmp_path, trace, args):
    out = tmp_path / "run"
    extra = ("--trace", trace, "--policy", "hedra") if args[0] == "sim" else ()
    assert_usage_error(hedra(*args, *extra, "--out", out), out)


def test_trace_stats_reports_out_of_order_arrivals(tmp_path, trace):
    lines = trace.read_text().splitlines()
    shuffled = tmp_path / "shuffled.jsonl"
    shuffled.write_text("\n".join([lines[1], lines[0], *lines[2:]]) + "\n")
    proc = hedra("trace", "stats", shuffled)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["out_of_order_arrivals"] == 1
    assert "sort requests by arrival_s" in proc.stderr
    proc = hedra("trace", "stats", trace)
    assert json.loads(proc.stdout)["out_of_order_arrivals"] == 0 and not proc.stderr
