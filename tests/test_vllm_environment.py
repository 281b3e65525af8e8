"""vLLM's environment before it is imported: caches under $HEDRA_HOME, quiet, the user's values kept."""

from __future__ import annotations

import os

from backends.paths import vllm_environment

VARS = ("VLLM_CACHE_ROOT", "VLLM_LOGGING_LEVEL", "VLLM_USE_AOT_COMPILE")


def test_defaults_put_caches_under_hedra_home_and_keep_vllm_quiet(monkeypatch, tmp_path):
    for var in VARS:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HEDRA_HOME", str(tmp_path))
    vllm_environment()
    assert os.environ["VLLM_CACHE_ROOT"] == str(tmp_path / "vllm")
    assert os.environ["VLLM_LOGGING_LEVEL"] == "ERROR"
    assert "VLLM_USE_AOT_COMPILE" not in os.environ  # vLLM's default: its AOT cache-loaded model steps unevenly


def test_a_value_the_user_set_wins(monkeypatch):
    monkeypatch.setenv("VLLM_USE_AOT_COMPILE", "0")
    monkeypatch.setenv("VLLM_LOGGING_LEVEL", "INFO")
    vllm_environment()
    assert os.environ["VLLM_USE_AOT_COMPILE"] == "0"
    assert os.environ["VLLM_LOGGING_LEVEL"] == "INFO"
