"""Trace generation (determinism, arrivals, probe lists) and trace loading errors."""

from __future__ import annotations

import collections
import itertools
import json
import os
import re
import stat
from pathlib import Path

import numpy as np
import pytest

from ragraph.graph import Retrieve
from traces.generate import TraceConfig, generate_trace, write_jsonl
from traces.schema import TraceError, load_trace


def gen(**kw) -> list[dict]:
    base = {"workflows": ("irg",), "rate": 5.0, "duration_s": 4.0, "nprobe": 16, "nlist": 256}
    return generate_trace(TraceConfig(**{**base, **kw}))


def gaps_cv(rows: list[dict]) -> float:
    gaps = np.diff([r["arrival_s"] for r in rows])
    return float(gaps.std() / gaps.mean())


def retrievals(row: dict) -> list[list[int]]:
    return [s["clusters"] for s in row["stages"] if s["op"] == "retrieve"]


# --- generation -------------------------------------------------------------------------------

def test_same_seed_same_bytes(tmp_path):
    cfg = {"workflows": ("irg", "hyde", "multistep"), "rate": 4.0, "duration_s": 5.0, "seed": 7}
    write_jsonl(generate_trace(TraceConfig(**cfg)), tmp_path / "a.jsonl")
    write_jsonl(generate_trace(TraceConfig(**cfg)), tmp_path / "b.jsonl")
    write_jsonl(generate_trace(TraceConfig(**{**cfg, "seed": 8})), tmp_path / "c.jsonl")
    a, b, c = ((tmp_path / f"{n}.jsonl").read_bytes() for n in "abc")
    assert a and a == b
    assert a != c


@pytest.mark.parametrize("arrival", ["poisson", "gamma"])
def test_arrivals_sorted_and_in_range(arrival):
    rows = gen(rate=20.0, duration_s=10.0, arrival=arrival, cv=3.0, seed=2)
    t = [r["arrival_s"] for r in rows]
    assert t
    assert t == sorted(t)
    assert all(0.0 <= x < 10.0 for x in t)
    assert len({r["id"] for r in rows}) == len(rows)


def test_poisson_rate():
    rows = generate_trace(TraceConfig(("one-shot",), rate=40.0, duration_s=100.0, seed=11, nprobe=1, nlist=16))
    assert 0.85 * 4000 < len(rows) < 1.15 * 4000
    assert 0.8 < gaps_cv(rows) < 1.2


def test_gamma_is_burstier_than_poisson():
    common = {"workflows": ("one-shot",), "rate": 40.0, "duration_s": 50.0, "seed": 5, "nprobe": 1, "nlist": 16}
    poisson = generate_trace(TraceConfig(**common))
    bursty = generate_trace(TraceConfig(**common, arrival="gamma", cv=3.0))
    assert gaps_cv(bursty) > 1.5 * gaps_cv(poisson)
    assert gaps_cv(bursty) > 2.0


@pytest.mark.parametrize("workflow", ["one-shot", "hyde", "recomp", "multistep", "irg"])
def test_clusters_are_distinct_and_in_range(workflow):
    nprobe, nlist = 24, 200
    rows = gen(workflows=(workflow,), nprobe=nprobe, nlist=nlist, k=3, seed=4)
    assert rows
    for row in rows:
        for st in row["stages"]:
            if st["op"] == "retrieve":
                assert st["nprobe"] == nprobe and st["k"] == 3
                assert len(st["clusters"]) == nprobe
                assert len(set(st["clusters"])) == nprobe
                assert all(isinstance(c, int) and 0 <= c < nlist for c in st["clusters"])


@pytest.mark.parametrize("overlap", [0.0, 0.25, 0.5, 0.9])
def test_successive_retrievals_share_overlap(overlap):
    nprobe = 40
    rows = gen(overlap=overlap, nprobe=nprobe, nlist=1024, iterations=2, seed=6)
    shared = []
    for row in rows:
        cl = retrievals(row)
        assert len(cl) == 3
        shared += [len(set(a) & set(b)) / nprobe for a, b in itertools.pairwise(cl)]
    assert shared
    assert abs(float(np.mean(shared)) - overlap) < 0.1
    assert all(abs(s - overlap) < 0.2 for s in shared)


def test_independent_requests_share_few_clusters():
    # different requests' first retrievals are not forced to overlap (zipf 0: uniform)
    rows = gen(workflows=("one-shot",), zipf=0.0, nprobe=16, nlist=1024, rate=10.0, seed=9)
    firsts = [set(retrievals(r)[0]) for r in rows]
    shared = [len(a & b) / 16 for a, b in itertools.pairwise(firsts)]
    assert float(np.mean(shared)) < 0.1


