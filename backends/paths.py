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
    (`hedra run|calibrate|validate -v` sets VLLM_LOGGING_LEVEL=INFO)."""
    os.environ.setdefault("VLLM_CACHE_ROOT", str(hedra_home() / "vllm"))
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")
