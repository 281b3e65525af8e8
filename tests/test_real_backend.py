"""The real body end to end: vLLM (CPU build) + FAISS + the embedder, driven by the same policies.

A short trace (20 requests of each of the five workflows, real questions, real probe lists
from the test corpus) replays under langchain, flashrag and hedra on one warm backend;
every request must end completed, with exactly the work its trace pins. Then faults: an
engine error fails only the requests it touched and the run goes on; a stop (what Ctrl-C
does) ends every request, arrived or not; `hedra run` interrupted by SIGINT writes its
outputs and exits 130.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pandas as pd
import pytest
from test_cli import assert_usage_error, hedra  # the CLI as a subprocess, and the bad-input contract

from ragraph.policies import make_policy, parse_policy
from ragraph.records import RunResult
from ragraph.workflows import RAG_WORKFLOWS, WorkflowRegistry
from traces.generate import TraceConfig, generate_trace, write_jsonl
from traces.schema import TraceRequest, to_request

WORKFLOWS = tuple(RAG_WORKFLOWS)
PER_WORKFLOW = 20
HERE = Path(__file__).resolve().parent.parent


def _require_real() -> None:
    for mod in ("vllm", "faiss", "sentence_transformers", "torch"):
        pytest.importorskip(mod, reason=f"{mod} is not installed (pip install -e '.[real]'): real backend skipped")


@pytest.fixture(scope="module")
def backend(tiny_model_dir, wiki_corpus, calibrated_profile):
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from backends.real import RealBackend, RealOptions

    body = RealBackend.open(RealOptions(model=tiny_model_dir, corpus=wiki_corpus.path,
                                        engine=calibrated_profile.engine))
    yield body
    body.close()


@pytest.fixture(scope="module")
def costs(calibrated_profile):
    from hwmodel.latency import LatencyModel

    return LatencyModel(calibrated_profile)


def real_trace(corpus, embedder, *, per_workflow: int, rate: float, seed: int = 7) -> list[dict]:
    """Rows of a trace with `per_workflow` requests of each workflow, real text and probe lists."""
    from backends.real_trace import realize_trace

    rows: list[dict] = []
    for i, wf in enumerate(WORKFLOWS):
        cfg = TraceConfig((wf,), rate, per_workflow / rate * 4, seed=seed + i, nprobe=4, nlist=corpus.nlist)
        part = generate_trace(cfg)[:per_workflow]
        assert len(part) == per_workflow
        for row in part:
            row["id"] = f"{wf}-{row['id']}"
        rows += part
    rows.sort(key=lambda r: r["arrival_s"])
    return realize_trace(rows, corpus, embedder, seed=seed)


def requests_of(rows: list[dict]):
    registry = WorkflowRegistry()
    return [to_request(TraceRequest.model_validate(r), registry) for r in rows]


@pytest.fixture(scope="module")
def trace_rows(wiki_corpus, embedder) -> list[dict]:
    return real_trace(wiki_corpus, embedder, per_workflow=PER_WORKFLOW, rate=4.0)


@pytest.mark.parametrize("policy", ["langchain", "flashrag", "hedra"])
def test_replay_accounts_for_every_request(backend, costs, trace_rows, policy):
    from runs.run import run_real

    requests = requests_of(trace_rows)
    run = run_real(backend, requests, parse_policy(policy), costs)
    assert isinstance(run.result, RunResult)
    records = {r.id: r for r in run.result.records}
    assert len(run.result.records) == len(requests) == len(records)
    failed = {r.id: r.reason for r in run.result.records if r.status != "completed"}
    assert not failed, failed
    assert run.result.stopped == ""
    for req in requests:  # the real body did exactly the work the trace pins
        rec = records[req.id]
        assert rec.output_tokens == sum(n.output_tokens for n in req.nodes if n.op == "generate")
        assert rec.clusters_searched == sum(n.nprobe for n in req.nodes if n.op == "retrieve")
        assert rec.finish_s >= req.arrival_s
    s = run.summary
    assert s["body"] == "real" and s["completed"] == len(requests)
    assert set(s["per_workflow"]) == set(WORKFLOWS)
    assert 0 < s["lane_utilization"]["gpu_gen"] <= 1 and 0 < s["lane_utilization"]["cpu_retrieval"] <= 1
    assert s["kv_peak_blocks"] > 0


def test_same_summary_keys_and_timeline_args_as_the_simulator(backend, costs, calibrated_profile, trace_rows):
    from runs.run import run_real, simulate

    requests = requests_of(trace_rows[:10])
    # a speculative retrieval embeds a prefix of the query besides the query
    policy = parse_policy("hedra:no-spec-retr")
    real = run_real(backend, requests, policy, costs)
    sim = simulate(requests, policy, calibrated_profile)
    assert set(sim.summary) - {"profile", "profile_kind", "seed"} <= set(real.summary)
    count = costs.text_tokens  # the profile's embedder's tokens: the corpus's
    text = sum(count(n.query or r.question) for r in requests for n in r.nodes if n.op == "retrieve")
    assert text > 0
    for run in (real, sim):  # each query's text is counted once, on its first sub-stage, in the same tokens
        assert all(r.status == "completed" for r in run.result.records)
        assert sum(e[4]["embed_tokens"] for e in run.result.timeline if e[1] == "SearchBatch") == text
    keys = [{(lane, name, tuple(args)) for lane, name, _s, _d, args in run.result.timeline} for run in (real, sim)]
    assert keys[0] == keys[1]


def test_engine_error_fails_only_the_requests_it_touched(backend, costs, trace_rows, monkeypatch):
    requests = requests_of(trace_rows[:30])
    engine = backend.engine
    real_step = engine.step
    calls = {"n": 0}

    def flaky_step():
        calls["n"] += 1
        if calls["n"] == 20:
            raise RuntimeError("injected engine fault")
        return real_step()

    monkeypatch.setattr(engine, "step", flaky_step)
    result = backend.replay(requests, make_policy("hedra", costs))
    assert len(result.records) == len(requests)
    failed = [r for r in result.records if r.status != "completed"]
    assert failed and all(r.reason == "gpu_gen error: RuntimeError: injected engine fault" for r in failed)
    assert len(failed) < len(requests)  # the lane carried on after the fault
    monkeypatch.undo()
    again = backend.replay(requests[:5], make_policy("flashrag", costs))  # the engine was left clean
    assert all(r.status == "completed" for r in again.records)


def test_stop_ends_every_request_arrived_or_not(backend, costs, wiki_corpus, embedder):
    rows = real_trace(wiki_corpus, embedder, per_workflow=6, rate=1.0, seed=11)  # ~30 s of arrivals
    requests = requests_of(rows)
    hook = lambda ex: threading.Timer(2.0, ex.stop).start()  # noqa: E731
    t0 = time.monotonic()
    result = backend.replay(requests, make_policy("hedra", costs), executor_hook=hook)
    assert time.monotonic() - t0 < 20
    assert result.stopped == "interrupted"
    assert sorted(r.id for r in result.records) == sorted(r.id for r in requests)
    not_done = [r for r in result.records if r.status != "completed"]
    assert not_done and all(r.reason.startswith("interrupted") for r in not_done)
    assert not backend.engine.has_unfinished()


def test_cli_run_and_ctrl_c(tmp_path, tiny_model_dir, wiki_corpus, embedder, calibrated_profile_path):
    rows = real_trace(wiki_corpus, embedder, per_workflow=4, rate=0.5, seed=3)  # ~40 s of arrivals
    trace = tmp_path / "trace.jsonl"
    write_jsonl(rows, trace)
    out = tmp_path / "run"
    env = {**os.environ, "VLLM_ENABLE_V1_MULTIPROCESSING": "0", "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "experiments.cli", "run", "--trace", str(trace), "--policy", "hedra",
           "--out", str(out), "--model", str(tiny_model_dir), "--corpus", str(wiki_corpus.path),
           "--profile", str(calibrated_profile_path)]
    proc = subprocess.Popen(cmd, cwd=HERE, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    replaying = threading.Event()
    err_lines: list[str] = []

    def read_stderr() -> None:
        for line in proc.stderr:
            err_lines.append(line)
            if line.startswith("replaying"):
                replaying.set()

    reader = threading.Thread(target=read_stderr, daemon=True)
    reader.start()
    assert replaying.wait(300), "".join(err_lines)[-2000:]
    time.sleep(3)
    proc.send_signal(signal.SIGINT)
    proc.wait(timeout=120)
    reader.join(10)
    err = "".join(err_lines)
    assert proc.returncode == 130, err[-2000:]
    assert "hedra: interrupted:" in err and f"outputs written to {out}" in err
    assert " INFO " not in err, err[-2000:]  # vLLM's INFO lines only with -v
    summary = json.loads((out / "summary.json").read_text())
    frame = pd.read_parquet(out / "requests.parquet")
    assert summary["requests"] == len(rows) == len(frame)
    assert summary["stopped"] == "interrupted"
    assert set(frame["status"]) <= {"completed", "failed"}
    assert (out / "timeline.json").is_file()



def test_sub_stages_on_the_retrieval_lane_equal_one_full_search(backend, trace_rows):
    """The service's split search (first sub-stage embeds, later ones continue the heap)
    finds what one index.search with the same nprobe finds for the embedded query, and the
    retrieval worker process (what the CPU body's lane runs) finds exactly what the
    in-process service finds."""

    from backends.retrieval import RetrievalService
    from ragraph.work import ScanTask, SearchBatch

    requests = requests_of(trace_rows[:12])
    service = RetrievalService(backend.retriever, backend.embedder.encode, requests)
    remote = backend.retrieval_body(requests)
    assert list(remote.list_sizes) == backend.retriever.list_sizes()
    keys = [(r.id, i) for r in requests for i, n in enumerate(r.nodes) if n.op == "retrieve"][:12]
    specs = {k: next(r for r in requests if r.id == k[0]).nodes[k[1]] for k in keys}
    for part in range(2):  # two sub-stages per query, batched across queries
        tasks = []
        for key in keys:
            clusters = specs[key].clusters
            half = len(clusters) // 2
            chunk = clusters[:half] if part == 0 else clusters[half:]
            tasks.append(ScanTask(key, chunk, 3, part == 0, part == 1))
        result = service.search(SearchBatch(tuple(tasks)))
        assert remote.search(SearchBatch(tuple(tasks))) == result
    compared = 0
    for key in keys:
        spec = specs[key]
        req = next(r for r in requests if r.id == key[0])
        vec = backend.embedder.encode([spec.query or req.question])
        if set(backend.retriever.assign(vec, spec.nprobe)[1][0]) != set(spec.clusters):
            continue  # a near-tie centroid at the nprobe boundary flipped with float noise: not comparable
        _, ids = backend.retriever.search_full(vec, 3, spec.nprobe)
        assert result.topk[key] == tuple(int(i) for i in ids[0] if i >= 0)
        compared += 1
    assert compared >= len(keys) // 2


def test_speculative_search_given_a_generated_text_searches_that_text_whole(backend, trace_rows):
    """A speculative search (prefix < 1) given the real partial generation (what `AnswerFlow`
    supplies on a model that answers) embeds that text whole, not a prefix of it, and searches
    its own probe list: the result of one full search of that text."""
    from backends.retrieval import RetrievalService
    from ragraph.work import ScanTask, SearchBatch

    requests = requests_of(trace_rows[:4])
    service = RetrievalService(backend.retriever, backend.embedder.encode, requests)
    req = requests[0]
    key = (req.id, next(i for i, n in enumerate(req.nodes) if n.op == "retrieve"))
    spec = req.nodes[key[1]]
    text = f"{req.question} The answer is written in the passage about its history"
    result = service.search(SearchBatch((ScanTask(key, spec.clusters, 3, True, True, prefix=0.25),)), {key: text})
    vec = backend.embedder.encode([text])
    _, ids = backend.retriever.search_full(vec, 3, len(spec.clusters))
    assert result.topk[key] == tuple(int(i) for i in ids[0] if i >= 0)


def test_cli_refuses_probe_lists_beyond_the_index_before_loading(tmp_path, wiki_corpus):
    trace = tmp_path / "synthetic.jsonl"
    rows = generate_trace(TraceConfig(("irg",), 4.0, 3.0, seed=1))  # lists of a 4096-list index
    write_jsonl(rows, trace)
    t0 = time.monotonic()
    proc = hedra("run", "--trace", trace, "--policy", "hedra", "--out", tmp_path / "out", "--corpus", wiki_corpus.path)
    assert time.monotonic() - t0 < 30
    line = assert_usage_error(proc, tmp_path / "out")
    assert f"{trace}:" in line and "clusters" in line and f"{wiki_corpus.nlist} lists" in line


def test_cli_gpu_backend_without_cuda_is_one_line(tmp_path, wiki_corpus, trace_rows):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA device is visible")
    trace = tmp_path / "t.jsonl"
    write_jsonl(trace_rows[:3], trace)
    proc = hedra("run", "--trace", trace, "--policy", "hedra", "--out", tmp_path / "out",
                 "--corpus", wiki_corpus.path, "--backend", "gpu")
    line = assert_usage_error(proc, tmp_path / "out")
    assert "--backend gpu" in line and "CUDA" in line


def test_one_engine_configuration_reaches_both_bodies(backend, calibrated_profile):
    """The profile's engine configuration is what vLLM was built with and what the
    simulator's engine model reads: block size, batch limits, model length, prefix caching
    and the KV-cache capacity."""
    from hwmodel.latency import LatencyModel
    from sim.gen_engine import GenEngineModel

    cfg = calibrated_profile.engine
    vllm_cfg = backend.engine.vllm_config  # what the engine worker's vLLM reports it runs with
    real = tuple(vllm_cfg[k] for k in ("block_size", "max_num_batched_tokens", "max_num_seqs", "max_model_len",
                                       "enable_prefix_caching"))
    sim = GenEngineModel(LatencyModel(calibrated_profile))
    modelled = (sim.block, sim.token_budget, sim.max_seqs, sim.max_model_len, sim.caching)
    assert real == modelled == (cfg.block_size, cfg.max_num_batched_tokens, cfg.max_num_seqs, cfg.max_model_len,
                                cfg.enable_prefix_caching)
    assert abs(backend.engine.total_blocks - sim.total_blocks) <= 1  # vLLM may round its pool by a block


def test_real_replay_of_map_reduce(backend, costs, wiki_corpus, embedder):
    """RAGServe's fan-out on the real body: a METIS-like trace whose synthesis is configured at
    run time as map_reduce over 4 chunks; every map runs in vLLM, the reduce after all of them."""
    from backends.real_trace import realize_trace
    from runs.run import run_real

    cfg = TraceConfig(("metis",), 4.0, 3.0, seed=5, nprobe=4, nlist=wiki_corpus.nlist)
    rows = realize_trace(generate_trace(cfg)[:6], wiki_corpus, embedder, seed=5)
    requests = requests_of(rows)
    run = run_real(backend, requests, parse_policy("fixed:synthesis=map_reduce,chunks=4,length=10"), costs)
    records = run.result.records
    assert len(records) == len(requests) and all(r.status == "completed" for r in records), \
        [r.reason for r in records]
    assert all(r.synthesis == "map_reduce" and r.num_chunks == 4 and r.generate_nodes == 1 + 4 + 1 for r in records)
    assert {r.config_f1 for r in records} and run.summary["completed"] == len(requests)


def test_a_replay_finds_none_of_the_previous_replays_prefix_blocks(backend, costs, trace_rows):
    """Replays number their requests alike and synthetic prompts are seeded by request and node:
    the second replay of the same requests must pay the same prefill as the first, as the
    simulator does (before the body emptied vLLM's prefix cache per replay, it found the first
    replay's blocks)."""
    from runs.run import run_real

    requests = requests_of(trace_rows[:8])
    cached = [run_real(backend, requests, parse_policy("flashrag"), costs).summary["kv_cache"]["prompt_tokens_cached"]
              for _ in range(2)]
    assert cached[0] == cached[1], cached


def test_the_stale_profile_probe_times_only_its_own_slice_of_the_grid(backend):
    """The probe is a few seconds: its engine items come from its four cells alone (no
    kernel-size passes, which would be ~1,500 prefills and evict the compiled decode sizes), and
    the thread that ran it gets its cores back (it ran each lane's part pinned to that lane's)."""
    from calibration.staleness import PROBE_ENGINE, PROBE_SEARCH, probe

    cores = os.sched_getaffinity(0)
    rows = probe(backend)
    assert os.sched_getaffinity(0) == cores
    engine = [r for r in rows if r["kind"] == "engine_step"]
    assert {r["cell"] for r in engine} == {f"B{b}-P{p}" for b, p in PROBE_ENGINE}
    assert len(engine) < 100
    assert len([r for r in rows if r["kind"] == "search_call"]) >= len(PROBE_SEARCH)


def test_a_real_capacity_search_says_how_fast_its_runs_ran(backend, costs):
    """Each real run of a capacity search prices its own engine steps and search calls with the
    profile (`Trial.speed`), and the search's `run_speed` is their median over its full-length
    runs: what the simulator's capacity at the machine's speed is computed at."""
    from calibration.capacity import real_capacity
    from calibration.workload import Template, corpus_requests

    template = Template(lambda n: corpus_requests(backend, "one-shot", n, seed=3))
    found = real_capacity(backend, template, parse_policy("flashrag"), costs, slo_p95_s=1e6, duration_s=4.0,
                          guess=0.5, max_rps=1.0)  # every rate passes: 0.5 and 1.0 req/s, screened then in full
    assert found.note.startswith("every rate passed") and found.rps == 1.0
    full = [t for t in found.trials if t.duration_s == found.duration_s]
    assert len(full) == 2 and all(t.speed is not None for t in full)
    for kind in ("engine_step", "search_call"):
        speeds = [t.speed[kind] for t in full]
        assert all(0.2 < s < 5 for s in speeds), speeds  # the profile was measured on this body
        assert found.run_speed()[kind] == pytest.approx(sorted(speeds)[0] / 2 + sorted(speeds)[1] / 2)
    assert found.to_json()["run_speed"] == found.run_speed()