def test_zipf_skew_concentrates_probes():
    def top_decile_share(zipf: float) -> float:
        rows = gen(workflows=("one-shot",), zipf=zipf, nprobe=32, nlist=1000, rate=20.0, duration_s=10.0, seed=1)
        counts = collections.Counter(c for r in rows for cl in retrievals(r) for c in cl)
        values = sorted(counts.values(), reverse=True)
        return sum(values[:100]) / sum(values)

    skewed = top_decile_share(1.0)
    assert skewed > 0.3  # clearly more than the 10% a uniform popularity would give
    assert skewed > top_decile_share(0.0) + 0.15


@pytest.mark.parametrize("bad", [
    {"rate": 0.0}, {"duration_s": -1.0}, {"arrival": "uniform"}, {"cv": 0.0}, {"nprobe": 0},
    {"nprobe": 300}, {"k": 0},
])
def test_bad_config_refused(bad):
    with pytest.raises(ValueError):
        gen(**bad)


def test_generated_trace_loads(tmp_path):
    rows = gen(workflows=("one-shot", "hyde", "recomp", "multistep", "irg"), rate=10.0, seed=3)
    path = tmp_path / "mix.jsonl"
    write_jsonl(rows, path)
    requests = load_trace(path, nlist=256)
    assert [r.id for r in requests] == [row["id"] for row in rows]
    for req, row in zip(requests, rows, strict=True):
        assert req.workflow == row["workflow"] and req.arrival_s == row["arrival_s"]
        clusters = [n.clusters for n in req.nodes if isinstance(n, Retrieve)]
        assert clusters == [tuple(c) for c in retrievals(row)]


def test_written_trace_respects_umask(tmp_path):
    old = os.umask(0o022)
    try:
        write_jsonl(gen(), tmp_path / "t.jsonl")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "t.jsonl").stat().st_mode) == 0o644


# --- loading errors ---------------------------------------------------------------------------

def good_rows() -> list[dict]:
    rows = gen(workflows=("irg",), nprobe=4, nlist=64, iterations=1, rate=10.0, duration_s=1.0, seed=0)[:3]
    assert len(rows) == 3
    return rows


def write_lines(path: Path, rows: list[dict | str]) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def retrieve_stage(row: dict) -> dict:
    return next(s for s in row["stages"] if s["op"] == "retrieve")


def gen_stage(row: dict) -> dict:
    return next(s for s in row["stages"] if s["op"] == "generate")


def _invalid_json(rows):
    rows[1] = json.dumps(rows[1])[:-5]


def _missing_arrival(rows):
    del rows[1]["arrival_s"]


def _negative_prompt(rows):
    gen_stage(rows[1])["prompt_tokens"] = -3


def _short_clusters(rows):
    retrieve_stage(rows[1])["clusters"].pop()


def _duplicate_clusters(rows):
    cl = retrieve_stage(rows[1])["clusters"]
    cl[1] = cl[0]


def _unknown_workflow(rows):
    rows[1]["workflow"] = "nosuch"


def _missing_stage(rows):
    rows[1]["stages"].pop()


def _wrong_iterations(rows):
    rows[1]["iterations"] = 2


def _duplicate_id(rows):
    rows[1]["id"] = rows[0]["id"]


def _unknown_field(rows):
    rows[1]["priority"] = 1


def _unknown_op(rows):
    rows[1]["stages"][0]["op"] = "rerank"


def _prefix_too_long(rows):
    st = gen_stage(rows[1])
    st["prefix_tokens"] = st["prompt_tokens"] + 1


# (mutation of line 2, field named in the message, text in the message)
LINE_ERRORS = {
    "invalid-json": (_invalid_json, None, "JSON"),
    "missing-arrival": (_missing_arrival, "arrival_s", "required"),
    "negative-prompt-tokens": (_negative_prompt, "stages.1.prompt_tokens", "greater than 0"),
    "duplicate-clusters": (_duplicate_clusters, "stages.0", "clusters must be distinct"),
    "clusters-vs-nprobe": (_short_clusters, "stages.0", "clusters has 3 entries, nprobe is 4"),
    "unknown-workflow": (_unknown_workflow, "workflow", "nosuch"),
    "wrong-stage-count": (_missing_stage, "stages", "stages"),
    "wrong-iterations": (_wrong_iterations, "stages", "stages"),
    "duplicate-id": (_duplicate_id, "id", "duplicate"),
    "unknown-field": (_unknown_field, "priority", ""),
    "unknown-op": (_unknown_op, "stages.0", ""),
    "prefix-too-long": (_prefix_too_long, "stages.1", "prefix_tokens"),
}


@pytest.mark.parametrize("case", list(LINE_ERRORS))
def test_malformed_line(tmp_path, case):
    mutate, field, text = LINE_ERRORS[case]
    rows: list = good_rows()
    mutate(rows)
    path = write_lines(tmp_path / f"{case}.jsonl", rows)
    with pytest.raises(TraceError) as info:
        load_trace(path)
    msg = str(info.value)
    assert f"{path}:2: " in msg
    assert "\n" not in msg
    if field is not None:
        assert f"{path}:2: field {field}" in msg
    assert text in msg


@pytest.mark.parametrize("mutate", [_short_clusters, _duplicate_clusters])
def test_cluster_errors_name_the_clusters_field(tmp_path, mutate):
    rows = good_rows()
    mutate(rows)
    path = write_lines(tmp_path / "t.jsonl", rows)
    with pytest.raises(TraceError, match=r"field stages\.0\.clusters: "):
        load_trace(path)


def test_cluster_outside_index(tmp_path):
    rows = good_rows()
    st = retrieve_stage(rows[1])
    st["clusters"][next(i for i, c in enumerate(st["clusters"]) if c not in st["truth"]["hits"])] = 64  # not a hit
    path = write_lines(tmp_path / "t.jsonl", rows)
    assert len(load_trace(path)) == 3  # no index given: any id is fine
    assert len(load_trace(path, nlist=65)) == 3
    with pytest.raises(TraceError) as info:
        load_trace(path, nlist=64)
    msg = str(info.value)
    assert f"{path}:2: field stages.0.clusters" in msg
    assert "64" in msg


def test_negative_cluster_id(tmp_path):
    rows = good_rows()
    retrieve_stage(rows[1])["clusters"][0] = -1
    path = write_lines(tmp_path / "t.jsonl", rows)
    with pytest.raises(TraceError, match=re.escape(f"{path}:2: field stages.0")):
        load_trace(path)


def test_index_identity_is_checked_only_where_a_line_carries_one(tmp_path):
    rows = good_rows()
    for row in rows[1:]:
        row["index"] = "ivf256-0123456789ab"
    path = write_lines(tmp_path / "t.jsonl", rows)  # line 1 synthetic, lines 2-3 made against ivf256-...
    assert len(load_trace(path)) == 3  # no index to check against (e.g. trace stats)
    assert len(load_trace(path, index="ivf256-0123456789ab")) == 3
    for expected in (None, "ivf256-ba9876543210"):
        with pytest.raises(TraceError) as info:
            load_trace(path, index=expected)
        msg = str(info.value)
        assert msg.startswith(f"{path}:2: field index: made against index ivf256-0123456789ab, but ")
        assert "\n" not in msg
    with pytest.raises(TraceError, match=r":2: field index: .*, but the profile p describes index IVF4096,Flat"):
        load_trace(path, index=None, target="the profile p describes index IVF4096,Flat (no identity)")
    synthetic = write_lines(tmp_path / "s.jsonl", good_rows())
    assert len(load_trace(synthetic, index=None)) == len(load_trace(synthetic, index="ivf256-ba9876543210")) == 3


def test_line_numbers_count_blank_lines(tmp_path):
    rows: list = good_rows()
    _missing_arrival(rows)
    path = write_lines(tmp_path / "t.jsonl", [rows[0], "", "   ", rows[1], rows[2]])
    with pytest.raises(TraceError, match=re.escape(f"{path}:4: field arrival_s")):
        load_trace(path)
    ok = write_lines(tmp_path / "ok.jsonl", ["", *good_rows(), ""])
    assert len(load_trace(ok)) == 3


@pytest.mark.parametrize("content", ["", "\n", "  \n\n"])
def test_empty_trace(tmp_path, content):
    path = tmp_path / "empty.jsonl"
    path.write_text(content)
    with pytest.raises(TraceError) as info:
        load_trace(path)
    assert str(path) in str(info.value)
    assert "no requests" in str(info.value)


def test_missing_trace_file(tmp_path):
    path = tmp_path / "absent.jsonl"
    with pytest.raises(TraceError) as info:
        load_trace(path)
    assert str(path) in str(info.value)
